#include "memory/kv_arena.h"

#include <cassert>
#include <cstring>
#include <string>

namespace agentserve::memory {

Result<KvArena> KvArena::create(const KvLayout& layout, int num_blocks) {
  AS_RETURN_IF_ERROR(layout.validate());
  if (num_blocks < 0) {
    return Status::invalid_argument("KV arena needs a non-negative block count, got " +
                                    std::to_string(num_blocks));
  }
  size_t total = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(num_blocks), layout.block_stride(), &total)) {
    return Status::resource_exhausted("KV arena size overflows");
  }
  std::byte* data = nullptr;
  if (total > 0) {
    // aligned_alloc wants a size that is a multiple of the alignment; block_stride() is one.
    data = static_cast<std::byte*>(std::aligned_alloc(kKvBlockAlign, total));
    if (data == nullptr) {
      return Status::resource_exhausted("cannot allocate " + std::to_string(total) + " bytes for " +
                                        std::to_string(num_blocks) + " KV blocks");
    }
    std::memset(data, 0, total);
  }
  return KvArena(layout, num_blocks, data);
}

std::byte* KvArena::block_base(int block) const {
  assert(block >= 0 && block < num_blocks_);
  return data_.get() + static_cast<size_t>(block) * layout_.block_stride();
}

}  // namespace agentserve::memory
