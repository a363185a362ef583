// Server load: many idle WebSocket sessions plus a few streaming ones against the real `agentserve serve`
// on loopback, bounded in time. It starts the binary itself (tiny random model unless --model), raises its
// own fd limit (the server inherits it), opens --idle connections that each create a session and then stay
// silent, then runs --streams clients that stream responses back to back for --seconds. Reports:
//   - memory per idle session: server VmRSS before and after opening the idle sessions, / their number;
//   - token write latency p50/p99: from the server's agentserve_token_write_latency_seconds histogram
//     (the engine's callback posting a token -> the WebSocket frame carrying it written), read from
//     /metrics before and after the run;
//   - CPU by server thread group over the streaming window (utime+stime from /proc/PID/task/*/stat by
//     thread name: as-io-N, as-engine, as-storage, the rest), as a share of the window and of the total.
// Loopback only; the load generator is plain Boost.Beast (sync, one thread per streaming client).
//
//   server_load_bench [--model DIR] [--binary PATH] [--idle 1000] [--streams 64] [--seconds 20]
//                     [--max-tokens 64] [--threads 2] [--io-threads 2]
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Args {
  std::string model;
  std::string binary;
  int idle = 1000;
  int streams = 64;
  int seconds = 20;
  int max_tokens = 64;
  int threads = 2;
  int io_threads = 2;
};

