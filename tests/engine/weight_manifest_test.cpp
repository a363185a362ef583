#include "engine/weight_manifest.h"
#include "tests/scratch_dir.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "base/sha256.h"
#include "engine/model_generator.h"

namespace agentserve::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fresh_dir(const std::string& name) {
  return testing::scratch_dir("weight_manifest_test", name);
}

ModelConfig small_config() {
  ModelConfig c;
  c.model_type = "qwen3_moe";
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 8;
  c.vocab_size = 64;
  return c;
}

// A three-shard model with config.json and a manifest.
fs::path make_model(const std::string& name) {
  const fs::path dir = fresh_dir(name);
  GeneratorOptions options;
  options.config = small_config();
  options.shards = 3;
  REQUIRE(generate_model(dir, options).ok());
  return dir;
}

void flip_byte(const fs::path& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST_CASE("the manifest covers every shard and config.json, and records their SHA-256 and size") {
  const fs::path dir = make_model("covers");
  auto manifest = read_manifest(dir);
  REQUIRE(manifest.ok());
  std::vector<std::string> names;
  for (const auto& [name, entry] : manifest->files) names.push_back(name);
  CHECK(names == std::vector<std::string>{"config.json", "model-00001-of-00003.safetensors",
                                          "model-00002-of-00003.safetensors",
                                          "model-00003-of-00003.safetensors"});
  for (const auto& [name, entry] : manifest->files) {
    CHECK(entry.sha256 == *sha256_file(dir / name));
    CHECK(entry.bytes == fs::file_size(dir / name));
  }
  const json j = json::parse(read_text(dir / kManifestFileName));
  CHECK(j["version"] == 1);
  CHECK(j["files"]["config.json"]["bytes"] == fs::file_size(dir / "config.json"));
  auto computed = compute_manifest(dir);
  REQUIRE(computed.ok());
  CHECK(*computed == *manifest);
}

TEST_CASE("a clean folder verifies; one flipped byte in any shard is caught and named") {
  const fs::path dir = make_model("flip");
  auto report = verify_weights(dir);
  REQUIRE(report.ok());
  CHECK(report->ok());
  CHECK(report->verified.size() == 4);

  for (int s = 0; s < 3; ++s) {
    const std::string shard = shard_file_name(s, 3);
    CAPTURE(shard);
    const uint64_t size = fs::file_size(dir / shard);
    for (uint64_t offset : {uint64_t{3}, size / 2, size - 1}) {
      flip_byte(dir / shard, offset);
      auto bad = verify_weights(dir);
      REQUIRE(bad.ok());
      REQUIRE(bad->problems.size() == 1);
      CHECK(bad->problems[0].file == shard);
      CHECK(bad->problems[0].problem.find("SHA-256 differs") != std::string::npos);
      CHECK(bad->verified.size() == 3);
      flip_byte(dir / shard, offset);
    }
  }
  CHECK(verify_weights(dir)->ok());
}

TEST_CASE("missing, resized and unlisted files are reported by name") {
  const fs::path dir = make_model("files");
  fs::resize_file(dir / shard_file_name(1, 3), fs::file_size(dir / shard_file_name(1, 3)) - 1);
  fs::remove(dir / shard_file_name(2, 3));
  std::ofstream(dir / "extra.safetensors") << "x";
  auto report = verify_weights(dir);
  REQUIRE(report.ok());
  std::map<std::string, std::string> problems;
  for (const auto& p : report->problems) problems[p.file] = p.problem;
  CHECK(problems.size() == 3);
  CHECK(problems[shard_file_name(1, 3)].find("manifest says") != std::string::npos);
  CHECK(problems[shard_file_name(2, 3)] == "missing");
  CHECK(problems["extra.safetensors"] == "not in the manifest");
}

TEST_CASE("the digest ignores JSON formatting and changes with any file; the fingerprint uses it") {
  const fs::path dir = make_model("digest");
  auto manifest = read_manifest(dir);
  REQUIRE(manifest.ok());
  const std::string digest = manifest_digest(*manifest);
  CHECK(digest.size() == 64);

  // Same content, other formatting and key order.
  json reordered = json::parse(read_text(dir / kManifestFileName));
  std::ofstream(dir / kManifestFileName) << reordered.dump();
  CHECK(manifest_digest(*read_manifest(dir)) == digest);

  auto fingerprint = model_fingerprint(dir);
  REQUIRE(fingerprint.ok());
  CHECK(*fingerprint == digest);
  fs::remove(dir / kManifestFileName);
  auto computed = model_fingerprint(dir);
  REQUIRE(computed.ok());
  CHECK(*computed == digest);  // no manifest: hashed from the files, same value

  WeightManifest changed = *manifest;
  changed.files["config.json"].bytes += 1;
  CHECK(manifest_digest(changed) != digest);
  changed = *manifest;
  changed.files["model-00001-of-00003.safetensors"].sha256[0] ^= 1;
  CHECK(manifest_digest(changed) != digest);

  CHECK(model_fingerprint(fresh_dir("nothing")).status().code() == StatusCode::kNotFound);
}

TEST_CASE("a malformed manifest is Corruption; a folder without one is NotFound") {
  const std::string sha(64, 'a');
  const char* bad[] = {
      "{",
      "[]",
      R"({"version": 2, "files": {}})",
      R"({"files": {}})",
      R"({"version": 1, "files": []})",
      R"({"version": 1, "files": {"a.safetensors": {"sha256": "xyz", "bytes": 1}}})",
      R"({"version": 1, "files": {"a.safetensors": {"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "bytes": 1}}})",
      R"({"version": 1, "files": {"../a.safetensors": {"sha256": "SHA", "bytes": 1}}})",
      R"({"version": 1, "files": {"a.safetensors": {"sha256": "SHA", "bytes": -1}}})",
      R"({"version": 1, "files": {"a.safetensors": {"sha256": "SHA"}}})",
      R"({"version": 1, "files": {"a.safetensors": 5}})",
  };
  for (std::string text : bad) {
    if (auto pos = text.find("SHA"); pos != std::string::npos) text.replace(pos, 3, sha);
    INFO(text);
    auto manifest = parse_manifest(text);
    REQUIRE_FALSE(manifest.ok());
    CHECK(manifest.status().code() == StatusCode::kCorruption);
  }
  auto good = parse_manifest(R"({"version": 1, "files": {"a.safetensors": {"sha256": ")" + sha +
                             R"(", "bytes": 7}}})");
  REQUIRE(good.ok());
  CHECK(good->files.at("a.safetensors").bytes == 7);
  CHECK(*parse_manifest(manifest_to_json(*good)) == *good);

  const fs::path empty = fresh_dir("none");
  CHECK(verify_weights(empty).status().code() == StatusCode::kNotFound);
  std::ofstream(empty / kManifestFileName) << "{";
  CHECK(verify_weights(empty).status().code() == StatusCode::kCorruption);
  CHECK(model_fingerprint(empty).status().code() == StatusCode::kCorruption);
}

TEST_CASE("hashing reports progress per file") {
  const fs::path dir = make_model("progress");
  std::map<std::string, uint64_t> last;
  auto manifest = compute_manifest(dir, [&](const std::string& file, uint64_t done, uint64_t total) {
    CHECK(done <= total);
    last[file] = done;
  });
  REQUIRE(manifest.ok());
  REQUIRE(last.size() == manifest->files.size());
  for (const auto& [name, entry] : manifest->files) CHECK(last[name] == entry.bytes);
}

}  // namespace
}  // namespace agentserve::engine
