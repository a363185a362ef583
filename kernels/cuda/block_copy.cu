#include "kernels/cuda/block_copy.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/cuda/cuda_status.h"

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
    AS_RETURN_IF_ERROR(cuda_status(copy(i, block_ids[i], run), "block copy"));
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

Status download_blocks_staged(bf16* host, const bf16* pool, const KvPoolGeometry& geo,
                              const int32_t* block_ids, int n_blocks, bf16* staging, int staging_blocks,
                              cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check_ids(geo, block_ids, n_blocks, host, pool));
  if (n_blocks > 0 && (staging == nullptr || staging_blocks < 1)) {
    return Status::invalid_argument("download_blocks_staged: no staging buffer");
  }
  const size_t block_bytes = geo.block_elems() * sizeof(bf16);
  for (int first = 0; first < n_blocks; first += staging_blocks) {
    const int count = std::min(staging_blocks, n_blocks - first);
    AS_RETURN_IF_ERROR(gather_blocks_to_host(staging, pool, geo, block_ids + first, count, stream));
    AS_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "download_blocks_staged"));
    std::memcpy(host + static_cast<size_t>(first) * geo.block_elems(), staging,
                static_cast<size_t>(count) * block_bytes);
  }
  return Status::ok_status();
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
