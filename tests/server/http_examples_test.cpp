// The example clients (examples/) run a whole session against the real server: create, two messages,
// a dropped connection mid-answer and a resume with last_seq; each exits 0 only if the streamed text adds up
// to the server's final text. The Python client needs python3-websockets (scripts/install-deps.sh).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "server_process.h"

namespace {

agentserve::testing::ServerProcess& server() {
  static agentserve::testing::ServerProcess process(/*config_json=*/"");
  return process;
}

// build/server/agentserve -> build/examples/agentserve_chat
std::filesystem::path chat_client() {
  return std::filesystem::path(AGENTSERVE_BINARY).parent_path().parent_path() / "examples" /
         "agentserve_chat";
}

// Two messages; the first answer's connection is dropped after 3 deltas and resumed.
constexpr const char* kSessionArgs =
    " --max-tokens 24 --drop-after 3 --message 'Hello there' --message 'And again' >/dev/null 2>&1";

}  // namespace

TEST_CASE("the C++ chat client runs a session, drops its connection mid-answer and resumes") {
  REQUIRE(std::filesystem::exists(chat_client()));
  std::string command = "'";
  command.append(chat_client().string()).append("' --port ").append(std::to_string(server().port()));
  command.append(kSessionArgs);
  CHECK(std::system(command.c_str()) == 0);
}

TEST_CASE("the Python client runs a session, drops its connection mid-answer and resumes") {
  // The Debian interpreter first (python3-websockets installs there), then whatever python3 is on PATH.
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"})
    if (python.empty() &&
        std::system((std::string(candidate) + " -c 'import websockets' >/dev/null 2>&1").c_str()) == 0)
      python = candidate;
  // scripts/install-deps.sh installs python3-websockets, so a missing module is a broken setup, not a skip.
  REQUIRE_MESSAGE(!python.empty(), "python3 cannot import websockets: run scripts/install-deps.sh "
                                   "(Debian package python3-websockets)");
  std::string command = python;
  command.append(" '" AGENTSERVE_SOURCE_DIR "/examples/python_client.py' --url ws://127.0.0.1:")
      .append(std::to_string(server().port()))
      .append("/v1/ws")
      .append(kSessionArgs);
  CHECK(std::system(command.c_str()) == 0);
}
