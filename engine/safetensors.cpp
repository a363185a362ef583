#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <sstream>
#include <utility>

#include "base/bf16.h"

namespace agentserve::engine {
namespace {

using nlohmann::json;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBF16, "BF16", 2}, {DType::kF16, "F16", 2},   {DType::kF32, "F32", 4}, {DType::kF64, "F64", 8},
    {DType::kI8, "I8", 1},     {DType::kI16, "I16", 2},   {DType::kI32, "I32", 4}, {DType::kI64, "I64", 8},
    {DType::kU8, "U8", 1},     {DType::kBool, "BOOL", 1},
};

const DTypeInfo& info(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)];
}

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Element count of a shape, or nullopt when a dimension is negative or the product passes 2^62.
std::optional<int64_t> checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > (int64_t{1} << 62) / d) return std::nullopt;
    n *= d;
  }
  return n;
}

// A value for an error message. Containers are named, not printed: dump() recurses, and a hostile file
// can nest millions deep.
std::string describe(const json& v) {
  return v.is_primitive() ? v.dump() : std::string(v.type_name());
}

bool read_offset(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

struct Entry {
  TensorView view;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Result<Entry> parse_entry(const std::string& name, const json& value, uint64_t data_size) {
  auto bad = [&](std::string what) { return Status::corruption("tensor \"" + name + "\": " + what); };
  if (!value.is_object()) return bad("header entry is not an object");
  auto dtype_it = value.find("dtype");
  auto shape_it = value.find("shape");
  auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end() || !dtype_it->is_string()) return bad("dtype is missing or not a string");
  if (shape_it == value.end() || !shape_it->is_array()) return bad("shape is missing or not a list");
  if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return bad("data_offsets must be a list [begin, end]");
  }
  Entry e;
  e.view.name = name;
  const auto dtype = dtype_from_name(dtype_it->get<std::string>());
  if (!dtype) return bad("unknown dtype \"" + dtype_it->get<std::string>() + "\"");
  e.view.dtype = *dtype;
  for (const json& d : *shape_it) {
    uint64_t dim = 0;
    if (!read_offset(d, dim) || dim > (uint64_t{1} << 62)) return bad("shape holds " + describe(d));
    e.view.shape.push_back(static_cast<int64_t>(dim));
  }
  const auto numel = checked_numel(e.view.shape);
  if (!numel || static_cast<uint64_t>(*numel) > (uint64_t{1} << 62) / dtype_size(*dtype)) {
    return bad("shape " + shape_string(e.view.shape) + " is too large");
  }
  if (!read_offset((*offsets_it)[0], e.begin) || !read_offset((*offsets_it)[1], e.end)) {
    return bad("data_offsets must be non-negative integers");
  }
  if (e.begin > e.end) {
    return bad("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
               "] end before they begin");
  }
  if (e.end > data_size) {
    return bad("data_offsets end at " + std::to_string(e.end) + ", past the data section (" +
               std::to_string(data_size) + " bytes)");
  }
  const uint64_t expected = static_cast<uint64_t>(*numel) * dtype_size(*dtype);
  if (e.end - e.begin != expected) {
    return bad("holds " + std::to_string(e.end - e.begin) + " bytes but shape " + shape_string(e.view.shape) +
               " of " + std::string(dtype_name(*dtype)) + " needs " + std::to_string(expected));
  }
  e.view.nbytes = static_cast<size_t>(expected);
  return e;
}

// The reference implementation requires the tensors to tile the data section: sorted by offset, each
// starts where the previous ended and the last ends at the end of the file.
Status check_tiling(std::vector<const Entry*> entries, uint64_t data_size) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : entries) {
    if (e->begin < covered) {
      return Status::corruption("tensors \"" + previous->view.name + "\" and \"" + e->view.name +
                                "\" overlap");
    }
    if (e->begin > covered) {
      return Status::corruption("data bytes " + std::to_string(covered) + ".." + std::to_string(e->begin) +
                                " belong to no tensor");
    }
    covered = e->end;
    previous = e;
  }
  if (covered != data_size) {
    return Status::corruption("data bytes " + std::to_string(covered) + ".." + std::to_string(data_size) +
                              " belong to no tensor");
  }
  return Status();
}

