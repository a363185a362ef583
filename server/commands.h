// The agentserve subcommands. Each add_*_command registers one subcommand with its options on the app;
// its callback runs the work and sets the process exit code through `exit_code`.
#pragma once

#include <CLI/CLI.hpp>

namespace agentserve::cli {

void add_info_command(CLI::App& app, int& exit_code);
void add_tokenize_commands(CLI::App& app, int& exit_code);  // tokenize, detokenize
void add_generate_commands(CLI::App& app, int& exit_code);  // generate, score
void add_make_model_command(CLI::App& app, int& exit_code);
void add_verify_weights_command(CLI::App& app, int& exit_code);
void add_render_command(CLI::App& app, int& exit_code);  // the Qwen3 chat prompt of a conversation
void add_serve_command(CLI::App& app, int& exit_code);

}  // namespace agentserve::cli
