#include "engine/safetensors.h"
#include "tests/scratch_dir.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "base/bf16.h"

namespace agentserve::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(AGENTSERVE_SOURCE_DIR) / "tests/engine/data/safetensors";

fs::path fresh_dir(const std::string& name) {
  return testing::scratch_dir("safetensors_test", name);
}

std::vector<std::byte> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  if (!chars.empty()) std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

void write_bytes(const fs::path& path, std::span<const std::byte> bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors image from header text, a declared header length, and `data_bytes` bytes of data.
std::vector<std::byte> image(const std::string& header, size_t data_bytes, uint64_t declared_len) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0x5a});
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>(declared_len >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}
std::vector<std::byte> image(const std::string& header, size_t data_bytes) {
  return image(header, data_bytes, header.size());
}

Status parse_status(const std::vector<std::byte>& bytes) {
  return parse_safetensors(bytes).status();
}

void check_corrupt(const std::vector<std::byte>& bytes, const std::string& expected_words) {
  const Status s = parse_status(bytes);
  INFO(s.to_string());
  REQUIRE_FALSE(s.ok());
  CHECK(s.code() == StatusCode::kCorruption);
  CHECK(s.message().find(expected_words) != std::string::npos);
}

// memcmp, which must not see a null pointer even for zero bytes (empty tensors have none).
bool same_bytes(const void* a, const void* b, size_t n) {
  return n == 0 || std::memcmp(a, b, n) == 0;
}

std::vector<float> floats(const TensorView& view) {
  auto v = to_float_vector(view);
  REQUIRE(v.ok());
  return *v;
}

TEST_CASE("dtype names and sizes follow the safetensors spelling") {
  CHECK(dtype_from_name("BF16") == DType::kBF16);
  CHECK(dtype_from_name("F32") == DType::kF32);
  CHECK(dtype_from_name("I64") == DType::kI64);
  CHECK_FALSE(dtype_from_name("bf16").has_value());
  CHECK_FALSE(dtype_from_name("F8_E4M3").has_value());
  CHECK(dtype_size(DType::kBF16) == 2);
  CHECK(dtype_size(DType::kF64) == 8);
  CHECK(dtype_name(DType::kI32) == "I32");
}

TEST_CASE("a Python-written F32 file with an unpadded header and shuffled data order reads back exactly") {
  auto file = SafetensorsFile::open(kFixtures / "single_f32.safetensors");
  REQUIRE(file.ok());
  CHECK(file->tensors().size() == 4);
  CHECK(file->metadata().at("format") == "pt");
  CHECK(file->metadata().at("producer") == "make_safetensors_fixtures.py");

  const TensorView* a = file->find("a");
  REQUIRE(a != nullptr);
  CHECK(a->dtype == DType::kF32);
  CHECK(a->shape == std::vector<int64_t>{2, 3});
  CHECK(a->nbytes == 24);
  const auto av = floats(*a);
  for (int i = 0; i < 6; ++i) CHECK(av[i] == 0.5f * i - 1);

  const auto bv = floats(*file->find("b"));
  CHECK(bv == std::vector<float>{0, 1, 4, 9});

  const TensorView* scalar = file->find("scalar");
  REQUIRE(scalar != nullptr);
  CHECK(scalar->shape.empty());
  CHECK(scalar->numel() == 1);
  CHECK(scalar->float_at(0) == 3.25f);

  const TensorView* ids = file->find("ids");
  REQUIRE(ids != nullptr);
  CHECK(ids->dtype == DType::kI32);
  CHECK(ids->float_at(1) == -2.0f);
  auto not_float = to_float_vector(*ids);
  REQUIRE_FALSE(not_float.ok());
  CHECK(not_float.status().code() == StatusCode::kInvalidArgument);
  CHECK(file->find("missing") == nullptr);
}

TEST_CASE("a Python-written BF16 file with a padded header reads back exactly") {
  auto file = SafetensorsFile::open(kFixtures / "single_bf16.safetensors");
  REQUIRE(file.ok());
  const TensorView* w = file->find("w");
  REQUIRE(w != nullptr);
  CHECK(w->dtype == DType::kBF16);
  CHECK(w->shape == std::vector<int64_t>{3, 4});
  const auto wv = floats(*w);
  for (int i = 0; i < 12; ++i) CHECK(wv[i] == 0.25f * i - 1);
  CHECK(floats(*file->find("norm")) == std::vector<float>{1.0f, 1.5f, -2.0f, 0.125f});
}

