#include "kernels/cuda/block_copy.h"

#include <string>

namespace agentserve::kernels::cuda {
namespace {

Status check_ids(const KvPoolGeometry& geo, const int32_t* block_ids, int n_blocks, const void* a,
                 const void* b) {
  AS_RETURN_IF_ERROR(geo.validate());
  if (n_blocks < 0) return Status::invalid_argument("block copy: negative block count");
  if (n_blocks > 0 && (block_ids == nullptr || a == nullptr || b == nullptr)) {
    return Status::invalid_argument("block copy: null pointer");
  }
  for (int i = 0; i < n_blocks; ++i) {
    if (block_ids[i] < 0 || block_ids[i] >= geo.n_blocks) {
      return Status::out_of_range("block copy: block id " + std::to_string(block_ids[i]) +
                                  " outside the pool");
    }
  }
  return Status::ok_status();
}

// Runs of consecutive ids in a packed pool are contiguous on both sides: one copy per run, not per block.
template <typename Copy>
Status for_each_run(const KvPoolGeometry& geo, const int32_t* block_ids, int n_blocks, Copy&& copy) {
  const bool packed = geo.block_stride == geo.block_elems();
  for (int i = 0; i < n_blocks;) {
    int run = 1;
    while (packed && i + run < n_blocks && block_ids[i + run] == block_ids[i] + run) ++run;
    const cudaError_t err = copy(i, block_ids[i], run);
    if (err != cudaSuccess) return Status::internal(std::string("block copy: ") + cudaGetErrorString(err));
    i += run;
  }
  return Status::ok_status();
}

}  // namespace

Status gather_blocks_to_host(bf16* host, const bf16* pool, const KvPoolGeometry& geo,
                             const int32_t* block_ids, int n_blocks, cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check_ids(geo, block_ids, n_blocks, host, pool));
  const size_t elems = geo.block_elems();
  return for_each_run(geo, block_ids, n_blocks, [&](int first, int32_t id, int run) {
    return cudaMemcpyAsync(host + static_cast<size_t>(first) * elems,
                           pool + static_cast<size_t>(id) * geo.block_stride,
                           static_cast<size_t>(run) * elems * sizeof(bf16), cudaMemcpyDeviceToHost, stream);
  });
}

Status scatter_blocks_from_host(bf16* pool, const bf16* host, const KvPoolGeometry& geo,
                                const int32_t* block_ids, int n_blocks, cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check_ids(geo, block_ids, n_blocks, host, pool));
  const size_t elems = geo.block_elems();
  return for_each_run(geo, block_ids, n_blocks, [&](int first, int32_t id, int run) {
    return cudaMemcpyAsync(pool + static_cast<size_t>(id) * geo.block_stride,
                           host + static_cast<size_t>(first) * elems,
                           static_cast<size_t>(run) * elems * sizeof(bf16), cudaMemcpyHostToDevice, stream);
  });
}

}  // namespace agentserve::kernels::cuda
