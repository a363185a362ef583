#include "engine/model_generator.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <vector>

#include "base/bf16.h"
#include "engine/weight_manifest.h"

namespace agentserve::engine {
namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

// xoshiro256** (Blackman and Vigna).
uint64_t xoshiro_next(uint64_t (&s)[4]) {
  const uint64_t result = rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

// Uniform in [-1, 1) from the top 24 bits: exact, identical everywhere.
double symmetric_unit(uint64_t bits) {
  return static_cast<double>(bits >> 40) * (2.0 / 16777216.0) - 1.0;
}

// Width of a uniform distribution with standard deviation `std`.
float uniform_half_width(double std) {
  return static_cast<float>(std * std::sqrt(3.0));
}

ModelConfig base_preset() {
  ModelConfig c;
  c.model_type = "qwen3_moe";
  c.architectures = {"Qwen3MoeForCausalLM"};
  c.norm_topk_prob = true;
  c.decoder_sparse_step = 1;
  c.rope_theta = 1000000.0;
  c.rope_scaling = RopeScaling{.factor = 4.0, .original_max_position_embeddings = 32768};
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 131072;
  c.vocab_size = 151936;
  c.tie_word_embeddings = false;
  c.torch_dtype = "bfloat16";
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  return c;
}

Status copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(from / name, ec)) {
      return Status::not_found((from / name).string() + ": tokenizer file not found");
    }
    std::filesystem::copy_file(from / name, to / name, std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return Status::io_error((to / name).string() + ": " + ec.message());
  }
  return Status();
}

// Model files a previous run may have left: removed before writing so the folder holds one model.
Status clear_model_files(const std::filesystem::path& dir, bool overwrite) {
  std::error_code ec;
  std::vector<std::filesystem::path> old;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename();
    if (name.extension() == ".safetensors" || name == kIndexFileName || name == kManifestFileName) {
      old.push_back(entry.path());
    }
  }
  if (ec) return Status::io_error(dir.string() + ": " + ec.message());
  if (!old.empty() && !overwrite) {
    return Status::failed_precondition(dir.string() + " already holds model files (" +
                                       old.front().filename().string() + "); pass --force to replace them");
  }
  for (const auto& path : old) std::filesystem::remove(path, ec);
  return Status();
}

Status write_tensor(SafetensorsWriter& writer, uint64_t seed, const ExpectedTensor& tensor, DType dtype,
                    uint64_t& done, uint64_t total, const GeneratorOptions& options) {
  constexpr int64_t kChunk = 1 << 20;
  TensorValueStream stream(seed, tensor);
  int64_t numel = 1;
  for (int64_t d : tensor.shape) numel *= d;
  std::vector<float> values(static_cast<size_t>(std::min(numel, kChunk)));
  std::vector<bf16> halves(dtype == DType::kBF16 ? values.size() : 0);
  for (int64_t begin = 0; begin < numel; begin += kChunk) {
    const size_t n = static_cast<size_t>(std::min(kChunk, numel - begin));
    const std::span<float> chunk(values.data(), n);
    stream.next(chunk);
    std::span<const std::byte> bytes;
    if (dtype == DType::kBF16) {
      for (size_t i = 0; i < n; ++i) halves[i] = float_to_bf16(chunk[i]);
      bytes = std::as_bytes(std::span(halves.data(), n));
    } else {
      bytes = std::as_bytes(chunk);
    }
    AS_RETURN_IF_ERROR(writer.append(tensor.name, bytes));
    done += bytes.size();
    if (options.progress) options.progress(done, total);
  }
  return Status();
}

}  // namespace

Result<ModelConfig> model_preset(std::string_view name) {
  ModelConfig c = base_preset();
  if (name == "tiny") {
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 32;
    c.intermediate_size = 192;
  } else if (name == "bench") {
    c.hidden_size = 1024;
    c.num_hidden_layers = 8;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 4;
    c.head_dim = 64;
    c.num_experts = 64;
    c.num_experts_per_tok = 8;
    c.moe_intermediate_size = 256;
    c.intermediate_size = 3072;
  } else {
    return Status::invalid_argument("unknown model preset \"" + std::string(name) + "\" (tiny or bench)");
  }
  return c;
}

std::vector<std::string> model_preset_names() {
  return {"tiny", "bench"};
}

