#include "engine/weight_manifest.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/sha256.h"

namespace agentserve::engine {
namespace {

using nlohmann::json;

constexpr int kManifestVersion = 1;
constexpr uint64_t kMaxManifestBytes = 16u << 20;

bool is_hex_digest(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Names a manifest may hold: a file directly inside the model folder.
bool is_plain_file_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::none_of(name.begin(), name.end(),
                      [](char c) { return c == '/' || c == '\\' || static_cast<unsigned char>(c) < 0x20; });
}

bool is_covered(const std::filesystem::path& name) {
  return name.extension() == ".safetensors" || name == "config.json";
}

}  // namespace

Result<std::vector<std::string>> manifest_file_names(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return Status::not_found(dir.string() + ": " + ec.message());
  std::vector<std::string> names;
  for (const auto& entry : it) {
    if (entry.is_regular_file(ec) && is_covered(entry.path().filename())) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

Result<WeightManifest> compute_manifest(const std::filesystem::path& dir, const FileHashProgress& progress) {
  AS_ASSIGN_OR_RETURN(std::vector<std::string> names, manifest_file_names(dir));
  WeightManifest manifest;
  for (const std::string& name : names) {
    HashProgress file_progress;
    if (progress) file_progress = [&](uint64_t done, uint64_t total) { progress(name, done, total); };
    AS_ASSIGN_OR_RETURN(std::string digest, sha256_file(dir / name, file_progress));
    std::error_code ec;
    const uint64_t bytes = std::filesystem::file_size(dir / name, ec);
    if (ec) return Status::io_error((dir / name).string() + ": " + ec.message());
    manifest.files[name] = {std::move(digest), bytes};
  }
  return manifest;
}

std::string manifest_to_json(const WeightManifest& manifest) {
  json files = json::object();
  for (const auto& [name, entry] : manifest.files)
    files[name] = {{"sha256", entry.sha256}, {"bytes", entry.bytes}};
  return json{{"version", kManifestVersion}, {"files", std::move(files)}}.dump(2) + "\n";
}

Result<WeightManifest> parse_manifest(std::string_view json_text) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  auto bad = [](const std::string& what) {
    return Status::corruption(std::string(kManifestFileName) + ": " + what);
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != kManifestVersion) {
    return bad("version must be " + std::to_string(kManifestVersion));
  }
  auto files = j.find("files");
  if (files == j.end() || !files->is_object()) return bad("files must be an object");
  WeightManifest manifest;
  for (const auto& [name, entry] : files->items()) {
    if (!is_plain_file_name(name)) return bad("\"" + name + "\" is not a file name inside the model folder");
    if (!entry.is_object()) return bad("entry \"" + name + "\" is not an object");
    auto sha = entry.find("sha256");
    auto bytes = entry.find("bytes");
    if (sha == entry.end() || !sha->is_string() || !is_hex_digest(sha->get<std::string>())) {
      return bad("entry \"" + name + "\" needs sha256 as 64 lowercase hex characters");
    }
    if (bytes == entry.end() || !bytes->is_number_unsigned()) {
      return bad("entry \"" + name + "\" needs bytes as a non-negative integer");
    }
    manifest.files[name] = {sha->get<std::string>(), bytes->get<uint64_t>()};
  }
  return manifest;
}

Status write_manifest(const std::filesystem::path& dir, const WeightManifest& manifest) {
  const std::filesystem::path path = dir / kManifestFileName;
  const std::filesystem::path tmp = dir / (std::string(kManifestFileName) + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << manifest_to_json(manifest);
    out.close();
    if (!out) return Status::io_error(tmp.string() + ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Status::io_error(path.string() + ": " + ec.message());
  return Status();
}

Result<WeightManifest> read_manifest(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / kManifestFileName;
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return Status::not_found(path.string() + ": no weight manifest");
  if (size > kMaxManifestBytes) return Status::corruption(path.string() + ": too large for a manifest");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io_error(path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  auto manifest = parse_manifest(text.str());
  if (!manifest.ok())
    return Status(manifest.status().code(), dir.string() + "/" + manifest.status().message());
  return manifest;
}

std::string manifest_digest(const WeightManifest& manifest) {
  // Names cannot hold control characters (parse_manifest), so newline-separated fields are unambiguous.
  Sha256 hasher;
  hasher.update("agentserve weight manifest v1\n");
  for (const auto& [name, entry] : manifest.files) {
    hasher.update(name + "\n" + entry.sha256 + "\n" + std::to_string(entry.bytes) + "\n");
  }
  return hasher.finish_hex();
}

Result<VerifyReport> verify_weights(const std::filesystem::path& dir, const FileHashProgress& progress) {
  AS_ASSIGN_OR_RETURN(WeightManifest manifest, read_manifest(dir));
  VerifyReport report;
  for (const auto& [name, entry] : manifest.files) {
    const std::filesystem::path path = dir / name;
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) {
      report.problems.push_back({name, "missing"});
      continue;
    }
    if (size != entry.bytes) {
      report.problems.push_back(
          {name, "size " + std::to_string(size) + " bytes, manifest says " + std::to_string(entry.bytes)});
      continue;
    }
    HashProgress file_progress;
    if (progress) file_progress = [&](uint64_t done, uint64_t total) { progress(name, done, total); };
    auto digest = sha256_file(path, file_progress);
    if (!digest.ok()) {
      report.problems.push_back({name, digest.status().message()});
    } else if (*digest != entry.sha256) {
      report.problems.push_back({name, "SHA-256 differs: " + *digest + ", manifest says " + entry.sha256});
    } else {
      report.verified.push_back(name);
    }
  }
  AS_ASSIGN_OR_RETURN(std::vector<std::string> present, manifest_file_names(dir));
  for (const std::string& name : present) {
    if (!manifest.files.contains(name)) report.problems.push_back({name, "not in the manifest"});
  }
  return report;
}

Result<std::string> model_fingerprint(const std::filesystem::path& dir) {
  auto manifest = read_manifest(dir);
  if (manifest.ok()) return manifest_digest(*manifest);
  if (manifest.status().code() != StatusCode::kNotFound) return manifest.status();
  AS_ASSIGN_OR_RETURN(WeightManifest computed, compute_manifest(dir));
  if (computed.files.empty()) return Status::not_found(dir.string() + ": no model files to fingerprint");
  return manifest_digest(computed);
}

}  // namespace agentserve::engine
