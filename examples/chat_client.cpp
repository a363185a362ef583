// agentserve_chat: a command-line chat over agentserve's WebSocket protocol (docs/protocol.md), with
// resume. Each stdin line (or each --message) is sent as a user message and the answer is streamed as it
// arrives. With --drop-after N the client closes its connection after N text deltas of the first answer,
// reconnects, sends session.resume with the last seq it saw and receives the rest: the printed text must
// equal the server's response.output_text.done text, or it exits with status 1.
//
//   agentserve_chat --port 8080 [--api-key KEY] [--max-tokens N] [--drop-after N] [--message TEXT]...
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace net = boost::asio;
using nlohmann::json;

namespace {

struct Args {
  int port = 8080;
  std::string api_key;
  int max_tokens = 256;
  int drop_after = 0;
  std::vector<std::string> messages;
};

class Chat {
 public:
  explicit Chat(Args args) : args_(std::move(args)) {}

  void open() {
    connect();
    send({{"type", "session.create"},
          {"session",
           {{"agent_id", "cpp-client"},
            {"sampling", {{"temperature", 0}, {"max_tokens", args_.max_tokens}}}}}});
    session_id_ = read_until("session.created")["session"]["id"];
    std::cerr << "[session " << session_id_ << "]\n";
  }

  // Sends one user message and streams the answer; false when the answer failed or the resumed stream
  // did not add up to the final text.
  bool ask(const std::string& text, int drop_after) {
    send({{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", text}}}});
    send({{"type", "response.create"}});
    std::string streamed;
    std::optional<std::string> final_text;
    int deltas = 0;
    for (;;) {
      const json event = read();
      const std::string type = event["type"];
      if (type == "response.output_text.delta") {
        streamed += event["delta"].get<std::string>();
        std::cout << event["delta"].get<std::string>() << std::flush;
        if (drop_after > 0 && ++deltas == drop_after) resume();
      } else if (type == "response.output_text.done") {
        final_text = event["text"].get<std::string>();
      } else if (type == "response.done") {
        std::cout << "\n";
        const std::string status = event["response"]["status"];
        std::cerr << "[" << status << ": " << event["response"].value("usage", json::object()).dump()
                  << "]\n";
        if (final_text && *final_text != streamed) {
          std::cerr << "[error: the streamed text differs from response.output_text.done]\n";
          return false;
        }
        return status == "completed" || status == "incomplete";
      }
    }
  }

  void close() {
    beast::error_code ignored;
    ws_->close(websocket::close_code::normal, ignored);
  }

 private:
  void connect() {
    ws_.emplace(ioc_);
    ws_->next_layer().connect({net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(args_.port)});
    const std::string key = args_.api_key;
    ws_->set_option(websocket::stream_base::decorator([key](websocket::request_type& req) {
      if (!key.empty()) req.set(beast::http::field::authorization, "Bearer " + key);
    }));
    ws_->handshake("127.0.0.1", "/v1/ws");
    ws_->text(true);
  }

  void resume() {
    close();
    connect();
    // The missed events are replayed before session.resumed arrives; ask() reads them like live ones.
    send({{"type", "session.resume"}, {"session_id", session_id_}, {"last_seq", last_seq_}});
    std::cerr << "\n[resuming after seq " << last_seq_ << "]\n";
  }

  void send(const json& event) { ws_->write(net::buffer(event.dump())); }

  json read() {
    beast::flat_buffer buffer;
    ws_->read(buffer);
    json event = json::parse(beast::buffers_to_string(buffer.data()));
    if (event["type"] == "error") throw std::runtime_error("server error: " + event["error"].dump());
    if (event.contains("seq") && event.value("session_id", session_id_) == session_id_)
      last_seq_ = std::max(last_seq_, event["seq"].get<uint64_t>());
    return event;
  }

  json read_until(const std::string& type) {
    for (;;) {
      json event = read();
      if (event["type"] == type) return event;
    }
  }

  Args args_;
  net::io_context ioc_;
  std::optional<websocket::stream<net::ip::tcp::socket>> ws_;
  std::string session_id_;
  uint64_t last_seq_ = 0;
};

bool parse_args(int argc, char** argv, Args& args) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return false;
    const std::string value = argv[++i];
    if (flag == "--port")
      args.port = std::stoi(value);
    else if (flag == "--api-key")
      args.api_key = value;
    else if (flag == "--max-tokens")
      args.max_tokens = std::stoi(value);
    else if (flag == "--drop-after")
      args.drop_after = std::stoi(value);
    else if (flag == "--message")
      args.messages.push_back(value);
    else
      return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    if (!parse_args(argc, argv, args)) {
      std::cerr << "usage: agentserve_chat --port P [--api-key K] [--max-tokens N] [--drop-after N] "
                   "[--message TEXT]...\n";
      return 2;
    }
    std::vector<std::string> lines = args.messages;
    if (lines.empty())
      for (std::string line; std::getline(std::cin, line);) lines.push_back(line);
    Chat chat(args);
    chat.open();
    bool ok = true;
    int drop_after = args.drop_after;
    for (const std::string& line : lines) {
      if (line.empty()) continue;
      ok = chat.ask(line, drop_after) && ok;
      drop_after = 0;
    }
    chat.close();
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "agentserve_chat: " << e.what() << "\n";
    return 1;
  }
}
