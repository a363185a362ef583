// Url: the parsed form of an absolute http:// or https:// URL, as the HTTP client and the allowlists of the
// HTTP tools need it (scheme, host, port, target). Parsing is strict on purpose: anything that could make
// two components disagree about where a request goes (user info, control characters, spaces, a bad port)
// is refused rather than normalised. It never resolves names and never percent-decodes the target.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace agentserve::net {

// An absolute http:// or https:// URL. Port defaults to 80 / 443; target defaults to "/".
struct Url {
  std::string scheme;  // "http" or "https" (lower case)
  std::string host;    // lower case; an IPv6 literal without its brackets
  uint16_t port = 0;
  std::string target;  // path and query; the fragment is dropped

  // InvalidArgument for another scheme, a missing host, a bad port, user info, or control characters.
  static Result<Url> parse(std::string_view text);

  bool is_tls() const { return scheme == "https"; }
  // "host" or "host:port" when the port is not the scheme's default; IPv6 literals get their brackets back.
  std::string host_header() const;
};

}  // namespace agentserve::net
