#include "memory/kv_layout.h"

#include <doctest/doctest.h>

namespace agentserve::memory {
namespace {

TEST_CASE("Qwen3-30B-A3B's KV block is 3 MiB in f32, layer after layer, K before V") {
  KvLayout l{.n_layers = 48, .n_kv_heads = 4, .head_dim = 128, .block_size = 16};
  REQUIRE(l.validate().ok());
  CHECK(l.tensor_bytes() == 4 * 16 * 128 * 4);
  CHECK(l.block_bytes() == 48u * 2 * 4 * 16 * 128 * 4);
  CHECK(l.block_bytes() == 3u * 1024 * 1024);
  CHECK(l.block_stride() == l.block_bytes());
  CHECK(l.k_offset(0) == 0);
  CHECK(l.v_offset(0) == l.tensor_bytes());
  CHECK(l.k_offset(1) == 2 * l.tensor_bytes());
  CHECK(l.v_offset(47) + l.tensor_bytes() == l.block_bytes());
  CHECK(l.row_index(1, 0) == 16 * 128);
  CHECK(l.row_index(3, 15) == (3 * 16 + 15) * 128);
}

TEST_CASE("odd shapes pad the block stride to 64 bytes") {
  KvLayout l{.n_layers = 3, .n_kv_heads = 1, .head_dim = 3, .block_size = 1};
  REQUIRE(l.validate().ok());
  CHECK(l.block_bytes() == 3 * 2 * 3 * 4);  // 72
  CHECK(l.block_stride() == 128);
  CHECK(l.blocks_that_fit(1000) == 7);
  CHECK(l.blocks_that_fit(127) == 0);
}

TEST_CASE("blocks_that_fit divides a byte budget by the stride and caps at int") {
  KvLayout l{.n_layers = 1, .n_kv_heads = 1, .head_dim = 8, .block_size = 1};  // 64 bytes
  CHECK(l.blocks_that_fit(64 * 1000 + 63) == 1000);
  CHECK(l.blocks_that_fit(size_t{1} << 40) == INT32_MAX);
  CHECK(KvLayout{}.blocks_that_fit(1 << 20) == 0);
}

TEST_CASE("validate rejects non-positive sizes and blocks past 1 TiB") {
  CHECK(KvLayout{}.validate().code() == StatusCode::kInvalidArgument);
  CHECK(KvLayout{.n_layers = 1, .n_kv_heads = -1, .head_dim = 8, .block_size = 16}.validate().code() ==
        StatusCode::kInvalidArgument);
  KvLayout huge{.n_layers = 1 << 30, .n_kv_heads = 1 << 30, .head_dim = 1 << 30, .block_size = 1 << 30};
  CHECK(huge.validate().code() == StatusCode::kOutOfRange);
  CHECK(KvLayout{.n_layers = 1, .n_kv_heads = 1, .head_dim = 1, .block_size = 1}.validate().ok());
}

}  // namespace
}  // namespace agentserve::memory
