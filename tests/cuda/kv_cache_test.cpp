// The bf16 KV pool on the GPU: kv_write puts each token's K/V at its slot (rounded like base/bf16.h,
// strided rows, skipped slots untouched), and whole blocks gather to and scatter from pinned host memory
// on a stream, with runs of consecutive ids, gather into pageable memory through a pinned staging buffer of
// any size, and refuse ids outside the pool; through CudaBackend, written
// blocks download and upload back bit for bit, and a failed op surfaces once at synchronize().
#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/bf16.h"
#include "engine/cuda/cuda_backend.h"
#include "kernels/cuda/block_copy.h"
#include "kernels/cuda/kv_cache.h"
#include "tests/cuda/device_array.h"

namespace agentserve {
namespace {

using testing::DeviceArray;
namespace kc = kernels::cuda;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool same_bits(bf16 a, bf16 b) {
  return a.bits == b.bits;
}

// Page-locked host memory, freed on scope exit.
class PinnedBlocks {
 public:
  explicit PinnedBlocks(size_t elems) : elems_(elems) {
    REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&data_), elems * sizeof(bf16), cudaHostAllocDefault) ==
            cudaSuccess);
    std::memset(data_, 0, elems * sizeof(bf16));
  }
  ~PinnedBlocks() { cudaFreeHost(data_); }
  PinnedBlocks(const PinnedBlocks&) = delete;
  PinnedBlocks& operator=(const PinnedBlocks&) = delete;
  bf16* get() const { return data_; }
  size_t size() const { return elems_; }

 private:
  bf16* data_ = nullptr;
  size_t elems_;
};

TEST_CASE("kv_write stores each token's K and V in bf16 at its slot and skips negative or foreign slots") {
  for (int head_dim : {64, 128}) {
    CAPTURE(head_dim);
    const auto geo = kc::KvPoolGeometry::packed(/*n_layers=*/3, /*n_kv_heads=*/2, /*block_size=*/16, head_dim,
                                                /*n_blocks=*/5);
    const int layer = 1;
    const size_t row = static_cast<size_t>(geo.n_kv_heads) * head_dim;
    const size_t stride = row + 24;  // K inside a wider (fused) row
    // Slots: the start of block 3, mid-block, the last slot of the pool, a skip, one past the pool.
    const std::vector<int32_t> slots = {48, 17, 79, -1, 80, 0, 31};
    const int n = static_cast<int>(slots.size());
    const auto k = random_floats(stride * n, 41 + head_dim);
    const auto v = random_floats(stride * n, 43 + head_dim);
    DeviceArray<bf16> pool(geo.block_stride * geo.n_blocks);
    DeviceArray<float> d_k(k), d_v(v);
    DeviceArray<int32_t> d_slots(slots);
    REQUIRE(
        kc::kv_write(pool.get(), geo, layer, d_k.get(), d_v.get(), stride, d_slots.get(), n, nullptr).ok());
    const auto got = pool.download();

    std::vector<bf16> expected(got.size(), bf16{0});
    for (int t = 0; t < n; ++t) {
      const int slot = slots[static_cast<size_t>(t)];
      if (slot < 0 || slot / geo.block_size >= geo.n_blocks) continue;
      const size_t base = static_cast<size_t>(slot / geo.block_size) * geo.block_stride;
      for (int h = 0; h < geo.n_kv_heads; ++h) {
        for (int d = 0; d < head_dim; ++d) {
          const size_t at = (static_cast<size_t>(h) * geo.block_size + slot % geo.block_size) * head_dim + d;
          const size_t src = stride * t + static_cast<size_t>(h) * head_dim + d;
          expected[base + geo.k_offset(layer) + at] = float_to_bf16(k[src]);
          expected[base + geo.v_offset(layer) + at] = float_to_bf16(v[src]);
        }
      }
    }
    size_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) mismatches += same_bits(got[i], expected[i]) ? 0 : 1;
    CHECK(mismatches == 0);
  }
}

