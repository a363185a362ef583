// The host blocks paged_attention_ref reads, built from position-major K/V rows ([position][kv head * dim]):
// what backend attention tests compare a paged KV cache against.
#pragma once

#include <cstddef>
#include <vector>

namespace agentserve::testing {

struct ReferenceKvBlocks {
  std::vector<std::vector<float>> k, v;  // per block of the sequence: [kv head][slot][dim]
  std::vector<const float*> k_blocks, v_blocks;  // paged_attention_ref's block tables
};

inline ReferenceKvBlocks reference_kv_blocks(const std::vector<float>& k, const std::vector<float>& v, int ctx,
                                             int n_kv_heads, int head_dim, int block_size) {
  const size_t kv_row = static_cast<size_t>(n_kv_heads) * static_cast<size_t>(head_dim);
  const size_t n_blocks = static_cast<size_t>((ctx + block_size - 1) / block_size);
  ReferenceKvBlocks out;
  out.k.assign(n_blocks, std::vector<float>(static_cast<size_t>(block_size) * kv_row));
  out.v = out.k;
  for (int p = 0; p < ctx; ++p)
    for (int h = 0; h < n_kv_heads; ++h)
      for (int d = 0; d < head_dim; ++d) {
        const size_t dst =
            (static_cast<size_t>(h) * static_cast<size_t>(block_size) + static_cast<size_t>(p % block_size)) *
                static_cast<size_t>(head_dim) +
            static_cast<size_t>(d);
        const size_t src = static_cast<size_t>(p) * kv_row + static_cast<size_t>(h * head_dim + d);
        out.k[static_cast<size_t>(p / block_size)][dst] = k[src];
        out.v[static_cast<size_t>(p / block_size)][dst] = v[src];
      }
  for (size_t i = 0; i < n_blocks; ++i) {
    out.k_blocks.push_back(out.k[i].data());
    out.v_blocks.push_back(out.v[i].data());
  }
  return out;
}

}  // namespace agentserve::testing
