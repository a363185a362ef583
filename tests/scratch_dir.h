// Scratch folders for tests: each test binary gets its own root under the system temp folder (named after
// the binary and the process id, removed at exit), so concurrent runs never share files.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace agentserve::testing {

// An empty folder `name` under the process's scratch root; created unless `create` is false (for tests
// that want a path that does not exist yet).
inline std::filesystem::path scratch_dir(const std::string& binary, const std::string& name,
                                         bool create = true) {
  struct Root {
    std::filesystem::path path;
    ~Root() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Root root{std::filesystem::temp_directory_path() /
                         ("agentserve_" + binary + "_" + std::to_string(::getpid()))};
  const std::filesystem::path dir = root.path / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(create ? dir : root.path);
  return dir;
}

}  // namespace agentserve::testing
