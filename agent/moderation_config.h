// ModerationConfig: the operator's moderation settings in one struct, with the defaults documented here, and
// the one place they are parsed from JSON (the "moderation" object of the server's config file; the serve
// flags --moderation-url, --moderation-secret and --moderation-fail-open then override fields). It turns
// into the client's options and the moderated sink's options.
//
// Parsing must never accept what it does not understand: an unknown key, a wrong type or an out-of-range
// value is an InvalidArgument naming it, so a typo cannot silently switch a check off.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/moderated_turn_sink.h"
#include "agent/moderation_client.h"
#include "base/status.h"

namespace agentserve::agent {

struct ModerationConfig {
  std::string url;                               // http(s) endpoint; empty: moderation off
  std::string model = "omni-moderation-latest";  // passed through as "model"
  std::vector<std::string> secrets;              // Standard Webhooks secrets (rotation: several)
  int timeout_ms = 2000;                         // per attempt; one retry doubles the worst case
  bool fail_open = false;                        // default policy; a tenant's moderation_fail_open overrides
  std::size_t window_tokens = 64;                // hold-back window for output text and reasoning
  std::size_t overlap_tokens = 16;               // tokens of the previous window repeated in the next check
  bool check_reasoning = true;
  bool check_tool_arguments = true;
  bool check_tool_results = false;
  bool check_input = false;  // user messages, checked by the driver before a response starts

  bool enabled() const { return !url.empty(); }
  ModerationOptions client_options() const;
  ModeratedTurnOptions turn_options() const;
};

// Reads the keys present in `object` over `base` (keys are the field names above). InvalidArgument for a
// non-object, unknown keys (all named), wrong types, timeout_ms or window_tokens below 1, overlap_tokens not
// below window_tokens, or a url that is not http:// or https://.
Result<ModerationConfig> moderation_config_from_json(const nlohmann::json& object,
                                                     ModerationConfig base = {});

}  // namespace agentserve::agent
