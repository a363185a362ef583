// The reference conversations the chat template is checked against (tests/reference/chat_conversations.json,
// rendered by the Jinja template into tests/agent/data/chat_golden.json), read as the tests need them: the
// raw JSON, the parsed messages and the template options each one asks for. Read-only; a file that is
// missing or does not parse fails the test.
#pragma once

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "agent/chat_template.h"

namespace agentserve::agent::testing {

inline Json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return Json::parse(buffer.str());
}

struct ReferenceConversation {
  std::string name;
  Json json;  // as written in the file
  std::vector<Message> messages;
  Json tools;  // null when the conversation has none
  ChatTemplateOptions options;
};

// In file order, which is also the order of chat_golden.json.
inline std::vector<ReferenceConversation> reference_conversations() {
  const Json all =
      read_json(std::filesystem::path(AGENTSERVE_SOURCE_DIR) / "tests/reference/chat_conversations.json");
  std::vector<ReferenceConversation> out;
  for (const Json& conversation : all) {
    ReferenceConversation c;
    c.name = conversation.at("name").get<std::string>();
    c.json = conversation;
    auto messages = parse_messages(conversation.at("messages"));
    REQUIRE_MESSAGE(messages.ok(), c.name << ": " << messages.status().to_string());
    c.messages = std::move(*messages);
    c.tools = conversation.value("tools", Json(nullptr));
    c.options.add_generation_prompt = conversation.value("add_generation_prompt", false);
    c.options.enable_thinking = conversation.value("enable_thinking", true);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace agentserve::agent::testing