Args parse_args(int argc, char** argv) {
  Args a;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  a.binary = (self.parent_path().parent_path() / "server" / "agentserve").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const std::string v = argv[i + 1];
    if (k == "--model") a.model = v;
    else if (k == "--binary") a.binary = v;
    else if (k == "--idle") a.idle = std::stoi(v);
    else if (k == "--streams") a.streams = std::stoi(v);
    else if (k == "--seconds") a.seconds = std::stoi(v);
    else if (k == "--max-tokens") a.max_tokens = std::stoi(v);
    else if (k == "--threads") a.threads = std::stoi(v);
    else if (k == "--io-threads") a.io_threads = std::stoi(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// The server process: started with --port 0, its port read from the "listening on" line.
struct Server {
  pid_t pid = -1;
  int port = 0;
  int stdout_fd = -1;
};

Server start_server(const Args& a, const std::filesystem::path& dir) {
  const std::filesystem::path config = dir / "config.json";
  // Limits that let one anonymous tenant hold every session and stream on all of them at once.
  std::ofstream(config) << json{{"default_tenant_limits",
                                 {{"max_sessions", 1 << 20}, {"max_concurrent_responses", 4096}}}}
                               .dump();
  int out[2];
  if (::pipe(out) != 0) std::exit(3);
  Server s;
  s.pid = ::fork();
  if (s.pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    std::vector<std::string> all = {a.binary,   "serve",       "--port", "0",
                                    "--model",  a.model,       "--config", config.string(),
                                    "--threads", std::to_string(a.threads), "--io-threads",
                                    std::to_string(a.io_threads), "--kv-cache-mb", "256"};
    std::vector<char*> argv;
    for (auto& x : all) argv.push_back(x.data());
    argv.push_back(nullptr);
    ::execv(a.binary.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  std::string text;
  char buf[256];
  while (text.find('\n') == std::string::npos) {
    const ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  const std::string prefix = "listening on ";
  if (!text.starts_with(prefix)) {
    std::fprintf(stderr, "server did not start: %s\n", text.c_str());
    std::exit(3);
  }
  s.port = std::stoi(text.substr(text.find(':', prefix.size()) + 1));
  s.stdout_fd = out[0];
  return s;
}

long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
  }
  return -1;
}

// CPU seconds (utime + stime) per thread group of `pid`, by thread name.
std::map<std::string, double> thread_cpu(pid_t pid) {
  std::map<std::string, double> cpu;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const std::filesystem::path tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& t : std::filesystem::directory_iterator(tasks, ec)) {
    std::ifstream stat(t.path() / "stat");
    std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const size_t open = s.find('(');
    const size_t close = s.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::string name = s.substr(open + 1, close - open - 1);
    if (name.starts_with("as-io-")) name = "as-io-*";
    // Unnamed threads carry the process name: the compute pool's workers and the main thread.
    if (name == "agentserve") name = "pool+main";
    std::istringstream rest(s.substr(close + 2));
    std::vector<std::string> f;
    for (std::string x; rest >> x && f.size() < 13;) f.push_back(x);
    if (f.size() < 13) continue;
    // After "(comm) ": state is field 3 (index 0 here); utime and stime are fields 14 and 15.
    cpu[name] += (std::stod(f[11]) + std::stod(f[12])) / tick;
  }
  return cpu;
}

std::string http_get(int port, const std::string& target) {
  net::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  http::write(socket, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return res.body();
}

// Cumulative bucket counts of a histogram in Prometheus text, summed over label sets, by upper bound.
std::map<double, double> histogram_buckets(const std::string& text, const std::string& name) {
  std::map<double, double> buckets;
  std::istringstream in(text);
  const std::string prefix = name + "_bucket{";
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with(prefix)) continue;
    const size_t le = line.find("le=\"");
    const size_t end = line.find('"', le + 4);
    const size_t space = line.rfind(' ');
    if (le == std::string::npos || end == std::string::npos || space == std::string::npos) continue;
    const std::string bound = line.substr(le + 4, end - le - 4);
    const double b = bound == "+Inf" ? 1e300 : std::stod(bound);
    buckets[b] += std::stod(line.substr(space + 1));
  }
  return buckets;
}

// The q-quantile of the observations between two scrapes, interpolated linearly inside its bucket.
double quantile(const std::map<double, double>& before, const std::map<double, double>& after, double q,
                double* count_out) {
  std::vector<std::pair<double, double>> cum;
  for (const auto& [b, c] : after) {
    auto it = before.find(b);
    cum.emplace_back(b, c - (it == before.end() ? 0 : it->second));
  }
  const double total = cum.empty() ? 0 : cum.back().second;
  *count_out = total;
  if (total <= 0) return -1;
  const double rank = q * total;
  double lo_bound = 0, lo_count = 0;
  for (const auto& [b, c] : cum) {
    if (c >= rank) {
      if (b >= 1e300) return lo_bound;
      return lo_bound + (b - lo_bound) * (rank - lo_count) / std::max(1e-12, c - lo_count);
    }
    lo_bound = b;
    lo_count = c;
  }
  return lo_bound;
}

using Ws = websocket::stream<tcp::socket>;

std::unique_ptr<Ws> connect_ws(net::io_context& ioc, int port) {
  auto ws = std::make_unique<Ws>(ioc);
  ws->next_layer().connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  ws->handshake("127.0.0.1", "/v1/ws");
  ws->text(true);
  return ws;
}

json read_until(Ws& ws, const std::string& type, int* deltas = nullptr) {
  for (;;) {
    beast::flat_buffer buffer;
    ws.read(buffer);
    json event = json::parse(beast::buffers_to_string(buffer.data()));
    if (deltas && event["type"] == "response.output_text.delta") ++*deltas;
    if (event["type"] == type) return event;
    if (event["type"] == "error") throw std::runtime_error(event.dump());
  }
}

json create_session(Ws& ws, int max_tokens) {
  ws.write(net::buffer(json{{"type", "session.create"},
                            {"session", {{"sampling", {{"temperature", 0}, {"max_tokens", max_tokens}}}}}}
                           .dump()));
  return read_until(ws, "session.created");
}

struct StreamStats {
  int64_t responses = 0;
  int64_t deltas = 0;
  int64_t completion_tokens = 0;
  std::string error;
};

void stream_client(int port, int max_tokens, Clock::time_point deadline, int index, StreamStats& stats) {
  try {
    net::io_context ioc;
    auto ws = connect_ws(ioc, port);
    create_session(*ws, max_tokens);
    for (int turn = 0; Clock::now() < deadline; ++turn) {
      // Each client its own text, so prompts differ and the engine batches distinct sequences.
      const std::string text = "Client " + std::to_string(index) + " turn " + std::to_string(turn) +
                               ": tell me about the number " + std::to_string(index * 131 + turn) + ".";
      ws->write(net::buffer(json{{"type", "conversation.item.create"},
                                 {"item", {{"type", "message"}, {"role", "user"}, {"content", text}}}}
                                .dump()));
      read_until(*ws, "conversation.item.created");
      ws->write(net::buffer(json{{"type", "response.create"}}.dump()));
      int deltas = 0;
      const json done = read_until(*ws, "response.done", &deltas);
      ++stats.responses;
      stats.deltas += deltas;
      stats.completion_tokens += done["response"]["usage"]["completion_tokens"].get<int64_t>();
    }
    ws->close(websocket::close_code::normal);
  } catch (const std::exception& e) {
    stats.error = e.what();
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
  // Each connection is a socket on both ends: the bench and the server (which inherits this limit).
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t need = static_cast<rlim_t>(args.idle + args.streams) + 256;
  if (lim.rlim_cur < need) {
    std::fprintf(stderr, "fd limit %llu is below the %llu this run needs\n",
                 static_cast<unsigned long long>(lim.rlim_cur), static_cast<unsigned long long>(need));
    return 2;
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("server_load_bench." + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  if (args.model.empty()) {
    args.model = (dir / "tiny").string();
    const std::string make = "'" + args.binary + "' make-model --preset tiny --seed 3 --out '" + args.model +
                             "' >/dev/null 2>&1";
    if (std::system(make.c_str()) != 0) {
      std::fprintf(stderr, "make-model failed (binary %s)\n", args.binary.c_str());
      return 3;
    }
  }
  const Server server = start_server(args, dir);
  std::printf("machine: %u hardware threads; server: --threads %d --io-threads %d, model %s\n",
              std::thread::hardware_concurrency(), args.threads, args.io_threads, args.model.c_str());

  // Warm up one session end to end, so the first-use allocations are not counted per idle session.
  net::io_context ioc;
  {
    auto ws = connect_ws(ioc, server.port);
    create_session(*ws, 4);
    ws->close(websocket::close_code::normal);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const long rss_before = rss_kib(server.pid);
  const auto idle_start = Clock::now();
  std::vector<std::unique_ptr<Ws>> idle;
  idle.reserve(static_cast<size_t>(args.idle));
  for (int i = 0; i < args.idle; ++i) {
    idle.push_back(connect_ws(ioc, server.port));
    create_session(*idle.back(), 16);
  }
  const double idle_open_s = std::chrono::duration<double>(Clock::now() - idle_start).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const long rss_after = rss_kib(server.pid);

  const std::string metrics_before = http_get(server.port, "/metrics");
  const auto cpu_before = thread_cpu(server.pid);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(args.seconds);
  std::vector<StreamStats> stats(static_cast<size_t>(args.streams));
  std::vector<std::thread> clients;
  for (int i = 0; i < args.streams; ++i)
    clients.emplace_back(stream_client, server.port, args.max_tokens, deadline, i, std::ref(stats[i]));
  for (auto& t : clients) t.join();
  const double window_s = std::chrono::duration<double>(Clock::now() - start).count();
  const auto cpu_after = thread_cpu(server.pid);
  const std::string metrics_after = http_get(server.port, "/metrics");
  const long rss_end = rss_kib(server.pid);

  StreamStats total;
  int failed = 0;
  for (const StreamStats& s : stats) {
    total.responses += s.responses;
    total.deltas += s.deltas;
    total.completion_tokens += s.completion_tokens;
    if (!s.error.empty()) {
      if (failed++ == 0) std::printf("stream client error: %s\n", s.error.c_str());
    }
  }

  std::printf("idle sessions: %d opened in %.2f s; server RSS %.1f -> %.1f MiB: %.1f KiB per idle session\n",
              args.idle, idle_open_s, rss_before / 1024.0, rss_after / 1024.0,
              static_cast<double>(rss_after - rss_before) / args.idle);
  std::printf("streaming: %d clients (%d failed) for %.1f s: %lld responses, %lld tokens (%.0f tokens/s), "
              "%lld delta frames; server RSS at end %.1f MiB\n",
              args.streams, failed, window_s, static_cast<long long>(total.responses),
              static_cast<long long>(total.completion_tokens), total.completion_tokens / window_s,
              static_cast<long long>(total.deltas), rss_end / 1024.0);
  const std::string hist = "agentserve_token_write_latency_seconds";
  const auto b0 = histogram_buckets(metrics_before, hist);
  const auto b1 = histogram_buckets(metrics_after, hist);
  double n = 0;
  const double p50 = quantile(b0, b1, 0.50, &n);
  const double p99 = quantile(b0, b1, 0.99, &n);
  if (n > 0) {
    std::printf("token write latency (engine -> frame written, server histogram, %.0f tokens): p50 %.3f ms, "
                "p99 %.3f ms\n",
                n, p50 * 1e3, p99 * 1e3);
  } else {
    std::printf("token write latency: the server observed none on this path (histogram %s unchanged)\n",
                hist.c_str());
  }
  double cpu_total = 0;
  std::map<std::string, double> used;
  for (const auto& [name, s] : cpu_after) {
    auto it = cpu_before.find(name);
    used[name] = s - (it == cpu_before.end() ? 0 : it->second);
    cpu_total += used[name];
  }
  std::printf("server CPU over the streaming window (%.1f s): %.2f CPU-s in all\n", window_s, cpu_total);
  for (const auto& [name, s] : used) {
    if (s <= 0) continue;
    std::printf("  %-16s %7.2f CPU-s  %5.1f%% of one core  %5.1f%% of the server's CPU\n", name.c_str(), s,
                100.0 * s / window_s, cpu_total > 0 ? 100.0 * s / cpu_total : 0.0);
  }

  for (auto& ws : idle) {
    beast::error_code ignored;
    ws->next_layer().close(ignored);
  }
  // A graceful stop must end with exit status 0 (a crash at shutdown shows here as a signal).
  const auto stop_start = Clock::now();
  ::kill(server.pid, SIGTERM);
  int status = 0;
  ::waitpid(server.pid, &status, 0);
  const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("server stopped in %.2f s: %s %d\n",
              std::chrono::duration<double>(Clock::now() - stop_start).count(), WIFEXITED(status) ? "exit status" : "killed by signal",
              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  std::filesystem::remove_all(dir);
  return failed == 0 && clean ? 0 : 1;
}