TEST_CASE("kv_write and the pool geometry reject bad arguments") {
  DeviceArray<bf16> pool(1024);
  DeviceArray<float> k(64);
  DeviceArray<int32_t> slots(1);
  auto geo = kc::KvPoolGeometry::packed(1, 1, 4, 63, 1);
  CHECK_FALSE(geo.validate().ok());  // odd head_dim
  geo = kc::KvPoolGeometry::packed(1, 1, 4, 64, 1);
  CHECK(geo.validate().ok());
  CHECK_FALSE(kc::kv_write(pool.get(), geo, 1, k.get(), k.get(), 64, slots.get(), 1, nullptr).ok());  // layer
  CHECK_FALSE(
      kc::kv_write(pool.get(), geo, 0, k.get(), k.get(), 32, slots.get(), 1, nullptr).ok());  // stride
  CHECK(kc::kv_write(pool.get(), geo, 0, k.get(), k.get(), 64, slots.get(), 0, nullptr).ok());
  geo.block_stride = geo.block_elems() - 1;
  CHECK_FALSE(geo.validate().ok());
}

TEST_CASE(
    "blocks gather to pinned host memory (or to pageable memory through pinned staging) and scatter back "
    "bit for bit, packed and strided pools") {
  for (const size_t pad : {size_t{0}, size_t{32}}) {
    CAPTURE(pad);
    auto geo = kc::KvPoolGeometry::packed(2, 2, 16, 64, 12);
    geo.block_stride += pad;
    std::vector<bf16> pool_host(geo.block_stride * geo.n_blocks);
    std::mt19937 rng(47);
    for (bf16& x : pool_host) x = float_to_bf16(std::uniform_real_distribution<float>(-1, 1)(rng));
    DeviceArray<bf16> pool(pool_host);
    const std::vector<int32_t> ids = {3, 4, 5, 9, 0, 11, 10};  // runs 3..5 and single blocks
    const size_t elems = geo.block_elems();
    PinnedBlocks host(ids.size() * elems);
    cudaStream_t stream = nullptr;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    REQUIRE(kc::gather_blocks_to_host(host.get(), pool.get(), geo, ids.data(), static_cast<int>(ids.size()),
                                      stream)
                .ok());
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    size_t mismatches = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      for (size_t e = 0; e < elems; ++e) {
        mismatches += same_bits(host.get()[i * elems + e],
                                pool_host[static_cast<size_t>(ids[i]) * geo.block_stride + e])
                          ? 0
                          : 1;
      }
    }
    CHECK(mismatches == 0);

    // Into pageable memory through a pinned staging buffer of 1, 2, 3 and 7 blocks (one staging-full, or
    // several with a short last one): the same bytes as the direct gather.
    for (int staging_blocks : {1, 2, 3, 7}) {
      CAPTURE(staging_blocks);
      PinnedBlocks staging(static_cast<size_t>(staging_blocks) * elems);
      std::vector<bf16> pageable(ids.size() * elems);
      REQUIRE(kc::download_blocks_staged(pageable.data(), pool.get(), geo, ids.data(),
                                         static_cast<int>(ids.size()), staging.get(), staging_blocks, stream)
                  .ok());
      CHECK(std::memcmp(pageable.data(), host.get(), pageable.size() * sizeof(bf16)) == 0);
    }
    std::vector<bf16> pageable(ids.size() * elems);
    CHECK(kc::download_blocks_staged(pageable.data(), pool.get(), geo, ids.data(),
                                     static_cast<int>(ids.size()), nullptr, 0, stream)
              .code() == StatusCode::kInvalidArgument);

    // Scatter into other blocks of a zeroed pool: exactly those blocks' bytes change.
    DeviceArray<bf16> other(pool_host.size());
    const std::vector<int32_t> targets = {7, 8, 9, 1, 2, 6, 0};
    REQUIRE(kc::scatter_blocks_from_host(other.get(), host.get(), geo, targets.data(),
                                         static_cast<int>(targets.size()), stream)
                .ok());
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const auto got = other.download();
    std::vector<bf16> expected(pool_host.size(), bf16{0});
    for (size_t i = 0; i < targets.size(); ++i) {
      for (size_t e = 0; e < elems; ++e) {
        expected[static_cast<size_t>(targets[i]) * geo.block_stride + e] =
            pool_host[static_cast<size_t>(ids[i]) * geo.block_stride + e];
      }
    }
    mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) mismatches += same_bits(got[i], expected[i]) ? 0 : 1;
    CHECK(mismatches == 0);

    const std::vector<int32_t> bad = {1, 12};
    CHECK(kc::gather_blocks_to_host(host.get(), pool.get(), geo, bad.data(), 2, stream).code() ==
          StatusCode::kOutOfRange);
    cudaStreamDestroy(stream);
  }
}

