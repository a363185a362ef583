// `agentserve verify-weights`: checks a model folder's files against its weight manifest
// (weights.sha256.json), or writes the manifest. Exit codes: 0 all files match (or the manifest was
// written), 1 a file is missing, changed or unlisted, 2 no usable manifest or folder.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "engine/weight_manifest.h"
#include "server/commands.h"

namespace agentserve::cli {
namespace {

constexpr int kMismatch = 1;
constexpr int kNoManifest = 2;
constexpr uint64_t kProgressFromBytes = 256ull << 20;  // hashing runs at about 1 GB/s

// "hashing model-00001-of-00016.safetensors:  42%" on stderr for big files: in place on a terminal,
// every 25% otherwise.
engine::FileHashProgress progress_printer() {
  auto last = std::make_shared<std::pair<std::string, int>>("", -100);
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  return [last, tty](const std::string& file, uint64_t done, uint64_t total) {
    if (total < kProgressFromBytes) return;
    const int percent = static_cast<int>(done * 100 / total);
    const int step = tty ? 1 : 25;
    if (last->first == file && percent / step == last->second / step && done != total) return;
    if (!tty && percent < step) return;  // a log gets 25%, 50%, 75%, 100%
    *last = {file, percent};
    std::fprintf(stderr, "%shashing %s: %3d%%%s", tty ? "\r" : "", file.c_str(), percent,
                 tty && done != total ? "" : "\n");
    std::fflush(stderr);
  };
}

int write_manifest_for(const std::string& dir) {
  auto manifest = engine::compute_manifest(dir, progress_printer());
  if (!manifest.ok()) {
    std::fprintf(stderr, "agentserve verify-weights: %s\n", manifest.status().to_string().c_str());
    return kNoManifest;
  }
  if (manifest->files.empty()) {
    std::fprintf(stderr, "agentserve verify-weights: %s holds no *.safetensors or config.json\n",
                 dir.c_str());
    return kNoManifest;
  }
  const Status written = engine::write_manifest(dir, *manifest);
  if (!written.ok()) {
    std::fprintf(stderr, "agentserve verify-weights: %s\n", written.to_string().c_str());
    return kNoManifest;
  }
  std::printf("wrote %s/%s: %zu files, fingerprint %s\n", dir.c_str(),
              std::string(engine::kManifestFileName).c_str(), manifest->files.size(),
              engine::manifest_digest(*manifest).c_str());
  return 0;
}

int verify(const std::string& dir) {
  auto report = engine::verify_weights(dir, progress_printer());
  if (!report.ok()) {
    std::fprintf(stderr, "agentserve verify-weights: %s\n", report.status().to_string().c_str());
    if (report.status().code() == StatusCode::kNotFound) {
      std::fprintf(stderr, "(write one with: agentserve verify-weights --model %s --write-manifest)\n",
                   dir.c_str());
    }
    return kNoManifest;
  }
  for (const std::string& file : report->verified) std::printf("ok    %s\n", file.c_str());
  for (const auto& problem : report->problems) {
    std::printf("FAIL  %s: %s\n", problem.file.c_str(), problem.problem.c_str());
  }
  if (!report->ok()) {
    std::fprintf(stderr, "agentserve verify-weights: %zu of %zu files failed in %s\n",
                 report->problems.size(), report->problems.size() + report->verified.size(), dir.c_str());
    return kMismatch;
  }
  auto fingerprint = engine::model_fingerprint(dir);
  std::printf("verified %zu files, fingerprint %s\n", report->verified.size(),
              fingerprint.ok() ? fingerprint->c_str() : "unavailable");
  return 0;
}

}  // namespace

void add_verify_weights_command(CLI::App& app, int& exit_code) {
  struct Options {
    std::string model;
    bool write_manifest = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("verify-weights",
                                 "Check every *.safetensors file and config.json against weights.sha256.json "
                                 "(exit 1 on a mismatch, 2 without a manifest)");
  cmd->add_option("--model", options->model, "Model folder")->required();
  cmd->add_flag("--write-manifest", options->write_manifest,
                "Hash the files and (re)write weights.sha256.json");
  cmd->callback([options, &exit_code] {
    exit_code = options->write_manifest ? write_manifest_for(options->model) : verify(options->model);
  });
}

}  // namespace agentserve::cli
