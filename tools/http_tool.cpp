#include "tools/http_tool.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "net/url.h"
#include "tools/json_schema_validator.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxTimeoutMs = 600000;
constexpr int64_t kMaxResponseBytes = int64_t{64} << 20;
// The registry's deadline sits a little past the request's, so a slow endpoint ends as the HTTP client's
// own, more precise timeout error rather than the registry's generic one.
constexpr std::chrono::milliseconds kRegistryGrace{500};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool has_control_chars(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

Status check_host_allowed(const std::vector<std::string>& allowed_hosts, const std::string& url,
                          const std::string& where) {
  auto parsed = net::Url::parse(url);
  if (!parsed.ok()) return parsed.status().with_context(where + "url");
  const std::string host = lower(parsed->host);
  for (const auto& allowed : allowed_hosts) {
    if (lower(allowed) == host) return Status::ok_status();
  }
  return Status::invalid_argument(where + "host " + parsed->host + " is not in allowed_hosts");
}

Result<HttpToolConfig> tool_from_json(const json& j, size_t index) {
  std::string where = "http_tools.tools[" + std::to_string(index) + "]: ";
  if (!j.is_object()) return Status::invalid_argument(where + "expected an object");
  static const std::set<std::string> kKnown = {
      "name", "description", "url", "method", "parameters", "timeout_ms", "max_response_bytes", "headers"};
  for (const auto& [key, value] : j.items()) {
    if (!kKnown.count(key)) return Status::invalid_argument(where + "unknown field \"" + key + "\"");
  }
  HttpToolConfig tool;
  auto string_field = [&](const char* key, std::string& out, bool required) -> Status {
    auto it = j.find(key);
    if (it == j.end())
      return required ? Status::invalid_argument(where + "\"" + key + "\" is required") : Status::ok_status();
    if (!it->is_string()) return Status::invalid_argument(where + "\"" + key + "\" must be a string");
    out = it->get<std::string>();
    return Status::ok_status();
  };
  AS_RETURN_IF_ERROR(string_field("name", tool.name, true));
  if (!is_valid_tool_name(tool.name))
    return Status::invalid_argument(where + "name must match ^[A-Za-z0-9_-]{1,64}$");
  where = "http tool " + tool.name + ": ";
  AS_RETURN_IF_ERROR(string_field("description", tool.description, false));
  AS_RETURN_IF_ERROR(string_field("url", tool.url, true));
  AS_RETURN_IF_ERROR(string_field("method", tool.method, false));
  for (char& c : tool.method) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (tool.method != "GET" && tool.method != "POST")
    return Status::invalid_argument(where + "method must be GET or POST");
  if (auto it = j.find("parameters"); it != j.end()) {
    if (!it->is_object()) return Status::invalid_argument(where + "parameters must be a JSON Schema object");
    tool.parameters = *it;
  }
  AS_RETURN_IF_ERROR(check_schema(tool.parameters).with_context(where + "parameters"));
  if (auto it = j.find("timeout_ms"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > kMaxTimeoutMs) {
      return Status::invalid_argument(where + "timeout_ms must be an integer in 1.." +
                                      std::to_string(kMaxTimeoutMs));
    }
    tool.timeout = std::chrono::milliseconds(it->get<int64_t>());
  }
  if (auto it = j.find("max_response_bytes"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > kMaxResponseBytes) {
      return Status::invalid_argument(where + "max_response_bytes must be an integer in 1.." +
                                      std::to_string(kMaxResponseBytes));
    }
    tool.max_response_bytes = static_cast<size_t>(it->get<int64_t>());
  }
  if (auto it = j.find("headers"); it != j.end()) {
    if (!it->is_object()) return Status::invalid_argument(where + "headers must be an object of strings");
    for (const auto& [name, value] : it->items()) {
      const std::string lname = lower(name);
      if (!value.is_string()) return Status::invalid_argument(where + "header " + name + " must be a string");
      if (lname == "host" || lname == "content-length" || lname == "connection" ||
          lname == "transfer-encoding") {
        return Status::invalid_argument(where + "header " + name + " is set by the client");
      }
      if (name.empty() || has_control_chars(name) || has_control_chars(value.get<std::string>())) {
        return Status::invalid_argument(where + "header " + name + " has control characters");
      }
      tool.headers.emplace_back(name, value.get<std::string>());
    }
  }
  return tool;
}

std::string percent_encode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

}  // namespace

