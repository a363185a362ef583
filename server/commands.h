// The agentserve subcommands. Each add_*_command registers one subcommand with its options on the app;
// its callback runs the work and sets the process exit code through `exit_code`.
#pragma once

#include <CLI/CLI.hpp>

namespace agentserve::cli {

void add_info_command(CLI::App& app, int& exit_code);

}  // namespace agentserve::cli
