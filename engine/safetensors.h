// safetensors: the tensor file format of Hugging Face checkpoints. An 8-byte little-endian header length
// N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then
// the data, offsets relative to its start. The reader memory-maps files and hands out typed views into
// the mapping; a Checkpoint opens a model folder (one file, or shards named by an index.json); the writer
// produces files the Hugging Face library reads. This module must never trust a file: every offset,
// shape and length is checked before a view exists, and bad bytes give a Status, never a crash. Views
// live as long as the SafetensorsFile or Checkpoint that made them (moving those keeps views valid).
// A file must not be truncated while mapped (the OS would fault on the lost pages).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::engine {

// Element types, spelled as safetensors spells them ("BF16", "F32", ...).
enum class DType : uint8_t { kBF16, kF16, kF32, kF64, kI8, kI16, kI32, kI64, kU8, kBool };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);
std::optional<DType> dtype_from_name(std::string_view name);
bool is_floating(DType dtype);

// A tensor inside a mapped file (or any byte buffer). `data` is not necessarily aligned to the element
// size; read elements through float_at / copy_to_float or memcpy.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // Element i (row-major) as float; any dtype. i must be below numel().
  float float_at(int64_t i) const;
};

// Converts every element of a BF16/F16/F32/F64 view to float. out.size() must equal numel().
Status copy_to_float(const TensorView& view, std::span<float> out);
Result<std::vector<float>> to_float_vector(const TensorView& view);

// The parsed, validated header of a safetensors image; tensors in header order, views into the image.
struct SafetensorsContents {
  std::vector<TensorView> tensors;
  std::map<std::string, std::string> metadata;
  size_t data_offset = 0;  // 8 + header length
};

// Header lengths past this are refused: real headers are a few MB even for thousands of tensors.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Validates a whole file image: header length sane and inside the image, JSON valid, known dtypes,
// byte length == product(shape) * element size, offsets inside the data, and the tensors tiling the data
// section exactly (no overlap, no hole, nothing left over), as the reference implementation demands.
Result<SafetensorsContents> parse_safetensors(std::span<const std::byte> image);

// One memory-mapped safetensors file.
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return contents_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return contents_.metadata; }
  const TensorView* find(std::string_view name) const;  // linear; Checkpoint indexes by name
  uint64_t file_size() const;
  // Owns the mapping: whoever holds it keeps every view's bytes valid, even after this object is gone.
  std::shared_ptr<const void> keep_alive() const { return mapping_; }

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<const Mapping> mapping_;  // shared so moves never touch the mapped addresses
  SafetensorsContents contents_;
};

inline constexpr std::string_view kSingleFileName = "model.safetensors";
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

// A model folder's tensors: model.safetensors if present (as Hugging Face prefers), else every shard the
// index's weight_map names. A tensor named by the index must be in its shard; a name in two files is an
// error.
class Checkpoint {
 public:
  static Result<Checkpoint> open(const std::filesystem::path& dir);
  Checkpoint() = default;  // empty: no files, no tensors (a member to assign an opened one into)
  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = default;
  Checkpoint(const Checkpoint&) = delete;  // by_name_ points into this object's own file list
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }
  size_t tensor_count() const { return by_name_.size(); }
  std::vector<std::string> tensor_names() const;  // sorted
  const TensorView* find(std::string_view name) const;
  // NotFound naming the tensor when absent.
  Result<TensorView> tensor(std::string_view name) const;

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;  // points into files_' tensor lists
};

// ---- writing ----

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

// Writes one safetensors file tensor by tensor, so a multi-gigabyte checkpoint never sits in memory.
// Data is laid out widest element type first (as the Hugging Face writer does), so with the header padded
// to 8 bytes every tensor is aligned to its element size. Bytes go to `path`.tmp; finish() checks every
// tensor is complete and renames it into place, and an unfinished writer removes its temporary file.
class SafetensorsWriter {
 public:
  static Result<SafetensorsWriter> create(const std::filesystem::path& path, std::vector<TensorSpec> tensors,
                                          const std::map<std::string, std::string>& metadata = {});
  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) noexcept;
  ~SafetensorsWriter();

  // Appends bytes to the named tensor; a tensor may arrive in several pieces, in order.
  Status append(std::string_view name, std::span<const std::byte> bytes);
  Status finish();

 private:
  SafetensorsWriter() = default;
  struct Slot {
    uint64_t offset = 0;  // absolute file offset of the tensor's first byte
    uint64_t size = 0;
    uint64_t filled = 0;
  };
  void discard();
  std::filesystem::path path_;
  std::filesystem::path tmp_path_;
  int fd_ = -1;
  std::map<std::string, Slot, std::less<>> slots_;
};

// A tensor with its bytes, for writing small files in one call.
struct TensorData {
  TensorSpec spec;
  std::span<const std::byte> bytes;
};

Status write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                         const std::map<std::string, std::string>& metadata = {});

// "model-00002-of-00005.safetensors" (index counts from 0).
std::string shard_file_name(int index, int count);
// Splits tensors, keeping their order, into `count` consecutive groups of about equal bytes, none empty.
// InvalidArgument when count < 1 or there are fewer tensors than shards.
Result<std::vector<std::vector<TensorSpec>>> split_into_shards(std::span<const TensorSpec> tensors,
                                                               int count);
// Writes dir/model.safetensors.index.json: {"metadata": {"total_size"}, "weight_map": {name: file}}.
Status write_safetensors_index(const std::filesystem::path& dir,
                               const std::map<std::string, std::string>& weight_map, uint64_t total_size);
// Writes dir/model.safetensors (shards == 1) or `shards` shard files and the index.
Status write_checkpoint(const std::filesystem::path& dir, std::span<const TensorData> tensors,
                        int shards = 1);

}  // namespace agentserve::engine
