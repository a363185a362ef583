#include "server/server_config.h"

#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

namespace agentserve::server {
namespace {

using nlohmann::json;

Status unknown_key(const std::string& path) {
  return Status::invalid_argument("config: unknown key '" + path + "'");
}

Status wrong(const std::string& path, const std::string& what) {
  return Status::invalid_argument("config: '" + path + "' must be " + what);
}

Status read_int(const json& value, const std::string& path, int64_t lo, int64_t hi, int64_t& out) {
  if (!value.is_number_integer()) return wrong(path, "an integer");
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(hi))
    return wrong(path, "at most " + std::to_string(hi));
  const int64_t v = value.get<int64_t>();
  if (v < lo || v > hi) return wrong(path, "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  out = v;
  return Status::ok_status();
}

template <typename T>
Status read_into(const json& value, const std::string& path, int64_t lo, int64_t hi, T& out) {
  int64_t v = 0;
  AS_RETURN_IF_ERROR(read_int(value, path, lo, hi, v));
  out = static_cast<T>(v);
  return Status::ok_status();
}

Status read_seconds(const json& value, const std::string& path, int64_t lo, std::chrono::seconds& out) {
  int64_t v = 0;
  AS_RETURN_IF_ERROR(read_int(value, path, lo, int64_t{10} * 365 * 86400, v));
  out = std::chrono::seconds(v);
  return Status::ok_status();
}

Status read_limits(const json& object, const std::string& path, TenantLimits& limits) {
  if (!object.is_object()) return wrong(path, "an object");
  for (const auto& [key, value] : object.items()) {
    const std::string p = path + "." + key;
    if (key == "max_sessions") {
      AS_RETURN_IF_ERROR(read_into(value, p, 1, 1 << 30, limits.max_sessions));
    } else if (key == "max_concurrent_responses") {
      AS_RETURN_IF_ERROR(read_into(value, p, 1, 1 << 20, limits.max_concurrent_responses));
    } else if (key == "tokens_per_minute") {
      AS_RETURN_IF_ERROR(
          read_into(value, p, 0, std::numeric_limits<int64_t>::max(), limits.tokens_per_minute));
    } else if (key == "moderation_fail_open") {
      if (!value.is_boolean()) return wrong(p, "true or false");
      limits.moderation_fail_open = value.get<bool>();
    } else {
      return unknown_key(p);
    }
  }
  return Status::ok_status();
}

Status read_api_keys(const json& keys, std::vector<ApiKey>& out) {
  if (!keys.is_array()) return wrong("api_keys", "an array");
  out.clear();
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string path = "api_keys[" + std::to_string(i) + "]";
    const json& entry = keys[i];
    if (!entry.is_object()) return wrong(path, "an object");
    ApiKey key;
    bool have_key = false;
    for (const auto& [name, value] : entry.items()) {
      const std::string p = path + "." + name;
      if (name == "tenant") {
        if (!value.is_string() || value.get_ref<const std::string&>().empty())
          return wrong(p, "a non-empty string");
        key.tenant = value.get<std::string>();
      } else if (name == "key") {
        if (!value.is_string() || value.get_ref<const std::string&>().empty())
          return wrong(p, "a non-empty string");
        key.sha256 = hash_api_key(value.get_ref<const std::string&>());
        if (have_key) return wrong(path, "given either key or key_sha256, not both");
        have_key = true;
      } else if (name == "key_sha256") {
        if (!value.is_string()) return wrong(p, "64 hex digits");
        auto digest = parse_key_sha256(value.get_ref<const std::string&>());
        if (!digest.ok()) return wrong(p, "64 hex digits");
        key.sha256 = *digest;
        if (have_key) return wrong(path, "given either key or key_sha256, not both");
        have_key = true;
      } else {
        return unknown_key(p);
      }
    }
    if (!have_key) return wrong(path, "given a key or key_sha256");
    if (key.tenant.empty()) return wrong(path + ".tenant", "a non-empty string");
    out.push_back(std::move(key));
  }
  return Status::ok_status();
}

Status read_option(const std::string& key, const json& value, ServerOptions& o) {
  if (key == "host") {
    if (!value.is_string()) return wrong(key, "a string");
    o.host = value.get<std::string>();
  } else if (key == "port") {
    return read_into(value, key, 0, 65535, o.port);
  } else if (key == "io_threads") {
    return read_into(value, key, 1, 256, o.io_threads);
  } else if (key == "max_message_bytes") {
    return read_into(value, key, 1024, int64_t{1} << 30, o.max_message_bytes);
  } else if (key == "max_json_depth") {
    return read_into(value, key, 1, 4096, o.max_json_depth);
  } else if (key == "max_http_request_bytes") {
    return read_into(value, key, 1024, int64_t{1} << 30, o.max_http_request_bytes);
  } else if (key == "max_write_queue_bytes") {
    return read_into(value, key, 4096, int64_t{1} << 34, o.max_write_queue_bytes);
  } else if (key == "max_sessions_per_connection") {
    return read_into(value, key, 1, 1 << 20, o.max_sessions_per_connection);
  } else if (key == "max_items_per_session") {
    return read_into(value, key, 1, 1 << 24, o.max_items_per_session);
  } else if (key == "max_content_bytes") {
    return read_into(value, key, 1, int64_t{1} << 30, o.max_content_bytes);
  } else if (key == "default_max_tokens") {
    return read_into(value, key, 1, 1 << 24, o.default_max_tokens);
  } else if (key == "max_tokens_limit") {
    return read_into(value, key, 1, 1 << 24, o.max_tokens_limit);
  } else if (key == "handshake_timeout_seconds") {
    return read_seconds(value, key, 1, o.handshake_timeout);
  } else if (key == "idle_timeout_seconds") {
    return read_seconds(value, key, 1, o.idle_timeout);
  } else if (key == "shutdown_grace_seconds") {
    return read_seconds(value, key, 0, o.shutdown_grace);
  } else if (key == "replay_max_events") {
    return read_into(value, key, 1, 1 << 24, o.replay_max_events);
  } else if (key == "replay_max_bytes") {
    return read_into(value, key, 1024, int64_t{1} << 34, o.replay_max_bytes);
  } else if (key == "session_ttl_seconds") {
    return read_seconds(value, key, 0, o.session_ttl);
  } else if (key == "session_sweep_interval_seconds") {
    return read_seconds(value, key, 1, o.session_sweep_interval);
  } else if (key == "idle_pin_window_seconds") {
    return read_seconds(value, key, 0, o.idle_pin_window);
  } else if (key == "tool_constraint_cache_entries") {
    return read_into(value, key, 1, 1 << 16, o.constraint_cache_entries);
  } else {
    return unknown_key(key);
  }
  return Status::ok_status();
}

}  // namespace