TEST_CASE("a Python-written sharded checkpoint opens through its index") {
  auto checkpoint = Checkpoint::open(kFixtures / "sharded");
  REQUIRE(checkpoint.ok());
  CHECK(checkpoint->files().size() == 2);
  CHECK(checkpoint->tensor_count() == 3);
  CHECK(checkpoint->tensor_names() ==
        std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"});
  auto embed = checkpoint->tensor("model.embed_tokens.weight");
  REQUIRE(embed.ok());
  const auto ev = floats(*embed);
  for (int i = 0; i < 8; ++i) CHECK(ev[i] == static_cast<float>(i - 3));
  const auto lv = floats(*checkpoint->tensor("lm_head.weight"));
  for (int i = 0; i < 8; ++i) CHECK(lv[i] == 0.5f * i);
  CHECK(floats(*checkpoint->tensor("model.norm.weight")) == std::vector<float>{1.0f, 2.0f});

  auto missing = checkpoint->tensor("model.layers.0.mlp.gate.weight");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("model.layers.0.mlp.gate.weight") != std::string::npos);
}

TEST_CASE("copy_to_float converts BF16, F16 and F32 and checks the output length") {
  const uint16_t halves[] = {float_to_f16(1.5f), float_to_f16(-0.25f), float_to_f16(65504.0f)};
  TensorView v{"h", DType::kF16, {3}, reinterpret_cast<const std::byte*>(halves), sizeof halves};
  std::vector<float> out(3);
  REQUIRE(copy_to_float(v, out).ok());
  CHECK(out == std::vector<float>{1.5f, -0.25f, 65504.0f});
  std::vector<float> short_out(2);
  CHECK(copy_to_float(v, short_out).code() == StatusCode::kInvalidArgument);
}

struct Generated {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<std::byte>> bytes;
  std::vector<TensorData> data() const {
    std::vector<TensorData> out;
    for (size_t i = 0; i < specs.size(); ++i) out.push_back({specs[i], bytes[i]});
    return out;
  }
};

// Tensors of every writable dtype with odd shapes, a scalar and an empty tensor, filled with random bytes.
Generated random_tensors(uint32_t seed) {
  std::mt19937 rng(seed);
  const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kF16, DType::kI32,
                          DType::kU8,   DType::kI64, DType::kF64};
  const std::vector<int64_t> shapes[] = {{1}, {3}, {17}, {3, 5}, {1, 4097}, {2, 3, 7}, {}, {0, 4}};
  Generated g;
  int i = 0;
  for (const auto& shape : shapes) {
    for (int k = 0; k < 2; ++k) {
      std::string name = "t";  // built by appends: GCC 12 warns falsely (-Wrestrict) on "t" + std::string
      name += std::to_string(i++);
      name += ".weight";
      TensorSpec spec{name, dtypes[rng() % std::size(dtypes)], shape};
      std::vector<std::byte> b(spec.nbytes());
      for (auto& x : b) x = static_cast<std::byte>(rng());
      g.specs.push_back(spec);
      g.bytes.push_back(std::move(b));
    }
  }
  return g;
}

