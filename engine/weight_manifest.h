// Weight integrity: a manifest (DIR/weights.sha256.json) of the SHA-256 and size of every file that
// decides what a model computes (each *.safetensors file, and config.json), the check of a folder against
// it, and the model fingerprint derived from it. Format:
//   {"version": 1, "files": {"model.safetensors": {"sha256": "<64 hex>", "bytes": 123}, ...}}
// The fingerprint salts prefix-cache keys (KV must never cross models), so it covers config.json too: the
// same weights with another rope scaling give other KV. Files are streamed, never read whole. A manifest
// is file input: a malformed one is a Corruption error, never a crash.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::engine {

inline constexpr std::string_view kManifestFileName = "weights.sha256.json";

struct ManifestEntry {
  std::string sha256;  // 64 lowercase hex characters
  uint64_t bytes = 0;
  bool operator==(const ManifestEntry&) const = default;
};

struct WeightManifest {
  std::map<std::string, ManifestEntry> files;  // file name (no folders) -> hash and size
  bool operator==(const WeightManifest&) const = default;
};

// Called while a file is hashed: its name, bytes hashed so far, its size.
using FileHashProgress = std::function<void(const std::string& file, uint64_t done, uint64_t total)>;

// The files a manifest of `dir` covers: every *.safetensors, and config.json when present; sorted.
Result<std::vector<std::string>> manifest_file_names(const std::filesystem::path& dir);
// Hashes those files.
Result<WeightManifest> compute_manifest(const std::filesystem::path& dir,
                                        const FileHashProgress& progress = {});

std::string manifest_to_json(const WeightManifest& manifest);
Result<WeightManifest> parse_manifest(std::string_view json_text);
Status write_manifest(const std::filesystem::path& dir, const WeightManifest& manifest);
// NotFound when dir has no manifest; Corruption when it is malformed.
Result<WeightManifest> read_manifest(const std::filesystem::path& dir);

// SHA-256 (hex) over a canonical text of the manifest (sorted names, hashes and sizes), independent of the
// JSON's formatting.
std::string manifest_digest(const WeightManifest& manifest);

struct FileProblem {
  std::string file;
  std::string problem;  // "missing", "size 10 bytes, manifest says 12", "SHA-256 differs", ...
};

struct VerifyReport {
  std::vector<std::string> verified;  // files whose hash matched
  std::vector<FileProblem> problems;
  bool ok() const { return problems.empty(); }
};

// Checks every file of dir's manifest (size first, then hash), and that no covered file is missing from
// the manifest. A non-OK status only when there is no readable manifest; mismatches are in the report.
Result<VerifyReport> verify_weights(const std::filesystem::path& dir, const FileHashProgress& progress = {});

// The model's identity for cache keys: manifest_digest of dir's manifest when it exists (no hashing at
// startup), else of a manifest computed from the files. Both give the same value for the same files.
Result<std::string> model_fingerprint(const std::filesystem::path& dir);

}  // namespace agentserve::engine