Result<ServerConfig> parse_server_config(std::string_view json_text, ServerConfig base) {
  const json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Status::invalid_argument("config: not valid JSON");
  if (!root.is_object()) return Status::invalid_argument("config: the top level must be a JSON object");
  ServerConfig config = std::move(base);
  for (const auto& [key, value] : root.items()) {
    if (key == "api_keys") {
      AS_RETURN_IF_ERROR(read_api_keys(value, config.api_keys));
    } else if (key == "tenants") {
      if (!value.is_object()) return wrong(key, "an object of tenant name -> limits");
      for (const auto& [name, limits] : value.items()) {
        TenantLimits parsed = config.default_limits;
        AS_RETURN_IF_ERROR(read_limits(limits, "tenants." + name, parsed));
        config.tenants[name] = parsed;
      }
    } else if (key == "default_tenant_limits") {
      AS_RETURN_IF_ERROR(read_limits(value, key, config.default_limits));
    } else if (key == "moderation") {
      auto moderation = agent::moderation_config_from_json(value, config.moderation);
      if (!moderation.ok())
        return Status::invalid_argument("config: moderation: " + moderation.status().message());
      config.moderation = std::move(*moderation);
    } else if (key == "http_tools") {
      auto http_tools = tools::http_tools_from_json(value);
      if (!http_tools.ok())
        return Status::invalid_argument("config: http_tools: " + http_tools.status().message());
      config.http_tools = std::move(*http_tools);
    } else {
      AS_RETURN_IF_ERROR(read_option(key, value, config.options));
    }
  }
  return config;
}

Result<ServerConfig> load_server_config(const std::filesystem::path& path, ServerConfig base) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io_error("config: cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  auto parsed = parse_server_config(text.str(), std::move(base));
  if (!parsed.ok()) return Status(parsed.status().code(), path.string() + ": " + parsed.status().message());
  return parsed;
}

}  // namespace agentserve::server
