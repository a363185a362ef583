// This test binary re-run as a child process, for tests that kill a process mid-work (kill -9) and then
// check what it left behind: the child runs only the test cases matching a name (skipped ones included), with
// extra environment variables, its stdout piped back to the parent. It signals only the child it started.
#pragma once

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

extern char** environ;

namespace agentserve::testing {

struct SelfChild {
  pid_t pid = -1;
  int out = -1;  // the read end of the child's stdout; the caller closes it
};

// Starts this binary with `--test-case=<test_case> --no-skip` and `env_assignments` ("NAME=value") added to
// this process's environment.
inline SelfChild spawn_self(std::vector<std::string> env_assignments, const std::string& test_case) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  for (std::string& a : env_assignments) envp.push_back(a.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string filter = "--test-case=" + test_case;
  std::string no_skip = "--no-skip";
  char* argv[] = {self.data(), filter.data(), no_skip.data(), nullptr};
  SelfChild child;
  REQUIRE(::posix_spawn(&child.pid, self.c_str(), &actions, nullptr, argv, envp.data()) == 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  child.out = fds[0];
  return child;
}

// Appends to `into` what the child prints until `stop(into)`, EOF, or `ms` passes (no time limit when
// ms < 0).
template <typename Stop>
void read_child_until(int fd, int ms, std::string& into, Stop stop) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  char buf[4096];
  while (!stop(into)) {
    int wait = -1;
    if (ms >= 0) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return;
      wait = static_cast<int>(left.count());
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, wait) <= 0) return;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return;
    into.append(buf, static_cast<size_t>(n));
  }
}

// What the child prints within `ms` (until EOF when ms < 0).
inline void read_child_for(int fd, int ms, std::string& into) {
  read_child_until(fd, ms, into, [](const std::string&) { return false; });
}

// Until the child has printed a whole line (or EOF, or `ms` passes).
inline void read_child_line(int fd, int ms, std::string& into) {
  read_child_until(fd, ms, into, [](const std::string& s) { return s.find('\n') != std::string::npos; });
}

// SIGKILL, then the wait status once it is reaped.
inline int kill_and_reap(const SelfChild& child) {
  ::kill(child.pid, SIGKILL);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  return status;
}

}  // namespace agentserve::testing
