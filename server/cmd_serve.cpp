// `agentserve serve`: read the config file (flags win over it), open the data dir's one RocksDB (KV tier and
// session store), load the model, then serve WebSocket and HTTP on one port until SIGINT/SIGTERM. After the
// graceful stop (HttpServer::run) the engine is closed first, which flushes its KV to the data dir, then
// the database; the exit status is 0.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "engine/engine.h"
#include "memory/rocksdb_store.h"
#include "memory/session_store.h"
#include "server/auth.h"
#include "server/cli_args.h"
#include "server/commands.h"
#include "server/constraint_cache.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/server_config.h"
#include "server/server_moderation.h"
#include "server/server_options.h"
#include "server/session_registry.h"
#include "tools/builtin_tools.h"
#include "tools/tool_registry.h"

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
  int tensor_parallel_size = 1;
  bool expert_parallel = false;
  std::string backend = "cpu";
  int tool_arg_max_chars = 0;
  int port = 8080;
  std::string config_path;
  server::ServerOptions options;
  // The transport flags, to know which were given (they win over the config file).
  CLI::Option* host_flag = nullptr;
  CLI::Option* port_flag = nullptr;
  CLI::Option* io_threads_flag = nullptr;
  int shutdown_grace_seconds = 10;
  CLI::Option* shutdown_grace_flag = nullptr;
  // Moderation flags (they win over the config file's "moderation" object).
  std::string moderation_url;
  std::vector<std::string> moderation_secrets;
  bool moderation_fail_open = false;
  int moderation_timeout_ms = 0;
  int moderation_window = 0;
};

// The --moderation-* flags over the file's "moderation" object, then the merged result checked as a whole.
// A window below the overlap pulls the overlap down to a quarter of the window.
Status apply_moderation_flags(const ServeArgs& args, agent::ModerationConfig& moderation) {
  if (!args.moderation_url.empty()) moderation.url = args.moderation_url;
  if (!args.moderation_secrets.empty()) moderation.secrets = args.moderation_secrets;
  if (args.moderation_fail_open) moderation.fail_open = true;
  if (args.moderation_timeout_ms > 0) moderation.timeout_ms = args.moderation_timeout_ms;
  if (args.moderation_window > 0) {
    moderation.window_tokens = static_cast<size_t>(args.moderation_window);
    if (moderation.overlap_tokens >= moderation.window_tokens)
      moderation.overlap_tokens = moderation.window_tokens / 4;
  }
  AS_ASSIGN_OR_RETURN(moderation, agent::moderation_config_from_json(nlohmann::json::object(), moderation));
  return Status::ok_status();
}

// The HTTP tools' outbound client on a thread of its own (the server's io_context is private to it).
struct HttpToolClient {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  net::HttpClient client{io};
  std::thread thread{[this] { io.run(); }};
  ~HttpToolClient() {
    work.reset();
    io.stop();
    thread.join();
  }
};

// The config file (if any) under the flags that were given.
Result<server::ServerConfig> server_config(const ServeArgs& args) {
  server::ServerConfig config;
  if (!args.config_path.empty()) {
    auto loaded = server::load_server_config(args.config_path);
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
  } else {
    config.options.port = static_cast<uint16_t>(args.port);
  }
  if (args.host_flag->count() > 0) config.options.host = args.options.host;
  if (args.port_flag->count() > 0) config.options.port = static_cast<uint16_t>(args.port);
  if (args.io_threads_flag->count() > 0) config.options.io_threads = args.options.io_threads;
  if (args.shutdown_grace_flag->count() > 0)
    config.options.shutdown_grace = std::chrono::seconds(args.shutdown_grace_seconds);
  // With API keys every caller is authenticated, so another address is allowed; without, loopback only.
  config.options.allow_remote = !config.api_keys.empty();
  return config;
}

