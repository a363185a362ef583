// HTTP tools: server-side tools declared in the config, each one URL the arguments are sent to, as a JSON
// body (POST) or a query string (GET), the response body going back to the model as the tool's output. The
// config names an allowlist of exact hosts; a tool whose URL is elsewhere is refused when the config is
// read, and checked again before each request.
//
// They never follow redirects (net::HttpClient returns a 3xx as it is, and anything but 2xx is an error
// result), never wait past the tool's timeout, and never read more than max_response_bytes. The calling
// tenant, agent, session and call id go along as X-Agentserve-* headers so the endpoint can authorise.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "net/http_client.h"
#include "tools/tool_registry.h"

namespace agentserve::tools {

struct HttpToolConfig {
  std::string name;
  std::string description;
  std::string url;              // http:// or https://, on an allowed host
  std::string method = "POST";  // "GET" or "POST"
  nlohmann::json parameters = {{"type", "object"}, {"properties", nlohmann::json::object()}};
  std::chrono::milliseconds timeout{5000};
  size_t max_response_bytes = size_t{1} << 20;
  net::HttpHeaders headers;  // sent with every request (e.g. an API key); not Host/Content-Length/Connection
};

struct HttpToolsConfig {
  std::vector<std::string> allowed_hosts;  // exact host names or IP literals, compared case-insensitively
  std::vector<HttpToolConfig> tools;
};

// {"allowed_hosts": [...], "tools": [{"name", "description", "url", "method", "parameters", "timeout_ms",
// "max_response_bytes", "headers": {"Name": "value"}}]}. InvalidArgument naming the tool and field for an
// unknown field, a bad URL, a host not on the allowlist, a method other than GET/POST, an unsupported
// schema, a limit out of range (timeout_ms 1..600000, max_response_bytes 1..64 MiB) or a forbidden header.
Result<HttpToolsConfig> http_tools_from_json(const nlohmann::json& config);

// The request one call makes: method, URL (+ query for GET), headers, JSON body (POST), limits.
Result<net::HttpRequest> make_http_tool_request(const HttpToolConfig& tool, const nlohmann::json& arguments,
                                                const ToolContext& context);

// Registers every tool of `config` (checking the allowlist again). `client` must outlive the registry and
// its copies; the tools call its blocking request() on registry workers, never on its io threads.
Status register_http_tools(ToolRegistry& registry, const HttpToolsConfig& config, net::HttpClient& client);

}  // namespace agentserve::tools