Status errno_status(const std::filesystem::path& path, std::string_view what) {
  const int err = errno;
  std::string m = path.string() + ": " + std::string(what) + ": " + std::strerror(err);
  return err == ENOENT ? Status::not_found(std::move(m)) : Status::io_error(std::move(m));
}

Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset, const std::filesystem::path& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(path, "write");
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status();
}

bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

Result<std::string> read_small_file(const std::filesystem::path& path, uint64_t limit) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return Status::io_error(path.string() + ": " + ec.message());
  if (size > limit)
    return Status::corruption(path.string() + ": " + std::to_string(size) + " bytes is too large");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io_error(path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

size_t dtype_size(DType dtype) {
  return info(dtype).size;
}
std::string_view dtype_name(DType dtype) {
  return info(dtype).name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

bool is_floating(DType dtype) {
  return dtype == DType::kBF16 || dtype == DType::kF16 || dtype == DType::kF32 || dtype == DType::kF64;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float TensorView::float_at(int64_t i) const {
  const std::byte* p = data + static_cast<size_t>(i) * dtype_size(dtype);
  switch (dtype) {
    case DType::kBF16:
      return bf16_to_float(bf16{load<uint16_t>(p)});
    case DType::kF16:
      return f16_to_float(load<uint16_t>(p));
    case DType::kF32:
      return load<float>(p);
    case DType::kF64:
      return static_cast<float>(load<double>(p));
    case DType::kI8:
      return load<int8_t>(p);
    case DType::kI16:
      return load<int16_t>(p);
    case DType::kI32:
      return static_cast<float>(load<int32_t>(p));
    case DType::kI64:
      return static_cast<float>(load<int64_t>(p));
    case DType::kU8:
      return load<uint8_t>(p);
    case DType::kBool:
      return load<uint8_t>(p) != 0 ? 1.0f : 0.0f;
  }
  return 0.0f;
}

Status copy_to_float(const TensorView& view, std::span<float> out) {
  if (!is_floating(view.dtype)) {
    return Status::invalid_argument("tensor \"" + view.name + "\" has dtype " +
                                    std::string(dtype_name(view.dtype)) + ", not a floating-point type");
  }
  if (out.size() != static_cast<size_t>(view.numel())) {
    return Status::invalid_argument("tensor \"" + view.name + "\": output holds " +
                                    std::to_string(out.size()) + " floats for " +
                                    std::to_string(view.numel()) + " elements");
  }
  const std::byte* p = view.data;
  switch (view.dtype) {
    case DType::kBF16:
      for (float& v : out) v = bf16_to_float(bf16{load<uint16_t>(p)}), p += 2;
      break;
    case DType::kF16:
      for (float& v : out) v = f16_to_float(load<uint16_t>(p)), p += 2;
      break;
    case DType::kF32:
      if (!out.empty()) std::memcpy(out.data(), p, out.size_bytes());
      break;
    default:
      for (size_t i = 0; i < out.size(); ++i) out[i] = view.float_at(static_cast<int64_t>(i));
  }
  return Status();
}

Result<std::vector<float>> to_float_vector(const TensorView& view) {
  std::vector<float> out(static_cast<size_t>(view.numel()));
  AS_RETURN_IF_ERROR(copy_to_float(view, out));
  return out;
}

Result<SafetensorsContents> parse_safetensors(std::span<const std::byte> image) {
  if (image.size() < 8) {
    return Status::corruption("file is " + std::to_string(image.size()) +
                              " bytes, too short for the 8-byte header length");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(image[i]);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Status::corruption("header length " + std::to_string(header_len) + " exceeds the limit of " +
                              std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (header_len > image.size() - 8) {
    return Status::corruption("header length " + std::to_string(header_len) +
                              " runs past the end of the file (" + std::to_string(image.size()) + " bytes)");
  }
  const auto* header_chars = reinterpret_cast<const char*>(image.data() + 8);
  const json header =
      json::parse(header_chars, header_chars + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Status::corruption("header is not valid JSON");
  if (!header.is_object()) return Status::corruption("header is not a JSON object");

  SafetensorsContents contents;
  contents.data_offset = 8 + static_cast<size_t>(header_len);
  const std::span<const std::byte> data = image.subspan(contents.data_offset);
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Status::corruption("__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return Status::corruption("__metadata__ value \"" + k + "\" is not a string");
        contents.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    AS_ASSIGN_OR_RETURN(Entry e, parse_entry(name, value, data.size()));
    e.view.data = data.data() + e.begin;
    entries.push_back(std::move(e));
  }
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  AS_RETURN_IF_ERROR(check_tiling(std::move(order), data.size()));
  for (Entry& e : entries) contents.tensors.push_back(std::move(e.view));
  return contents;
}

// ---- SafetensorsFile ----

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(path, "open");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Status s = errno_status(path, "stat");
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::io_error(path.string() + ": not a regular file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size < 8) {  // mmap of an empty file fails; say what is wrong instead
    ::close(fd);
    return Status::corruption(path.string() + ": file is " + std::to_string(mapping->size) +
                              " bytes, too short for the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) {
    Status s = errno_status(path, "mmap");
    ::close(fd);
    return s;
  }
  mapping->addr = addr;
  ::close(fd);  // the mapping keeps the file's pages reachable

  auto contents = parse_safetensors({static_cast<const std::byte*>(mapping->addr), mapping->size});
  if (!contents.ok()) return contents.status().with_context(path.string());
  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::move(mapping);
  file.contents_ = std::move(contents).value();
  return file;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  for (const TensorView& t : contents_.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

uint64_t SafetensorsFile::file_size() const {
  return mapping_ ? mapping_->size : 0;
}

// ---- Checkpoint ----

Result<Checkpoint> Checkpoint::open(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return Status::not_found(dir.string() + ": not a folder");
  Checkpoint checkpoint;
  checkpoint.dir_ = dir;
  std::map<std::string, std::string> weight_map;  // tensor -> shard file, from the index

  if (std::filesystem::exists(dir / kSingleFileName, ec)) {
    AS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(dir / kSingleFileName));
    checkpoint.files_.push_back(std::move(file));
  } else if (std::filesystem::exists(dir / kIndexFileName, ec)) {
    const std::filesystem::path index_path = dir / kIndexFileName;
    AS_ASSIGN_OR_RETURN(std::string text, read_small_file(index_path, kMaxSafetensorsHeaderBytes));
    const json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
    auto bad = [&](const std::string& what) { return Status::corruption(index_path.string() + ": " + what); };
    if (index.is_discarded() || !index.is_object()) return bad("not a JSON object");
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) return bad("weight_map is missing or not an object");
    std::set<std::string> shards;
    for (const auto& [tensor, file] : map_it->items()) {
      if (!file.is_string() || !is_plain_file_name(file.get<std::string>())) {
        return bad("weight_map entry \"" + tensor + "\" must name a file in the same folder, got " +
                   describe(file));
      }
      weight_map[tensor] = file.get<std::string>();
      shards.insert(file.get<std::string>());
    }
    if (shards.empty()) return bad("weight_map is empty");
    for (const std::string& shard : shards) {
      AS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(dir / shard));
      checkpoint.files_.push_back(std::move(file));
    }
  } else {
    return Status::not_found(dir.string() + ": no " + std::string(kSingleFileName) + " or " +
                             std::string(kIndexFileName));
  }

  std::map<std::string_view, std::string> file_of;  // tensor -> the file that holds it
  for (const SafetensorsFile& file : checkpoint.files_) {
    for (const TensorView& t : file.tensors()) {
      auto [it, inserted] = checkpoint.by_name_.emplace(t.name, &t);
      if (!inserted) {
        return Status::corruption("tensor \"" + t.name + "\" appears in two files, the second " +
                                  file.path().filename().string());
      }
      file_of[t.name] = file.path().filename().string();
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    auto it = file_of.find(tensor);
    if (it == file_of.end() || it->second != shard) {
      return Status::corruption(std::string(kIndexFileName) + " places tensor \"" + tensor + "\" in " +
                                shard + ", which does not hold it");
    }
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, view] : by_name_) names.push_back(name);
  return names;
}

const TensorView* Checkpoint::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

Result<TensorView> Checkpoint::tensor(std::string_view name) const {
  const TensorView* view = find(name);
  if (view == nullptr) {
    return Status::not_found("tensor \"" + std::string(name) + "\" is not in the checkpoint at " +
                             dir_.string());
  }
  return *view;
}

// ---- writing ----

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Result<SafetensorsWriter> SafetensorsWriter::create(const std::filesystem::path& path,
                                                    std::vector<TensorSpec> tensors,
                                                    const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (const TensorSpec& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return Status::invalid_argument("tensor name \"" + t.name + "\" cannot be written");
    }
    if (!names.insert(t.name).second)
      return Status::invalid_argument("tensor \"" + t.name + "\" given twice");
    if (!checked_numel(t.shape)) {
      return Status::invalid_argument("tensor \"" + t.name + "\" has shape " + shape_string(t.shape));
    }
  }
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) {
    return dtype_size(a.dtype) > dtype_size(b.dtype);
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  SafetensorsWriter writer;
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    const uint64_t size = t.nbytes();
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + size}}};
    writer.slots_[t.name] = Slot{offset, size, 0};
    offset += size;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as HF pads
  const uint64_t data_offset = 8 + header_text.size();
  for (auto& [name, slot] : writer.slots_) slot.offset += data_offset;

  writer.path_ = path;
  writer.tmp_path_ = path;
  writer.tmp_path_ += ".tmp";
  writer.fd_ = ::open(writer.tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (writer.fd_ < 0) {
    Status s = errno_status(writer.tmp_path_, "create");
    writer.tmp_path_.clear();
    return s;
  }
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(header_text.size() >> (8 * i));
  AS_RETURN_IF_ERROR(pwrite_all(writer.fd_, length, 8, 0, writer.tmp_path_));
  AS_RETURN_IF_ERROR(pwrite_all(writer.fd_, header_text.data(), header_text.size(), 8, writer.tmp_path_));
  return writer;
}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&& other) noexcept
    : path_(std::move(other.path_)),
      tmp_path_(std::exchange(other.tmp_path_, {})),
      fd_(std::exchange(other.fd_, -1)),
      slots_(std::move(other.slots_)) {}

SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&& other) noexcept {
  if (this != &other) {
    discard();
    path_ = std::move(other.path_);
    tmp_path_ = std::exchange(other.tmp_path_, {});
    fd_ = std::exchange(other.fd_, -1);
    slots_ = std::move(other.slots_);
  }
  return *this;
}

SafetensorsWriter::~SafetensorsWriter() {
  discard();
}

void SafetensorsWriter::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!tmp_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
    tmp_path_.clear();
  }
}

Status SafetensorsWriter::append(std::string_view name, std::span<const std::byte> bytes) {
  if (fd_ < 0) return Status::failed_precondition("safetensors writer is finished");
  auto it = slots_.find(name);
  if (it == slots_.end())
    return Status::invalid_argument("tensor \"" + std::string(name) + "\" was not declared");
  Slot& slot = it->second;
  if (bytes.size() > slot.size - slot.filled) {
    return Status::invalid_argument("tensor \"" + std::string(name) + "\" gets more than its " +
                                    std::to_string(slot.size) + " bytes");
  }
  AS_RETURN_IF_ERROR(pwrite_all(fd_, bytes.data(), bytes.size(), slot.offset + slot.filled, tmp_path_));
  slot.filled += bytes.size();
  return Status();
}

Status SafetensorsWriter::finish() {
  if (fd_ < 0) return Status::failed_precondition("safetensors writer is finished");
  for (const auto& [name, slot] : slots_) {
    if (slot.filled != slot.size) {
      return Status::failed_precondition("tensor \"" + name + "\" has " + std::to_string(slot.filled) +
                                         " of its " + std::to_string(slot.size) + " bytes");
    }
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return errno_status(tmp_path_, "close");
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) return Status::io_error(path_.string() + ": rename: " + ec.message());
  tmp_path_.clear();
  return Status();
}