// The model's name in /v1/models: the folder's name ("models/tiny/" -> "tiny").
std::string model_name(const std::string& model_dir) {
  std::filesystem::path path = std::filesystem::path(model_dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

int serve(const ServeArgs& args) {
  // Logs go to stderr: stdout carries only the "listening on HOST:PORT" line that scripts and tests read.
  spdlog::set_default_logger(spdlog::stderr_color_mt("serve"));
  auto config = server_config(args);
  if (!config.ok()) return report_error(config.status());
  if (Status moderation = apply_moderation_flags(args, config->moderation); !moderation.ok())
    return report_error(moderation);
  const server::ServerOptions& options = config->options;
  // Refuse a bad address before spending the time to load the model.
  if (Status valid = server::HttpServer::check_options(options); !valid.ok()) return report_error(valid);

  // One database for the KV tier and the sessions; declared first so it is closed last.
  std::unique_ptr<memory::RocksDbStore> store;
  std::unique_ptr<memory::SessionStore> session_store;
  if (!args.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(args.data_dir, ec);
    if (ec) return report_error(Status::io_error("cannot create " + args.data_dir + ": " + ec.message()));
    memory::StoreOptions store_options;
    store_options.path = (std::filesystem::path(args.data_dir) / "rocksdb").string();
    store_options.kv_quota_bytes = static_cast<uint64_t>(args.disk_kv_gb) << 30;
    auto opened = memory::RocksDbStore::open(store_options);
    if (!opened.ok()) return report_error(opened.status());
    store = std::move(*opened);
    session_store = std::make_unique<memory::SessionStore>(*store);
  }

  engine::EngineOptions engine_options;
  engine_options.model_dir = args.model_dir;
  engine_options.n_threads = args.threads;
  engine_options.kv_cache_bytes = static_cast<size_t>(args.kv_cache_mb) << 20;
  engine_options.store = store.get();
  engine_options.host_kv_bytes = static_cast<size_t>(args.host_kv_mb) << 20;
  engine_options.disk_kv_quota_bytes = static_cast<size_t>(args.disk_kv_gb) << 30;
  engine_options.bf16_activations = args.bf16_activations;
  engine_options.tensor_parallel_size = args.tensor_parallel_size;
  engine_options.expert_parallel = args.expert_parallel;
  engine_options.backend = args.backend;

  server::Metrics metrics;
  // Before the server so it outlives every connection that holds a gate or a pending check.
  std::unique_ptr<server::ServerModeration> moderation;
  if (config->moderation.enabled()) {
    auto created = server::ServerModeration::create(config->moderation);
    if (!created.ok()) return report_error(created.status());
    moderation = std::move(*created);
  }
  server::Auth auth(config->api_keys, config->tenants, config->default_limits);
  // Declared before the engine so they are destroyed after it: the engine's last callbacks post to the
  // server and touch sessions.
  // The server's tools; declared before the sessions and the server so no connection outlives them.
  std::unique_ptr<HttpToolClient> http_tool_client;
  if (!config->http_tools.tools.empty()) http_tool_client = std::make_unique<HttpToolClient>();
  tools::ToolRegistry tool_registry;
  {
    tools::BuiltinToolDeps deps;
    deps.sessions = session_store.get();
    deps.http_tools = config->http_tools;
    deps.http_client = http_tool_client ? &http_tool_client->client : nullptr;
    if (Status registered = tools::register_builtin_tools(tool_registry, std::move(deps)); !registered.ok())
      return report_error(registered);
  }
  std::unique_ptr<server::ConstraintCache> constraints;
  std::unique_ptr<server::SessionRegistry> sessions;
  std::unique_ptr<server::HttpServer> http;
  auto engine = engine::Engine::open(engine_options);
  if (!engine.ok()) return report_error(engine.status());
  sessions = std::make_unique<server::SessionRegistry>(
      server::RegistryOptions::from(options, static_cast<int>((*engine)->config().vocab_size)),
      session_store.get(), auth);
  auto started = server::HttpServer::start(options, **engine, metrics, model_name(args.model_dir));
  if (!started.ok()) return report_error(started.status());
  http = std::move(*started);
  http->context().auth = &auth;
  http->context().sessions = sessions.get();
  constraints = std::make_unique<server::ConstraintCache>(
      server::tool_call_compiler((*engine)->tokenizer(), static_cast<int>((*engine)->config().vocab_size),
                                 args.tool_arg_max_chars),
      options.constraint_cache_entries);
  http->context().tools = &tool_registry;
  http->context().tool_call_constraint = [c = constraints.get()](std::span<const tools::ToolSpec* const> allowed) {
    return c->start(allowed);
  };
  http->context().moderation = moderation.get();
  std::printf("listening on %s:%u\n", options.host.c_str(), static_cast<unsigned>(http->port()));
  std::fflush(stdout);
  http->run();
  // Checks still pending end now, while the server's io_context (where their callbacks post) still exists.
  http->context().moderation = nullptr;
  moderation.reset();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "Serve WebSocket (/v1/ws) and HTTP on one loopback port");
  cmd->add_option("--model", args->model_dir, "Hugging Face checkpoint folder")->required();
  cmd->add_option("--config", args->config_path,
                  "JSON config file (docs/configuration.md): options, API keys, tenants; flags win over it");
  args->host_flag = cmd->add_option("--host", args->options.host,
                                    "Address to listen on (loopback only unless API keys are configured)");
  args->port_flag = cmd->add_option("--port", args->port, "Port (0 = any free port; the bound one is printed)")
                        ->check(CLI::Range(0, 65535));
  args->io_threads_flag = cmd->add_option("--io-threads", args->options.io_threads, "Threads for sockets and timers")
                              ->check(CLI::Range(1, 256));
  args->shutdown_grace_flag =
      cmd->add_option("--shutdown-grace-seconds", args->shutdown_grace_seconds,
                      "SIGTERM/SIGINT: seconds running responses may take to finish before the rest are "
                      "cancelled")
          ->check(CLI::Range(0, 3600));
  cmd->add_option("--threads", args->threads, "Compute threads (0 = all hardware threads)");
  cmd->add_option("--kv-cache-mb", args->kv_cache_mb, "KV cache size in MiB")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--data-dir", args->data_dir,
                  "Folder for the embedded RocksDB: evicted KV blocks spill there and survive restarts "
                  "(empty = KV lives in memory only)");
  cmd->add_option("--host-kv-mb", args->host_kv_mb, "Host-RAM KV tier between the pool and disk, in MiB")
      ->check(CLI::Range(0, 1 << 22));
  cmd->add_option("--disk-kv-gb", args->disk_kv_gb, "Disk quota of the KV tier in GiB")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--moderation-url", args->moderation_url,
                  "Moderation webhook (http:// or https://); every output passes it (docs/moderation.md)");
  cmd->add_option("--moderation-secret", args->moderation_secrets,
                  "Standard Webhooks signing secret (repeatable, for rotation)");
  cmd->add_flag("--moderation-fail-open", args->moderation_fail_open,
                "Let text through when the webhook fails (default: a failure blocks)");
  cmd->add_option("--moderation-timeout-ms", args->moderation_timeout_ms, "Webhook timeout per attempt")
      ->check(CLI::Range(1, 600000));
  cmd->add_option("--moderation-window", args->moderation_window, "Hold-back window in tokens")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--tensor-parallel-size", args->tensor_parallel_size,
                  "Ranks that split each layer's heads and experts (KV tiers need 1)")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--expert-parallel", args->expert_parallel,
                "With --tensor-parallel-size: experts are spread whole over the ranks instead of sliced");
  cmd->add_option("--backend", args->backend,
                  "What runs the forward: cpu, backend-cpu (the GPU's code path on the CPU) or cuda (GPU 0; "
                  "the KV pool takes the GPU memory the weights leave, --kv-cache-mb is ignored)")
      ->check(CLI::IsMember({"cpu", "backend-cpu", "cuda"}));
  cmd->add_option("--tool-arg-max-chars", args->tool_arg_max_chars,
                  "Longest string in constrained tool-call arguments (0 = as the schema says; a cap bounds "
                  "the calls of rambling models)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_flag("--bf16-activations", args->bf16_activations,
                "BF16 dot products for batched rows: ~2x batch throughput, 2^-9 relative rounding");
  cmd->callback([args, &exit_code] { exit_code = serve(*args); });
}

}  // namespace agentserve::cli
