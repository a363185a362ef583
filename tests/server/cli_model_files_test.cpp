// make-model and verify-weights through the real binary, as a user or a script runs them.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>
#include "tests/scratch_dir.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Run {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

Run run(const std::string& args) {
  const std::string command = std::string(AGENTSERVE_BINARY) + " " + args + " 2>&1";
  Run r;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

fs::path fresh_dir(const std::string& name) {
  return agentserve::testing::scratch_dir("cli_model_files_test", name, /*create=*/false);
}

void flip_byte(const fs::path& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(offset);
  f.write(&c, 1);
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_CASE("make-model writes the tiny preset with tokenizer and manifest, and verify-weights passes it") {
  const fs::path dir = fresh_dir("tiny");
  const Run made = run("make-model --preset tiny --out " + dir.string() + " --seed 7");
  INFO(made.output);
  REQUIRE(made.exit_code == 0);
  CHECK(contains(made.output, "fingerprint "));
  for (const char* name : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                           "weights.sha256.json"}) {
    CHECK(fs::exists(dir / name));
  }
  const Run verified = run("verify-weights --model " + dir.string());
  INFO(verified.output);
  CHECK(verified.exit_code == 0);
  CHECK(contains(verified.output, "ok    model.safetensors"));
  CHECK(contains(verified.output, "verified 2 files"));
}

TEST_CASE("the same seed gives the same fingerprint through the CLI, another seed another one") {
  auto fingerprint_of = [](const std::string& args) {
    const Run r = run(args);
    REQUIRE(r.exit_code == 0);
    const auto pos = r.output.find("fingerprint ");
    REQUIRE(pos != std::string::npos);
    return r.output.substr(pos + 12, 64);
  };
  const std::string a = fingerprint_of("make-model --preset tiny --no-tokenizer --seed 1 --out " +
                                       fresh_dir("seed_a").string());
  const std::string b = fingerprint_of("make-model --preset tiny --no-tokenizer --seed 1 --out " +
                                       fresh_dir("seed_b").string());
  const std::string c = fingerprint_of("make-model --preset tiny --no-tokenizer --seed 2 --out " +
                                       fresh_dir("seed_c").string());
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE(
    "verify-weights names a shard with one flipped byte and exits 1; --write-manifest accepts it again") {
  const fs::path dir = fresh_dir("flip");
  REQUIRE(
      run("make-model --preset tiny --no-tokenizer --shards 3 --dtype f32 --out " + dir.string()).exit_code ==
      0);
  CHECK(fs::exists(dir / "model.safetensors.index.json"));
  const fs::path shard = dir / "model-00002-of-00003.safetensors";
  flip_byte(shard, static_cast<std::streamoff>(fs::file_size(shard) / 2));

  const Run bad = run("verify-weights --model " + dir.string());
  INFO(bad.output);
  CHECK(bad.exit_code == 1);
  CHECK(contains(bad.output, "FAIL  model-00002-of-00003.safetensors: SHA-256 differs"));
  CHECK(contains(bad.output, "ok    model-00001-of-00003.safetensors"));
  CHECK(contains(bad.output, "1 of 4 files failed"));

  const Run rewritten = run("verify-weights --model " + dir.string() + " --write-manifest");
  CHECK(rewritten.exit_code == 0);
  CHECK(run("verify-weights --model " + dir.string()).exit_code == 0);

  fs::remove(dir / "model-00003-of-00003.safetensors");
  const Run missing = run("verify-weights --model " + dir.string());
  CHECK(missing.exit_code == 1);
  CHECK(contains(missing.output, "FAIL  model-00003-of-00003.safetensors: missing"));
}

TEST_CASE("verify-weights without a manifest exits 2 and says how to write one") {
  const fs::path dir = fresh_dir("nomanifest");
  REQUIRE(run("make-model --preset tiny --no-tokenizer --out " + dir.string()).exit_code == 0);
  fs::remove(dir / "weights.sha256.json");
  const Run r = run("verify-weights --model " + dir.string());
  CHECK(r.exit_code == 2);
  CHECK(contains(r.output, "--write-manifest"));
}

TEST_CASE("make-model refuses a bad preset, a bad dtype and an occupied folder without --force") {
  CHECK(run("make-model --preset huge --out " + fresh_dir("huge").string()).exit_code != 0);
  CHECK(run("make-model --preset tiny --dtype f16 --out " + fresh_dir("f16").string()).exit_code != 0);
  CHECK(run("make-model --preset tiny --shards 0 --out " + fresh_dir("s0").string()).exit_code != 0);
  const fs::path dir = fresh_dir("occupied");
  REQUIRE(run("make-model --preset tiny --no-tokenizer --out " + dir.string()).exit_code == 0);
  const Run again = run("make-model --preset tiny --no-tokenizer --out " + dir.string());
  CHECK(again.exit_code == 1);
  CHECK(contains(again.output, "--force"));
  CHECK(run("make-model --preset tiny --no-tokenizer --force --seed 3 --out " + dir.string()).exit_code == 0);
  const Run missing_tokenizer =
      run("make-model --preset tiny --tokenizer-dir /nonexistent --out " + fresh_dir("notok").string());
  CHECK(missing_tokenizer.exit_code == 1);
  CHECK(contains(missing_tokenizer.output, "tokenizer"));
}

}  // namespace