TEST_CASE("written files round-trip byte for byte, aligned, with a padded header") {
  const fs::path dir = fresh_dir("roundtrip");
  const Generated g = random_tensors(1);
  const auto data = g.data();
  REQUIRE(write_safetensors(dir / "x.safetensors", data, {{"format", "pt"}}).ok());
  CHECK_FALSE(fs::exists(dir / "x.safetensors.tmp"));

  auto file = SafetensorsFile::open(dir / "x.safetensors");
  REQUIRE(file.ok());
  CHECK(file->metadata().at("format") == "pt");
  REQUIRE(file->tensors().size() == g.specs.size());
  const auto raw = read_bytes(dir / "x.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  CHECK(header_len % 8 == 0);
  CHECK(static_cast<char>(raw[8]) == '{');
  for (size_t i = 0; i < g.specs.size(); ++i) {
    CAPTURE(i);
    const TensorView* v = file->find(g.specs[i].name);
    REQUIRE(v != nullptr);
    CHECK(v->dtype == g.specs[i].dtype);
    CHECK(v->shape == g.specs[i].shape);
    REQUIRE(v->nbytes == g.bytes[i].size());
    CHECK(same_bytes(v->data, g.bytes[i].data(), v->nbytes));
    CHECK(reinterpret_cast<uintptr_t>(v->data) % dtype_size(v->dtype) == 0);
  }
}

TEST_CASE("a sharded checkpoint holds the same tensors and bytes as a single file, and its index is exact") {
  const Generated g = random_tensors(2);
  const auto data = g.data();
  const fs::path single = fresh_dir("single");
  const fs::path sharded = fresh_dir("sharded");
  REQUIRE(write_checkpoint(single, data, 1).ok());
  REQUIRE(write_checkpoint(sharded, data, 3).ok());
  for (int s = 0; s < 3; ++s) CHECK(fs::exists(sharded / shard_file_name(s, 3)));
  CHECK(shard_file_name(0, 3) == "model-00001-of-00003.safetensors");

  auto a = Checkpoint::open(single);
  auto b = Checkpoint::open(sharded);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->files().size() == 1);
  CHECK(b->files().size() == 3);
  REQUIRE(a->tensor_names() == b->tensor_names());
  for (const std::string& name : a->tensor_names()) {
    const TensorView* x = a->find(name);
    const TensorView* y = b->find(name);
    REQUIRE(x->nbytes == y->nbytes);
    CHECK(same_bytes(x->data, y->data, x->nbytes));
  }

  std::ifstream in(sharded / kIndexFileName);
  const json index = json::parse(in);
  uint64_t total = 0;
  for (const TensorSpec& s : g.specs) total += s.nbytes();
  CHECK(index["metadata"]["total_size"] == total);
  CHECK(index["weight_map"].size() == g.specs.size());
  for (const auto& [name, file] : index["weight_map"].items()) {
    auto shard = SafetensorsFile::open(sharded / file.get<std::string>());
    REQUIRE(shard.ok());
    CHECK(shard->find(name) != nullptr);
  }

  // Rewriting the folder as one file removes the index, so the folder has one meaning.
  REQUIRE(write_checkpoint(sharded, data, 1).ok());
  CHECK_FALSE(fs::exists(sharded / kIndexFileName));
}

