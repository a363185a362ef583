// Rotary position embedding in the rotate-half layout of Hugging Face transformers (Qwen3), with the
// optional YaRN frequency scaling. The tables are built the way transformers builds them, in float32
// where it computes in float32, so a position's angle rounds the same way (it matters at 100k+ tokens).
// Pure math on pointers; only rope_inv_freq allocates (its result is built once at model load).
//
//   inv_freq[j] = 1 / theta^(2j / head_dim)                (YaRN: blended, see rope_inv_freq)
//   angle[t, j] = float(position[t]) * inv_freq[j]         (f32 product, as transformers does)
//   cos[t, j] = cos(angle) * attention_factor,  sin[t, j] = sin(angle) * attention_factor
//   for each head vector v of length head_dim, half = head_dim / 2, j < half:
//     v'[j]        = v[j] * cos[t, j] - v[j + half] * sin[t, j]
//     v'[j + half] = v[j + half] * cos[t, j] + v[j] * sin[t, j]
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace agentserve::kernels {

// rope_scaling {"rope_type": "yarn", ...} from config.json. `factor` is taken as given: transformers
// 4.5x derived it from max_position_embeddings / original_max_position_embeddings when the latter is
// set, the current release uses rope_scaling.factor; the caller decides which it follows.
struct YarnScaling {
  double factor = 1.0;
  int original_max_position = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // default 0.1 * ln(factor) + 1 when factor > 1, else 1
  bool truncate = true;                    // floor/ceil the correction range (transformers' default)
};

// head_dim / 2 inverse frequencies for a head_dim (even, >= 2) and base theta; yarn may be null (plain
// RoPE). YaRN, as transformers' _compute_yarn_parameters: low/high = the dims where a wavelength makes
// beta_fast / beta_slow turns over original_max_position (floored/ceiled, clamped to [0, head_dim-1]);
// a linear ramp over j between them blends inv_freq/factor (interpolation, long wavelengths) into
// inv_freq (extrapolation, short wavelengths).
std::vector<float> rope_inv_freq(int head_dim, double theta, const YarnScaling* yarn);

// The factor cos and sin are multiplied by: 1 without YaRN.
float rope_attention_factor(const YarnScaling* yarn);

// cos, sin [n_tokens, half_dim]: the halves repeat, so only one is stored. Positions may be any int32
// (negative ones too, for tests); cos/sin are computed from the f32 angle in double and rounded, so
// they are within half an ulp of the exact value for that angle. Runs once per token per step on
// half_dim values; there is no separate fast version.
void rope_cos_sin(float* cos, float* sin, const int32_t* positions, int n_tokens, const float* inv_freq,
                  int half_dim, float attention_factor);

// In place on x: token t's heads start at x + t * token_stride (floats; >= n_heads * head_dim, so q can
// live inside a fused qkv row), head h at + h * head_dim. head_dim even; cos/sin from rope_cos_sin.
void apply_rope_ref(float* x, int n_tokens, int n_heads, int head_dim, size_t token_stride, const float* cos,
                    const float* sin);
// Plain f32 loops the compiler vectorises, with FMA contraction off so each product and the sum round
// like transformers' q * cos + rotate_half(q) * sin: bit-identical for the same tables.
void apply_rope(float* x, int n_tokens, int n_heads, int head_dim, size_t token_stride, const float* cos,
                const float* sin);

}  // namespace agentserve::kernels