TensorValueStream::TensorValueStream(uint64_t seed, const ExpectedTensor& tensor) : role_(tensor.role) {
  uint64_t x = seed ^ fnv1a64(tensor.name);
  for (uint64_t& word : state_) word = splitmix64(x);
  row_seed_ = splitmix64(x);
  cols_ = tensor.shape.size() == 2 ? tensor.shape[1] : 1;
  const double in_dim = static_cast<double>(std::max<int64_t>(cols_, 1));
  switch (role_) {
    case TensorRole::kEmbedding:
      half_width_ = uniform_half_width(1.0);
      break;
    case TensorRole::kLinear:
    case TensorRole::kLmHead:
      half_width_ = uniform_half_width(1.0 / std::sqrt(in_dim));
      break;
    case TensorRole::kRouter:
      half_width_ = uniform_half_width(2.0 / std::sqrt(in_dim));
      break;
    case TensorRole::kNorm:
      center_ = 1.0f;
      half_width_ = 0.1f;
      break;
    case TensorRole::kHeadNorm:
      center_ = 1.0f;
      half_width_ = 0.05f;
      break;
  }
}

void TensorValueStream::next(std::span<float> out) {
  // Exact arithmetic in double (24-bit width x 24-bit uniform, times a 5-bit row scale, fits in 53 bits),
  // then one rounding to float: the bytes cannot depend on the compiler contracting into FMA.
  static constexpr double kRowScales[] = {2.0 / 8, 3.0 / 8,  4.0 / 8,  6.0 / 8,
                                          8.0 / 8, 11.0 / 8, 16.0 / 8, 23.0 / 8};
  for (float& v : out) {
    double value = center_ + static_cast<double>(half_width_) * symmetric_unit(xoshiro_next(state_));
    if (role_ == TensorRole::kRouter) {
      // Rows (experts) get norms from 1/4x to about 3x: larger rows win top-k more often, so expert load is
      // uneven, as in trained models, and the imbalance metrics have something to show.
      uint64_t r = row_seed_ + static_cast<uint64_t>(position_ / cols_);
      value *= kRowScales[splitmix64(r) % 8];
    }
    v = static_cast<float>(value);
    ++position_;
  }
}

Status generate_model(const std::filesystem::path& out_dir, const GeneratorOptions& options) {
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF32) {
    return Status::invalid_argument("generated weights are bf16 or f32, not " +
                                    std::string(dtype_name(options.dtype)));
  }
  ModelConfig config = options.config;
  config.torch_dtype = options.dtype == DType::kBF16 ? "bfloat16" : "float32";
  AS_RETURN_IF_ERROR(validate_model_config(config));
  const std::vector<ExpectedTensor> tensors = qwen3_expected_tensors(config);
  std::vector<TensorSpec> specs;
  uint64_t total = 0;
  for (const ExpectedTensor& t : tensors) {
    specs.push_back({t.name, options.dtype, t.shape});
    total += specs.back().nbytes();
  }
  AS_ASSIGN_OR_RETURN(auto groups, split_into_shards(specs, options.shards));

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return Status::io_error(out_dir.string() + ": " + ec.message());
  AS_RETURN_IF_ERROR(clear_model_files(out_dir, options.overwrite));

  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  std::map<std::string, std::string> weight_map;
  uint64_t done = 0;
  size_t next = 0;
  for (size_t s = 0; s < groups.size(); ++s) {
    const std::string file = options.shards == 1 ? std::string(kSingleFileName)
                                                 : shard_file_name(static_cast<int>(s), options.shards);
    AS_ASSIGN_OR_RETURN(SafetensorsWriter writer,
                        SafetensorsWriter::create(out_dir / file, groups[s], metadata));
    for (size_t i = 0; i < groups[s].size(); ++i, ++next) {
      AS_RETURN_IF_ERROR(
          write_tensor(writer, options.seed, tensors[next], options.dtype, done, total, options));
      weight_map[tensors[next].name] = file;
    }
    AS_RETURN_IF_ERROR(writer.finish());
  }
  if (options.shards > 1) AS_RETURN_IF_ERROR(write_safetensors_index(out_dir, weight_map, total));

  {
    std::ofstream out(out_dir / "config.json", std::ios::binary | std::ios::trunc);
    out << model_config_to_json(config);
    out.close();
    if (!out) return Status::io_error((out_dir / "config.json").string() + ": write failed");
  }
  if (!options.tokenizer_dir.empty()) AS_RETURN_IF_ERROR(copy_tokenizer(options.tokenizer_dir, out_dir));
  if (options.write_manifest) {
    AS_ASSIGN_OR_RETURN(WeightManifest manifest, compute_manifest(out_dir));
    AS_RETURN_IF_ERROR(write_manifest(out_dir, manifest));
  }
  return Status();
}

}  // namespace agentserve::engine