Status write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const TensorData& t : tensors) specs.push_back(t.spec);
  AS_ASSIGN_OR_RETURN(SafetensorsWriter writer, SafetensorsWriter::create(path, std::move(specs), metadata));
  for (const TensorData& t : tensors) AS_RETURN_IF_ERROR(writer.append(t.spec.name, t.bytes));
  return writer.finish();
}

std::string shard_file_name(int index, int count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", index + 1, count);
  return name;
}

Result<std::vector<std::vector<TensorSpec>>> split_into_shards(std::span<const TensorSpec> tensors,
                                                               int count) {
  if (count < 1) return Status::invalid_argument("shard count must be at least 1");
  if (tensors.size() < static_cast<size_t>(count)) {
    return Status::invalid_argument(std::to_string(count) + " shards for " + std::to_string(tensors.size()) +
                                    " tensors would leave a shard empty");
  }
  uint64_t total = 0;
  for (const TensorSpec& t : tensors) total += t.nbytes();
  std::vector<std::vector<TensorSpec>> shards(static_cast<size_t>(count));
  size_t shard = 0;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    shards[shard].push_back(tensors[i]);
    cumulative += tensors[i].nbytes();
    const size_t tensors_left = tensors.size() - i - 1;
    const size_t shards_left = static_cast<size_t>(count) - 1 - shard;
    if (shards_left == 0) continue;
    // Move on once this shard has its share of bytes, or when every later shard needs a remaining tensor.
    const bool share_done =
        static_cast<long double>(cumulative) * count >= static_cast<long double>(total) * (shard + 1);
    if (tensors_left == shards_left || (share_done && tensors_left >= shards_left)) ++shard;
  }
  return shards;
}

