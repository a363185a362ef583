// `agentserve render`: the exact prompt the server would feed the model for a conversation, rendered by
// the built-in Qwen3 chat template, for checking it against other tools and for debugging prompts.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "agent/chat_template.h"
#include "server/commands.h"

namespace agentserve::cli {
namespace {

constexpr int kBadInput = 2;  // unreadable or invalid messages / tools
constexpr int kBadModel = 1;  // the model folder has no usable tokenizer_config.json

Result<agent::Json> read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::not_found("cannot open " + path);
  std::ostringstream text;
  text << in.rdbuf();
  agent::Json json = agent::Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Status::invalid_argument(path + " is not valid JSON");
  return json;
}

// The messages file is a JSON array of messages, or an object {"messages": [...], "tools": [...]} as in a
// chat-completions request body; the tools file is an array of tool schemas or {"tools": [...]}.
Result<std::string> render_files(const std::string& messages_path, const std::string& tools_path,
                                 const agent::ChatTemplateOptions& options) {
  AS_ASSIGN_OR_RETURN(agent::Json request, read_json_file(messages_path));
  agent::Json messages = request;
  agent::Json tools = nullptr;
  if (request.is_object()) {
    if (!request.contains("messages"))
      return Status::invalid_argument(messages_path +
                                      ": want a JSON array of messages or {\"messages\": [...]}");
    messages = request["messages"];
    if (request.contains("tools")) tools = request["tools"];
  }
  if (!tools_path.empty()) {
    AS_ASSIGN_OR_RETURN(tools, read_json_file(tools_path));
    if (tools.is_object() && tools.contains("tools")) tools = agent::Json(tools["tools"]);
  }
  auto parsed = agent::parse_messages(messages);
  if (!parsed.ok()) return Status::invalid_argument(messages_path + ": " + parsed.status().message());
  return agent::render_chat(*parsed, tools, options);
}

}  // namespace

void add_render_command(CLI::App& app, int& exit_code) {
  struct Options {
    std::string model, messages, tools;
    bool no_generation_prompt = false;
    bool enable_thinking = true;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("render", "Print the exact prompt of a conversation (Qwen3 chat template)");
  cmd->add_option("--model", options->model, "Model folder holding tokenizer_config.json")->required();
  cmd->add_option("--messages", options->messages, "JSON file: [messages] or {\"messages\", \"tools\"}")
      ->required();
  cmd->add_option("--tools", options->tools, "JSON file: [tool schemas] or {\"tools\": [...]}");
  cmd->add_flag("--no-generation-prompt", options->no_generation_prompt,
                "Do not open the assistant's turn at the end");
  cmd->add_option("--enable-thinking", options->enable_thinking,
                  "false adds an empty <think></think> block after the generation prompt")
      ->default_str("true");
  cmd->callback([options, &exit_code] {
    const Status model = agent::check_model_chat_template(options->model);
    if (!model.ok() && model.code() != StatusCode::kFailedPrecondition) {
      std::fprintf(stderr, "agentserve: %s\n", model.message().c_str());
      exit_code = kBadModel;
      return;
    }
    if (!model.ok()) std::fprintf(stderr, "agentserve: warning: %s\n", model.message().c_str());
    const auto prompt = render_files(options->messages, options->tools,
                                     {.add_generation_prompt = !options->no_generation_prompt,
                                      .enable_thinking = options->enable_thinking});
    if (!prompt.ok()) {
      std::fprintf(stderr, "agentserve: %s\n", prompt.status().message().c_str());
      exit_code = kBadInput;
      return;
    }
    std::fwrite(prompt->data(), 1, prompt->size(), stdout);
    exit_code = 0;
  });
}

}  // namespace agentserve::cli
