// agentserve: one binary, one subcommand per job (serve, make-model, generate, ...).
#include <CLI/CLI.hpp>

#include "server/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"agentserve: a server for LLM agents with persistent session memory"};
  app.require_subcommand(1);
  app.set_version_flag("--version", AGENTSERVE_VERSION);
  int exit_code = 0;
  agentserve::cli::add_info_command(app, exit_code);
  agentserve::cli::add_tokenize_commands(app, exit_code);
  agentserve::cli::add_generate_commands(app, exit_code);
  agentserve::cli::add_make_model_command(app, exit_code);
  agentserve::cli::add_verify_weights_command(app, exit_code);
  agentserve::cli::add_render_command(app, exit_code);
  agentserve::cli::add_serve_command(app, exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
