// examples/moderation_service.py (or another script speaking its protocol) as a child process on a loopback
// port it picks and announces in its first stdout line, "PORT n". Shared by the moderation tests and the
// moderation benchmark, so it holds no test assertions: it never aborts, ok() says whether the service came
// up. The child is terminated and reaped when the object goes.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace agentserve::agent::testing {

class ModerationServiceProcess {
 public:
  ModerationServiceProcess(const std::string& script, std::vector<std::string> args) {
    int fds[2];
    if (pipe(fds) != 0) return;
    args.insert(args.begin(), {"/usr/bin/python3", script});
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    if (pid_ < 0) {
      close(fds[0]);
      return;
    }
    FILE* out = fdopen(fds[0], "r");
    char line[64] = {};
    if (fgets(line, sizeof(line), out) == nullptr || sscanf(line, "PORT %d", &port_) != 1) port_ = 0;
    fclose(out);
  }
  ~ModerationServiceProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  ModerationServiceProcess(const ModerationServiceProcess&) = delete;
  ModerationServiceProcess& operator=(const ModerationServiceProcess&) = delete;

  bool ok() const { return port_ > 0; }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1/moderations"; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace agentserve::agent::testing
