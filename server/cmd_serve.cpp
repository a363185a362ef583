// `agentserve serve`: load the model, then serve WebSocket and HTTP on one loopback port until
// SIGINT/SIGTERM.
#include <cstdio>
#include <filesystem>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "engine/engine.h"
#include "server/cli_args.h"
#include "server/commands.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/server_options.h"

namespace agentserve::cli {
namespace {

struct ServeArgs {
  std::string model_dir;
  int threads = 0;
  int kv_cache_mb = 1024;
  std::string data_dir;
  int host_kv_mb = 0;
  int disk_kv_gb = 64;
  bool bf16_activations = false;
  int port = 8080;
  server::ServerOptions options;
};

// The model's name in /v1/models: the folder's name ("models/tiny/" -> "tiny").
std::string model_name(const std::string& model_dir) {
  std::filesystem::path path = std::filesystem::path(model_dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

int serve(const ServeArgs& args) {
  // Logs go to stderr: stdout carries only the "listening on HOST:PORT" line that scripts and tests read.
  spdlog::set_default_logger(spdlog::stderr_color_mt("serve"));
  server::ServerOptions options = args.options;
  options.port = static_cast<uint16_t>(args.port);
  // Refuse a bad address before spending the time to load the model.
  if (Status valid = server::HttpServer::check_options(options); !valid.ok()) return report_error(valid);

  engine::EngineOptions engine_options;
  engine_options.model_dir = args.model_dir;
  engine_options.n_threads = args.threads;
  engine_options.kv_cache_bytes = static_cast<size_t>(args.kv_cache_mb) << 20;
  engine_options.data_dir = args.data_dir;
  engine_options.host_kv_bytes = static_cast<size_t>(args.host_kv_mb) << 20;
  engine_options.disk_kv_quota_bytes = static_cast<size_t>(args.disk_kv_gb) << 30;
  engine_options.bf16_activations = args.bf16_activations;

  server::Metrics metrics;
  // Declared before the engine so it is destroyed after it: the engine's last callbacks post to the server.
  std::unique_ptr<server::HttpServer> http;
  auto engine = engine::Engine::open(engine_options);
  if (!engine.ok()) return report_error(engine.status());
  auto started = server::HttpServer::start(options, **engine, metrics, model_name(args.model_dir));
  if (!started.ok()) return report_error(started.status());
  http = std::move(*started);
  std::printf("listening on %s:%u\n", options.host.c_str(), static_cast<unsigned>(http->port()));
  std::fflush(stdout);
  http->run();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "Serve WebSocket (/v1/ws) and HTTP on one loopback port");
  cmd->add_option("--model", args->model_dir, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--host", args->options.host, "Address to listen on (loopback only until API keys exist)");
  cmd->add_option("--port", args->port, "Port (0 = any free port; the bound one is printed)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--io-threads", args->options.io_threads, "Threads for sockets and timers")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--threads", args->threads, "Compute threads (0 = all hardware threads)");
  cmd->add_option("--kv-cache-mb", args->kv_cache_mb, "KV cache size in MiB")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--data-dir", args->data_dir,
                  "Folder for the embedded RocksDB: evicted KV blocks spill there and survive restarts "
                  "(empty = KV lives in memory only)");
  cmd->add_option("--host-kv-mb", args->host_kv_mb, "Host-RAM KV tier between the pool and disk, in MiB")
      ->check(CLI::Range(0, 1 << 22));
  cmd->add_option("--disk-kv-gb", args->disk_kv_gb, "Disk quota of the KV tier in GiB")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("--bf16-activations", args->bf16_activations,
                "BF16 dot products for batched rows: ~2x batch throughput, 2^-9 relative rounding");
  cmd->callback([args, &exit_code] { exit_code = serve(*args); });
}

}  // namespace agentserve::cli