TEST_CASE(
    "CudaBackend: kv_write, download_blocks and upload_blocks round-trip bf16 blocks; errors surface at "
    "synchronize") {
  std::string why;
  auto backend = engine::CudaBackend::create(&why);
  REQUIRE_MESSAGE(backend != nullptr, why);
  const engine::KvCacheShape shape{
      .n_layers = 2, .n_kv_heads = 2, .head_dim = 64, .block_size = 16, .num_blocks = 6};
  auto cache_or = backend->create_kv_cache(shape);
  REQUIRE(cache_or.ok());
  engine::KvCache& cache = *cache_or.value();
  CHECK(cache.dtype() == kernels::DType::kBF16);
  CHECK(cache.host_block_bytes() == backend->kv_block_bytes(shape));
  CHECK(cache.host_block_bytes() == static_cast<size_t>(2 * 2 * 2 * 16 * 64) * sizeof(bf16));

  // Tokens 0..19 of a sequence in blocks 4 (slots 64..79) and 1 (slots 16..19), layer 1.
  const int n = 20;
  const size_t row = 2 * 64;
  const auto k = random_floats(row * n, 53);
  const auto v = random_floats(row * n, 59);
  std::vector<int32_t> slots(n);
  for (int t = 0; t < n; ++t) slots[static_cast<size_t>(t)] = t < 16 ? 64 + t : 16 + (t - 16);
  auto buffer = [&](size_t bytes) {
    auto b = backend->allocate(bytes);
    REQUIRE(b.ok());
    return std::move(b).value();
  };
  engine::DeviceBuffer d_k = buffer(k.size() * sizeof(float));
  engine::DeviceBuffer d_v = buffer(v.size() * sizeof(float));
  engine::DeviceBuffer d_slots = buffer(slots.size() * sizeof(int32_t));
  backend->upload(d_k.data(), k.data(), k.size() * sizeof(float));
  backend->upload(d_v.data(), v.data(), v.size() * sizeof(float));
  backend->upload(d_slots.data(), slots.data(), slots.size() * sizeof(int32_t));
  backend->kv_write(cache, 1, d_k.as<float>(), d_v.as<float>(), d_slots.as<int32_t>(), n);

  const std::vector<int32_t> ids = {4, 1};
  const size_t elems = cache.host_block_bytes() / sizeof(bf16);
  std::vector<bf16> host(ids.size() * elems);
  REQUIRE(backend->download_blocks(host.data(), cache, ids).ok());
  const auto geo = kc::KvPoolGeometry::packed(2, 2, 16, 64, 6);
  size_t mismatches = 0;
  for (int t = 0; t < n; ++t) {
    const size_t block = t < 16 ? 0 : 1;
    const int offset = t < 16 ? t : t - 16;
    for (int h = 0; h < 2; ++h) {
      for (int d = 0; d < 64; ++d) {
        const size_t at = block * elems + (static_cast<size_t>(h) * 16 + offset) * 64 + d;
        const size_t src = row * t + static_cast<size_t>(h) * 64 + d;
        mismatches += same_bits(host[geo.k_offset(1) + at], float_to_bf16(k[src])) ? 0 : 1;
        mismatches += same_bits(host[geo.v_offset(1) + at], float_to_bf16(v[src])) ? 0 : 1;
        mismatches += host[geo.k_offset(0) + at].bits == 0 ? 0 : 1;  // layer 0 untouched
      }
    }
  }
  CHECK(mismatches == 0);

  // Upload both into blocks 0 and 5, download those: the same bytes.
  const std::vector<int32_t> targets = {0, 5};
  backend->upload_blocks(cache, targets, host.data());
  std::vector<bf16> again(host.size());
  REQUIRE(backend->download_blocks(again.data(), cache, targets).ok());
  CHECK(std::memcmp(again.data(), host.data(), host.size() * sizeof(bf16)) == 0);
  CHECK(backend->synchronize().ok());

  // A layer outside the cache fails the op; synchronize reports it once.
  backend->kv_write(cache, 2, d_k.as<float>(), d_v.as<float>(), d_slots.as<int32_t>(), n);
  CHECK_FALSE(backend->synchronize().ok());
  CHECK(backend->synchronize().ok());
}

}  // namespace
}  // namespace agentserve
