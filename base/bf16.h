// bfloat16 <-> float conversion. bf16 is the top half of an IEEE float; converting down rounds to
// nearest even (what PyTorch and the hardware do) and keeps NaN a NaN.
#pragma once

#include <cstdint>
#include <cstring>

namespace agentserve {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

inline float bf16_to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// IEEE half precision, for F16 checkpoints.
float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);

}  // namespace agentserve
