// Whole KV blocks between the device pool (kv_cache.h) and host memory, on a stream the caller chooses (the
// backend's copy stream, so spills overlap compute). The host side is packed: block i of a call sits at
// host + i * geo.block_elems() bf16 values, which is exactly the bytes memory::KvLayout describes for a
// bf16 block. Host memory should be pinned (cudaHostAlloc) for the copies to be asynchronous; into pageable
// memory every copy blocks the calling thread, so download_blocks_staged gathers through a pinned staging
// buffer instead (async copies, one stream sync per staging-full of blocks). The caller keeps the host
// buffer and the blocks untouched until the stream reaches the copies. Host launchers only; no allocation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/bf16.h"
#include "base/status.h"
#include "kernels/cuda/kv_cache.h"

namespace agentserve::kernels::cuda {

// Device pool blocks block_ids[i] -> host block i. Every id must be in [0, geo.n_blocks).
Status gather_blocks_to_host(bf16* host, const bf16* pool, const KvPoolGeometry& geo,
                             const int32_t* block_ids, int n_blocks, cudaStream_t stream);

// As gather_blocks_to_host into host memory of any kind, and returns when the bytes are in `host`: the
// blocks go staging_blocks at a time into `staging` (page-locked, staging_blocks * geo.block_elems() bf16
// values) by asynchronous copies on `stream` (one per run of consecutive ids), the stream is synchronised
// once per staging-full, and each staging-full is copied into `host` by the CPU. staging_blocks >= 1.
Status download_blocks_staged(bf16* host, const bf16* pool, const KvPoolGeometry& geo,
                              const int32_t* block_ids, int n_blocks, bf16* staging, int staging_blocks,
                              cudaStream_t stream);

// Host block i -> device pool block block_ids[i]. Every id must be in [0, geo.n_blocks); ids should be
// distinct (a repeated id ends with one of the copies, unspecified which).
Status scatter_blocks_from_host(bf16* pool, const bf16* host, const KvPoolGeometry& geo,
                                const int32_t* block_ids, int n_blocks, cudaStream_t stream);

}  // namespace agentserve::kernels::cuda