Result<HttpToolsConfig> http_tools_from_json(const json& config) {
  if (!config.is_object()) return Status::invalid_argument("http_tools: expected an object");
  HttpToolsConfig out;
  for (const auto& [key, value] : config.items()) {
    if (key != "allowed_hosts" && key != "tools")
      return Status::invalid_argument("http_tools: unknown field \"" + key + "\"");
  }
  if (auto it = config.find("allowed_hosts"); it != config.end()) {
    if (!it->is_array())
      return Status::invalid_argument("http_tools.allowed_hosts: expected an array of host names");
    for (const auto& host : *it) {
      if (!host.is_string() || host.get_ref<const std::string&>().empty()) {
        return Status::invalid_argument("http_tools.allowed_hosts: expected an array of host names");
      }
      out.allowed_hosts.push_back(host.get<std::string>());
    }
  }
  if (auto it = config.find("tools"); it != config.end()) {
    if (!it->is_array()) return Status::invalid_argument("http_tools.tools: expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      AS_ASSIGN_OR_RETURN(HttpToolConfig tool, tool_from_json((*it)[i], i));
      AS_RETURN_IF_ERROR(check_host_allowed(out.allowed_hosts, tool.url, "http tool " + tool.name + ": "));
      out.tools.push_back(std::move(tool));
    }
  }
  return out;
}

Result<net::HttpRequest> make_http_tool_request(const HttpToolConfig& tool, const json& arguments,
                                                const ToolContext& context) {
  net::HttpRequest request;
  request.method = tool.method;
  request.url = tool.url;
  request.timeout = tool.timeout;
  request.max_response_bytes = tool.max_response_bytes;
  request.headers = tool.headers;
  const std::pair<const char*, const std::string*> forwarded[] = {
      {"X-Agentserve-Tenant", &context.tenant},
      {"X-Agentserve-Agent", &context.agent_id},
      {"X-Agentserve-Session", &context.session_id},
      {"X-Agentserve-Call-Id", &context.call_id}};
  for (const auto& [name, value] : forwarded) {
    // A control character would let a caller inject header lines; such a value is dropped, not sent.
    if (!value->empty() && !has_control_chars(*value)) request.headers.emplace_back(name, *value);
  }
  if (tool.method == "GET") {
    if (!arguments.is_object()) return Status::invalid_argument("GET tool arguments must be an object");
    std::string query;
    for (const auto& [key, value] : arguments.items()) {
      if (!query.empty()) query += '&';
      query += percent_encode(key) + "=" +
               percent_encode(value.is_string() ? value.get<std::string>() : value.dump());
    }
    if (!query.empty()) request.url += (request.url.find('?') == std::string::npos ? "?" : "&") + query;
  } else {
    request.headers.emplace_back("Content-Type", "application/json");
    request.body = arguments.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  return request;
}

Status register_http_tools(ToolRegistry& registry, const HttpToolsConfig& config, net::HttpClient& client) {
  for (const auto& tool : config.tools) {
    AS_RETURN_IF_ERROR(check_host_allowed(config.allowed_hosts, tool.url, "http tool " + tool.name + ": "));
    ToolSpec spec;
    spec.name = tool.name;
    spec.description = tool.description;
    spec.parameters = tool.parameters;
    spec.execution = ToolExecution::kServer;
    spec.timeout = tool.timeout + kRegistryGrace;
    spec.max_result_bytes = tool.max_response_bytes;
    spec.run = [tool, &client](const json& args, const ToolContext& context) {
      auto request = make_http_tool_request(tool, args, context);
      if (!request.ok()) return ToolResult::error(request.status().code(), request.status().message());
      auto response = client.request(std::move(request).value());
      if (!response.ok()) {
        const Status& s = response.status();
        return ToolResult::error(s.code(), "HTTP tool " + tool.name + ": " + s.to_string());
      }
      if (response->status < 200 || response->status > 299) {
        std::string body = response->body.substr(0, 512);
        const char* why =
            response->status >= 300 && response->status < 400 ? " (redirects are not followed)" : "";
        return ToolResult::error(StatusCode::kFailedPrecondition, "HTTP tool " + tool.name + ": status " +
                                                                      std::to_string(response->status) + why +
                                                                      (body.empty() ? "" : ": " + body));
      }
      return ToolResult::success(std::move(response->body));
    };
    AS_RETURN_IF_ERROR(registry.add(std::move(spec)));
  }
  return Status::ok_status();
}

}  // namespace agentserve::tools
