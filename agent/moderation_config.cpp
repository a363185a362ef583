#include "agent/moderation_config.h"

#include <algorithm>
#include <array>
#include <string_view>

namespace agentserve::agent {
namespace {

constexpr std::array<std::string_view, 11> kKeys = {
    "url",           "model",          "secrets",         "timeout_ms",           "fail_open",
    "window_tokens", "overlap_tokens", "check_reasoning", "check_tool_arguments", "check_tool_results",
    "check_input"};

Status wrong_type(std::string_view key, std::string_view expected) {
  return Status::invalid_argument("moderation." + std::string(key) + " must be " + std::string(expected));
}

Status read_bool(const nlohmann::json& object, std::string_view key, bool& out) {
  const auto it = object.find(std::string(key));
  if (it == object.end()) return Status::ok_status();
  if (!it->is_boolean()) return wrong_type(key, "true or false");
  out = it->get<bool>();
  return Status::ok_status();
}

Status read_string(const nlohmann::json& object, std::string_view key, std::string& out) {
  const auto it = object.find(std::string(key));
  if (it == object.end()) return Status::ok_status();
  if (!it->is_string()) return wrong_type(key, "a string");
  out = it->get<std::string>();
  return Status::ok_status();
}

Status read_count(const nlohmann::json& object, std::string_view key, int64_t max, int64_t& out) {
  const auto it = object.find(std::string(key));
  if (it == object.end()) return Status::ok_status();
  if (!it->is_number_integer()) return wrong_type(key, "an integer");
  const int64_t value = it->get<int64_t>();
  if (value < 0 || value > max)
    return Status::invalid_argument("moderation." + std::string(key) + " must be between 0 and " +
                                    std::to_string(max));
  out = value;
  return Status::ok_status();
}

}  // namespace

ModerationOptions ModerationConfig::client_options() const {
  ModerationOptions options;
  options.url = url;
  options.model = model;
  options.secrets = secrets;
  options.timeout = std::chrono::milliseconds(timeout_ms);
  return options;
}

ModeratedTurnOptions ModerationConfig::turn_options() const {
  ModeratedTurnOptions options;
  options.gate.window_tokens = window_tokens;
  options.gate.overlap_tokens = overlap_tokens;
  options.check_reasoning = check_reasoning;
  options.check_tool_arguments = check_tool_arguments;
  options.check_tool_results = check_tool_results;
  return options;
}

Result<ModerationConfig> moderation_config_from_json(const nlohmann::json& object, ModerationConfig base) {
  if (!object.is_object()) return Status::invalid_argument("moderation configuration must be a JSON object");
  std::string unknown;
  for (const auto& [key, value] : object.items())
    if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end())
      unknown += (unknown.empty() ? "" : ", ") + key;
  if (!unknown.empty()) return Status::invalid_argument("unknown moderation keys: " + unknown);

  ModerationConfig config = std::move(base);
  AS_RETURN_IF_ERROR(read_string(object, "url", config.url));
  AS_RETURN_IF_ERROR(read_string(object, "model", config.model));
  if (const auto it = object.find("secrets"); it != object.end()) {
    if (!it->is_array()) return wrong_type("secrets", "an array of strings");
    config.secrets.clear();
    for (const auto& secret : *it) {
      if (!secret.is_string() || secret.get_ref<const std::string&>().empty())
        return wrong_type("secrets", "an array of non-empty strings");
      config.secrets.push_back(secret.get<std::string>());
    }
  }
  int64_t timeout_ms = config.timeout_ms;
  int64_t window = static_cast<int64_t>(config.window_tokens);
  int64_t overlap = static_cast<int64_t>(config.overlap_tokens);
  AS_RETURN_IF_ERROR(read_count(object, "timeout_ms", 600000, timeout_ms));
  AS_RETURN_IF_ERROR(read_count(object, "window_tokens", 1 << 20, window));
  AS_RETURN_IF_ERROR(read_count(object, "overlap_tokens", 1 << 20, overlap));
  AS_RETURN_IF_ERROR(read_bool(object, "fail_open", config.fail_open));
  AS_RETURN_IF_ERROR(read_bool(object, "check_reasoning", config.check_reasoning));
  AS_RETURN_IF_ERROR(read_bool(object, "check_tool_arguments", config.check_tool_arguments));
  AS_RETURN_IF_ERROR(read_bool(object, "check_tool_results", config.check_tool_results));
  AS_RETURN_IF_ERROR(read_bool(object, "check_input", config.check_input));
  if (timeout_ms < 1) return Status::invalid_argument("moderation.timeout_ms must be at least 1");
  if (window < 1) return Status::invalid_argument("moderation.window_tokens must be at least 1");
  if (overlap >= window)
    return Status::invalid_argument("moderation.overlap_tokens must be below window_tokens");
  config.timeout_ms = static_cast<int>(timeout_ms);
  config.window_tokens = static_cast<std::size_t>(window);
  config.overlap_tokens = static_cast<std::size_t>(overlap);
  if (!config.url.empty() && config.url.rfind("http://", 0) != 0 && config.url.rfind("https://", 0) != 0)
    return Status::invalid_argument("moderation.url must start with http:// or https://");
  return config;
}

}  // namespace agentserve::agent
