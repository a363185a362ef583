// `agentserve tokenize` and `agentserve detokenize`: the tokenizer from the command line, for scripts and
// for checking a model folder's tokenizer.json against other tools.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "server/cli_args.h"
#include "server/commands.h"

namespace agentserve::cli {
namespace {

constexpr int kBadInput = 2;  // an unparsable id list or an id without a token
constexpr int kBadModel = 1;  // the tokenizer could not be loaded

Result<engine::Tokenizer> load_or_report(const std::string& model, int& exit_code) {
  auto tokenizer = engine::Tokenizer::load(model);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "agentserve: cannot load the tokenizer: %s\n",
                 tokenizer.status().to_string().c_str());
    exit_code = kBadModel;
  }
  return tokenizer;
}

}  // namespace

void add_tokenize_commands(CLI::App& app, int& exit_code) {
  struct Options {
    std::string model, text, ids;
    bool no_special = false, skip_special = false;
  };
  auto options = std::make_shared<Options>();

  auto* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text as a JSON array");
  tokenize->add_option("--model", options->model, "Model folder holding tokenizer.json (or the file)")
      ->required();
  tokenize->add_option("--text", options->text, "Text to tokenize")->required();
  tokenize->add_flag("--no-special", options->no_special,
                     "Tokenize special tokens such as <|im_start|> as plain text");
  tokenize->callback([options, &exit_code] {
    const auto tokenizer = load_or_report(options->model, exit_code);
    if (!tokenizer.ok()) return;
    const std::vector<int32_t> ids = tokenizer->encode(options->text, /*parse_special=*/!options->no_special);
    std::string out = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
    std::printf("%s]\n", out.c_str());
    exit_code = 0;
  });

  auto* detokenize =
      app.add_subcommand("detokenize", "Print the text of token ids (exactly, no newline added)");
  detokenize->add_option("--model", options->model, "Model folder holding tokenizer.json (or the file)")
      ->required();
  detokenize->add_option("--ids", options->ids, "Token ids: 1,2,3 or [1,2,3]")->required();
  detokenize->add_flag("--skip-special", options->skip_special,
                       "Leave out special tokens such as <|im_end|>");
  detokenize->callback([options, &exit_code] {
    const auto ids = parse_id_list(options->ids);
    if (!ids.ok()) {
      std::fprintf(stderr, "agentserve: %s\n", ids.status().message().c_str());
      exit_code = kBadInput;
      return;
    }
    const auto tokenizer = load_or_report(options->model, exit_code);
    if (!tokenizer.ok()) return;
    if (const Status valid = tokenizer->validate_ids(*ids); !valid.ok()) {
      std::fprintf(stderr, "agentserve: %s\n", valid.message().c_str());
      exit_code = kBadInput;
      return;
    }
    const std::string text = tokenizer->decode(*ids, options->skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    exit_code = 0;
  });
}

}  // namespace agentserve::cli
