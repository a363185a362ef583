// Writes NumPy .npy files (format version 1.0): a magic string, a Python-dict header padded so the data
// starts on a 64-byte boundary, then the raw little-endian array. Used to hand logits to NumPy for golden
// comparisons; it never reads .npy.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "base/status.h"

namespace agentserve {

// A C-order float32 array of the given shape; shape's product must equal data.size().
Status write_npy_f32(const std::filesystem::path& path, std::span<const float> data,
                     std::span<const int64_t> shape);

}  // namespace agentserve
