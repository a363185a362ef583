#include "memory/kv_layout.h"

#include <algorithm>
#include <limits>
#include <string>

namespace agentserve::memory {

size_t kv_dtype_size(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32:
      return 4;
  }
  return 0;
}

Status KvLayout::validate() const {
  if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || block_size <= 0) {
    return Status::invalid_argument("KV layout needs positive sizes, got n_layers " +
                                    std::to_string(n_layers) + ", n_kv_heads " + std::to_string(n_kv_heads) +
                                    ", head_dim " + std::to_string(head_dim) + ", block_size " +
                                    std::to_string(block_size));
  }
  if (kv_dtype_size(dtype) == 0) return Status::invalid_argument("KV layout has an unknown dtype");
  // Multiply in steps with an overflow check: four ints can exceed 64 bits.
  constexpr uint64_t kMaxBlockBytes = uint64_t{1} << 40;
  uint64_t bytes = 2 * kv_dtype_size(dtype);
  for (int f : {n_layers, n_kv_heads, head_dim, block_size}) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(f), &bytes) || bytes > kMaxBlockBytes) {
      return Status::out_of_range("KV block would exceed 1 TiB");
    }
  }
  return Status::ok_status();
}

int KvLayout::blocks_that_fit(size_t budget_bytes) const {
  if (!validate().ok()) return 0;
  size_t n = budget_bytes / block_stride();
  return static_cast<int>(std::min<size_t>(n, std::numeric_limits<int32_t>::max()));
}

}  // namespace agentserve::memory