Status write_safetensors_index(const std::filesystem::path& dir,
                               const std::map<std::string, std::string>& weight_map, uint64_t total_size) {
  const json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  const std::filesystem::path path = dir / kIndexFileName;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << index.dump(2) << "\n";
  out.close();
  if (!out) return Status::io_error(path.string() + ": write failed");
  return Status();
}

Status write_checkpoint(const std::filesystem::path& dir, std::span<const TensorData> tensors, int shards) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::io_error(dir.string() + ": " + ec.message());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // A stale file of the other layout would win or confuse Checkpoint::open.
  std::filesystem::remove(dir / (shards == 1 ? kIndexFileName : kSingleFileName), ec);
  if (shards == 1) return write_safetensors(dir / kSingleFileName, tensors, metadata);

  std::vector<TensorSpec> specs;
  for (const TensorData& t : tensors) specs.push_back(t.spec);
  AS_ASSIGN_OR_RETURN(auto groups, split_into_shards(specs, shards));
  std::map<std::string, std::string> weight_map;
  uint64_t total_size = 0;
  size_t next = 0;
  for (size_t s = 0; s < groups.size(); ++s) {
    const std::string file = shard_file_name(static_cast<int>(s), shards);
    const std::span<const TensorData> part = tensors.subspan(next, groups[s].size());
    next += groups[s].size();
    for (const TensorData& t : part) {
      weight_map[t.spec.name] = file;
      total_size += t.spec.nbytes();
    }
    AS_RETURN_IF_ERROR(write_safetensors(dir / file, part, metadata));
  }
  return write_safetensors_index(dir, weight_map, total_size);
}

}  // namespace agentserve::engine
