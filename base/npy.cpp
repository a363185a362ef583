#include "base/npy.h"

#include <fstream>
#include <string>

namespace agentserve {

Status write_npy_f32(const std::filesystem::path& path, std::span<const float> data,
                     std::span<const int64_t> shape) {
  int64_t count = 1;
  std::string dims;
  for (int64_t d : shape) {
    if (d < 0) return Status::invalid_argument("negative dimension in .npy shape");
    count *= d;
    dims += std::to_string(d) + ", ";
  }
  // "(3, 4)" for several dimensions; a 1-D shape keeps its trailing comma, as Python writes "(3,)".
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  if (shape.size() == 1) dims.pop_back();
  if (static_cast<size_t>(count) != data.size()) {
    return Status::invalid_argument("npy shape holds " + std::to_string(count) + " values, data has " +
                                    std::to_string(data.size()));
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  const size_t total = (preamble + header.size() + 1 + 63) / 64 * 64;
  header.append(total - preamble - header.size() - 1, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return Status::io_error("cannot open " + path.string() + " for writing");
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, sizeof magic);
  const uint16_t header_len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(header_len & 0xff), static_cast<char>(header_len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()),
            static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) return Status::io_error("write to " + path.string() + " failed");
  return {};
}

}  // namespace agentserve
