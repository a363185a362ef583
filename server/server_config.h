// ServerConfig: everything `agentserve serve --config FILE` reads, parsed from one JSON file into plain
// structs (ServerOptions, API keys, tenants' limits). Flags given on the command line override the file;
// cmd_serve applies them after load. Unknown keys are an error that names them (a typo never silently
// falls back to a default).
//
// It must never keep plaintext keys longer than the parse (they become SHA-256 digests at once), and never
// hold runtime state.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/moderation_config.h"
#include "base/status.h"
#include "server/auth.h"
#include "server/server_options.h"
#include "tools/http_tool.h"

namespace agentserve::server {

struct ServerConfig {
  agent::ModerationConfig moderation;  // "moderation": off unless it has a url (docs/moderation.md)
  ServerOptions options;
  std::vector<ApiKey> api_keys;
  std::map<std::string, TenantLimits> tenants;
  TenantLimits default_limits;        // tenants not listed (and "default" in open mode)
  tools::HttpToolsConfig http_tools;  // "http_tools": server-side HTTP tools (docs/tools.md); none by default
};

// Parses the JSON text of a config file over `base` (fields absent keep base's values). InvalidArgument
// naming the key (dotted path) on unknown keys, wrong types and out-of-range values.
Result<ServerConfig> parse_server_config(std::string_view json_text, ServerConfig base = {});
Result<ServerConfig> load_server_config(const std::filesystem::path& path, ServerConfig base = {});

}  // namespace agentserve::server
