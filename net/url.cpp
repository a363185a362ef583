#include "net/url.h"

#include <algorithm>
#include <cctype>

namespace agentserve::net {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool has_control_or_space(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](unsigned char c) { return c <= 0x20 || c == 0x7f; });
}

bool is_host_char(unsigned char c) {
  return std::isalnum(c) || c == '-' || c == '.' || c == '_';
}

}  // namespace

Result<Url> Url::parse(std::string_view text) {
  if (has_control_or_space(text)) return Status::invalid_argument("URL has a control character or a space");
  const size_t colon = text.find("://");
  if (colon == std::string_view::npos)
    return Status::invalid_argument("URL has no scheme: " + std::string(text));
  Url url;
  url.scheme = lower(text.substr(0, colon));
  if (url.scheme != "http" && url.scheme != "https")
    return Status::invalid_argument("URL scheme must be http or https, not '" + url.scheme + "'");
  std::string_view rest = text.substr(colon + 3);
  if (const size_t hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  const size_t path_start = rest.find_first_of("/?");
  const std::string_view authority = rest.substr(0, path_start);
  url.target = path_start == std::string_view::npos ? "/" : std::string(rest.substr(path_start));
  if (url.target.front() == '?') url.target.insert(url.target.begin(), '/');
  // User info (user:pass@host) is how "http://allowed.example@evil.example/" tricks reach another host.
  if (authority.find('@') != std::string_view::npos)
    return Status::invalid_argument("URL must not carry user info");

  std::string_view host;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return Status::invalid_argument("URL has an unclosed IPv6 literal");
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Status::invalid_argument("URL has junk after the IPv6 literal");
      port_text = after.substr(1);
    }
    const bool hex_or_colon = std::all_of(
        host.begin(), host.end(), [](unsigned char c) { return std::isxdigit(c) || c == ':' || c == '.'; });
    if (host.empty() || !hex_or_colon) return Status::invalid_argument("URL has a bad IPv6 literal");
  } else {
    const size_t port_colon = authority.find(':');
    host = authority.substr(0, port_colon);
    if (port_colon != std::string_view::npos) port_text = authority.substr(port_colon + 1);
    if (!std::all_of(host.begin(), host.end(), is_host_char))
      return Status::invalid_argument("URL host has a character outside [A-Za-z0-9._-]");
  }
  if (host.empty()) return Status::invalid_argument("URL has no host");
  url.host = lower(host);

  if (port_text.empty()) {
    if (authority.find(':') != std::string_view::npos && authority.back() == ':')
      return Status::invalid_argument("URL has an empty port");
    url.port = url.scheme == "https" ? 443 : 80;
  } else {
    if (port_text.size() > 5 ||
        !std::all_of(port_text.begin(), port_text.end(), [](unsigned char c) { return std::isdigit(c); }))
      return Status::invalid_argument("URL port is not a number: " + std::string(port_text));
    const int port = std::stoi(std::string(port_text));
    if (port < 1 || port > 65535)
      return Status::invalid_argument("URL port out of range: " + std::string(port_text));
    url.port = static_cast<uint16_t>(port);
  }
  return url;
}

std::string Url::host_header() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  const uint16_t default_port = is_tls() ? 443 : 80;
  return port == default_port ? h : h + ":" + std::to_string(port);
}

}  // namespace agentserve::net