TEST_CASE("split_into_shards keeps order, balances bytes and never leaves a shard empty") {
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 10; ++i) {
    std::string name = "t";
    name += std::to_string(i);
    specs.push_back({name, DType::kF32, {i == 0 ? 1000 : 10}});
  }
  for (int count = 1; count <= 10; ++count) {
    CAPTURE(count);
    auto shards = split_into_shards(specs, count);
    REQUIRE(shards.ok());
    REQUIRE(shards->size() == static_cast<size_t>(count));
    std::vector<std::string> names;
    for (const auto& shard : *shards) {
      CHECK_FALSE(shard.empty());
      for (const auto& t : shard) names.push_back(t.name);
    }
    REQUIRE(names.size() == specs.size());
    for (size_t i = 0; i < specs.size(); ++i) CHECK(names[i] == specs[i].name);
  }
  std::vector<TensorSpec> even(12, TensorSpec{"x", DType::kBF16, {64}});
  auto balanced = split_into_shards(even, 4);
  REQUIRE(balanced.ok());
  for (const auto& shard : *balanced) CHECK(shard.size() == 3);
  CHECK(split_into_shards(specs, 11).status().code() == StatusCode::kInvalidArgument);
  CHECK(split_into_shards(specs, 0).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("the writer takes a tensor in pieces and refuses too many, too few, unknown or duplicate tensors") {
  const fs::path dir = fresh_dir("writer");
  const std::vector<std::byte> bytes(12, std::byte{7});
  {
    auto w = SafetensorsWriter::create(dir / "a.safetensors", {{"x", DType::kF32, {3}}});
    REQUIRE(w.ok());
    CHECK(w->append("x", std::span(bytes).first(5)).ok());
    CHECK(w->append("x", std::span(bytes).subspan(5)).ok());
    CHECK(w->append("x", std::span(bytes).first(1)).code() == StatusCode::kInvalidArgument);
    CHECK(w->append("y", bytes).code() == StatusCode::kInvalidArgument);
    REQUIRE(w->finish().ok());
    CHECK(w->finish().code() == StatusCode::kFailedPrecondition);
  }
  auto file = SafetensorsFile::open(dir / "a.safetensors");
  REQUIRE(file.ok());
  CHECK(std::memcmp(file->find("x")->data, bytes.data(), 12) == 0);
  {
    auto w = SafetensorsWriter::create(dir / "b.safetensors", {{"x", DType::kF32, {3}}});
    REQUIRE(w.ok());
    REQUIRE(w->append("x", std::span(bytes).first(4)).ok());
    const Status s = w->finish();
    CHECK(s.code() == StatusCode::kFailedPrecondition);
    CHECK(s.message().find("\"x\" has 4 of its 12 bytes") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(dir / "b.safetensors"));
  CHECK_FALSE(fs::exists(dir / "b.safetensors.tmp"));  // an unfinished writer cleans up
  auto dup =
      SafetensorsWriter::create(dir / "c.safetensors", {{"x", DType::kF32, {1}}, {"x", DType::kF32, {1}}});
  CHECK(dup.status().code() == StatusCode::kInvalidArgument);
  auto meta = SafetensorsWriter::create(dir / "c.safetensors", {{"__metadata__", DType::kF32, {1}}});
  CHECK(meta.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("malformed headers are Corruption errors that say what is wrong") {
  const std::string two = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)";
  SUBCASE("shorter than the length field") {
    check_corrupt(std::vector<std::byte>(5), "too short");
  }
  SUBCASE("header length pointing past the end") {
    check_corrupt(image(R"({})", 0, 1000), "runs past the end");
  }
  SUBCASE("huge header length") {
    check_corrupt(image(R"({})", 0, uint64_t{1} << 62), "exceeds the limit");
  }
  SUBCASE("bad JSON") {
    check_corrupt(image(R"({"a": {"dtype": )", 0), "not valid JSON");
  }
  SUBCASE("not an object") {
    check_corrupt(image("[1, 2]", 0), "not a JSON object");
  }
  SUBCASE("overlapping tensors") {
    check_corrupt(image(two + R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlap");
  }
  SUBCASE("a hole between tensors") {
    check_corrupt(image(two + R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16),
                  "belong to no tensor");
  }
  SUBCASE("bytes after the last tensor") {
    check_corrupt(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 9),
                  "belong to no tensor");
  }
  SUBCASE("offsets past the data") {
    check_corrupt(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                  "past the data section");
  }
  SUBCASE("shape and byte length disagree") {
    check_corrupt(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12");
  }
  SUBCASE("begin after end") {
    check_corrupt(image(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8),
                  "end before they begin");
  }
  SUBCASE("unknown dtype") {
    check_corrupt(image(R"({"a":{"dtype":"F8_E9M9","shape":[1],"data_offsets":[0,1]}})", 1), "unknown dtype");
  }
  SUBCASE("negative offset") {
    check_corrupt(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", 1), "non-negative");
  }
  SUBCASE("offsets not a pair") {
    check_corrupt(image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1), "data_offsets");
  }
  SUBCASE("negative dimension") {
    check_corrupt(image(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1), "shape");
  }
  SUBCASE("shape whose element count overflows") {
    check_corrupt(image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
                  "too large");
  }
  SUBCASE("metadata that is not string to string") {
    check_corrupt(image(R"({"__metadata__":{"n":1}})", 0), "__metadata__");
  }
  SUBCASE("a tensor entry that is not an object") {
    check_corrupt(image(R"({"a":3})", 0), "\"a\"");
  }
  SUBCASE("a shape nested a million deep") {
    const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
    check_corrupt(image(R"({"a":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,4]}})", 4),
                  "shape holds array");
  }
}

TEST_CASE(
    "every truncation and random header damage of a valid file gives an error or a valid parse, never a "
    "crash") {
  const fs::path dir = fresh_dir("fuzz");
  const Generated g = random_tensors(3);
  const auto data = g.data();
  REQUIRE(write_safetensors(dir / "ok.safetensors", data).ok());
  const auto good = read_bytes(dir / "ok.safetensors");
  REQUIRE(parse_safetensors(good).ok());
  for (size_t n = 0; n < good.size(); ++n) {
    const std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    const Status s = parse_status(cut);
    REQUIRE_FALSE(s.ok());
    CHECK(s.code() == StatusCode::kCorruption);
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  std::mt19937 rng(4);
  int parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    auto damaged = good;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k) {
      damaged[rng() % (8 + header_len)] = static_cast<std::byte>(rng());
    }
    auto result = parse_safetensors(damaged);
    if (result.ok()) {
      ++parsed;  // damage in a name or padding can leave a valid file: its views must stay inside it
      for (const TensorView& t : result->tensors) {
        CHECK(t.data >= damaged.data());
        CHECK(t.data + t.nbytes <= damaged.data() + damaged.size());
      }
    } else {
      CHECK(result.status().code() == StatusCode::kCorruption);
    }
  }
  CHECK(parsed < 3000);

  // The same through a real file: a truncated shard names itself.
  write_bytes(dir / "cut.safetensors", std::span(good).first(good.size() - 3));
  auto cut = SafetensorsFile::open(dir / "cut.safetensors");
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.status().code() == StatusCode::kCorruption);
  CHECK(cut.status().message().find("cut.safetensors") != std::string::npos);
  write_bytes(dir / "empty.safetensors", {});
  CHECK(SafetensorsFile::open(dir / "empty.safetensors").status().code() == StatusCode::kCorruption);
  CHECK(SafetensorsFile::open(dir / "absent.safetensors").status().code() == StatusCode::kNotFound);
}

TEST_CASE("a checkpoint folder with a broken index or missing shards is refused, naming the problem") {
  const Generated g = random_tensors(5);
  const auto data = g.data();
  const fs::path dir = fresh_dir("badindex");
  REQUIRE(write_checkpoint(dir, data, 2).ok());
  const fs::path index_path = dir / kIndexFileName;
  std::ifstream in(index_path);
  const json good = json::parse(in);
  in.close();
  auto with_index = [&](const json& index) {
    std::ofstream(index_path) << index.dump();
    return Checkpoint::open(dir).status();
  };

  json escape = good;
  escape["weight_map"]["t0.weight"] = "../elsewhere.safetensors";
  Status s = with_index(escape);
  CHECK(s.code() == StatusCode::kCorruption);
  CHECK(s.message().find("t0.weight") != std::string::npos);

  json misplaced = good;
  const std::string first_file = good["weight_map"]["t0.weight"];
  const std::string other_file =
      first_file == shard_file_name(0, 2) ? shard_file_name(1, 2) : shard_file_name(0, 2);
  misplaced["weight_map"]["t0.weight"] = other_file;
  s = with_index(misplaced);
  CHECK(s.code() == StatusCode::kCorruption);
  CHECK(s.message().find("\"t0.weight\" in " + other_file) != std::string::npos);

  json ghost = good;
  ghost["weight_map"]["extra.weight"] = "model-00009-of-00009.safetensors";
  s = with_index(ghost);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message().find("model-00009-of-00009.safetensors") != std::string::npos);

  CHECK(with_index(json::array()).code() == StatusCode::kCorruption);
  std::ofstream(index_path) << "{ not json";
  CHECK(Checkpoint::open(dir).status().code() == StatusCode::kCorruption);

  // The same tensor in two shards.
  std::ofstream(index_path) << good.dump();
  REQUIRE(Checkpoint::open(dir).ok());
  const std::vector<TensorData> one = {data[0]};
  REQUIRE(write_safetensors(dir / other_file, one).ok());
  s = Checkpoint::open(dir).status();
  CHECK(s.code() == StatusCode::kCorruption);

  CHECK(Checkpoint::open(fresh_dir("empty")).status().code() == StatusCode::kNotFound);
  CHECK(Checkpoint::open(dir / "nope").status().code() == StatusCode::kNotFound);
}

}  // namespace
}  // namespace agentserve::engine
