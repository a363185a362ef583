// Internal SIMD building blocks shared by the kernel files (kernels/cpu/*.cpp): BF16 loads, a vector
// exp, lane reductions, a 16x16 transpose, and the name of the instruction-set path this build took.
// Only kernel sources include this header; it holds no kernel and must never be part of an API.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
// GCC 12's _mm512_undefined_ps() self-initialises, and -Wuninitialized then fires inside the intrinsics
// headers wherever a shuffle is inlined (GCC bug 105593). The pragma covers only the header's lines.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace agentserve::kernels::simd {

// The path the fast kernels were compiled for, for logs and benchmarks.
constexpr const char* isa_name() {
#if defined(__AVX512BF16__)
  return "avx512f+avx512bf16";
#elif defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__)
  return "portable (compiler-vectorised, avx2)";
#else
  return "portable (compiler-vectorised)";
#endif
}

// BF16 is the top half of an f32, so widening is a shift: exact, and cheap enough to do per load.
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// For a loop that calls exp_portable: GCC (with its default -ftrapping-math) duplicates the loop body
// for the clamped constant case and then refuses to vectorise the branches. The kernels never enable
// floating-point exceptions, so telling it the arithmetic does not trap is true and lets it vectorise.
#if defined(__GNUC__) && !defined(__clang__)
#define AGENTSERVE_VECTORISE_EXP __attribute__((optimize("no-trapping-math")))
#else
#define AGENTSERVE_VECTORISE_EXP
#endif

// e^x in plain f32 code the compiler vectorises (no libm call in the loop): the polynomial of exp16
// below, with 2^n assembled in the exponent bits. x is clamped to [-87.3, 88.3] so the result stays a
// normal float (2^n with n in [-126, 127]): e^x for x < -87.3 comes out as about 1e-38 instead of a
// subnormal or 0, and x > 88.3 saturates at 2.2e38 instead of inf. About 2 ulp inside the range.
AGENTSERVE_VECTORISE_EXP inline float exp_portable(float x) {
  // NaN passes both selects.
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  // Round x / ln2 to nearest with the 1.5 * 2^23 trick (exact for |v| < 2^22).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#if defined(__AVX512F__)

// A prefetch into L2 the optimiser cannot drop: GCC treats _mm_prefetch as free of side effects, so a
// helper that only prefetches is deemed pure and its calls are deleted.
inline void prefetch_l2(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
}

// Mask of the first n lanes (0 <= n <= 16).
inline __mmask16 first_lanes(int n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}

inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
inline __m512 load16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const uint16_t* p, __mmask16 m) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
  alignas(64) uint16_t tmp[16] = {};
  for (int i = 0; i < 16; ++i)
    if (m & (1u << i)) tmp[i] = p[i];
  return load16(tmp);
#endif
}

// e^x for 16 lanes, about 2 ulp (Cephes expf polynomial on the reduced argument; scalef rebuilds 2^n
// so overflow gives +inf and deep underflow 0 without branches). NaN stays NaN.
inline __m512 exp16(__m512 x) {
  // Clamp where e^x is already inf (x > 88.8) or below the smallest subnormal (x < -104); the operand
  // order makes a NaN x pass through max/min unchanged.
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split in a high part with few mantissa bits (n * hi is exact) and the rest.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Horizontal sum and max of 16 lanes. (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized inside its
// own header, so these stay on full-width shuffles.)
inline float reduce_add(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));  // swap 256-bit halves
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // swap 128-bit quarters
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));        // swap lane pairs
  v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));        // swap neighbours
  return _mm512_cvtss_f32(v);
}
inline float reduce_max(__m512 v) {
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4E));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0xB1));
  return _mm512_cvtss_f32(v);
}

// 16 vectors in, one vector out whose lane i is the sum of the lanes of v[i]. Four halving rounds of
// 16 ops: about one op per result instead of a full horizontal reduction each.
inline __m512 transpose_sum16(const __m512* v) {
  __m512 a[8], b[4], c[2];
  // Round 1: pair (v[2i], v[2i+1]); lanes 0-7 of each 256-bit half fold into one vector.
  for (int i = 0; i < 8; ++i) {
    const __m512 lo = _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44);  // v0.q0 v0.q1 v1.q0 v1.q1
    const __m512 hi = _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE);  // v0.q2 v0.q3 v1.q2 v1.q3
    a[i] = _mm512_add_ps(lo, hi);  // [v0 partial(8 lanes) | v1 partial(8 lanes)]
  }
  // Round 2: each 256-bit half folds its 128-bit quarters; pairs a[2i], a[2i+1].
  for (int i = 0; i < 4; ++i) {
    const __m512 lo = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88);  // quarters 0,2 of each
    const __m512 hi = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD);  // quarters 1,3 of each
    b[i] = _mm512_add_ps(lo, hi);  // quarter q holds 4 partial lanes of source vector (4i + q)
  }
  // Round 3: within each 128-bit quarter fold pairs of lanes, merging b[2i] and b[2i+1].
  for (int i = 0; i < 2; ++i) {
    const __m512 lo = _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44);  // lanes 0,1 of each quarter
    const __m512 hi = _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE);  // lanes 2,3 of each quarter
    c[i] = _mm512_add_ps(lo, hi);
  }
  // Round 4: fold the last pair of lanes. Lane 4q+j now holds the sum of v[4j+q]; one permute puts
  // the sum of v[i] in lane i.
  const __m512 lo = _mm512_shuffle_ps(c[0], c[1], 0x88);
  const __m512 hi = _mm512_shuffle_ps(c[0], c[1], 0xDD);
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, _mm512_add_ps(lo, hi));
}

// In-place 16x16 transpose of f32 rows r[0..15].
inline void transpose16x16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

#endif  // __AVX512F__

}  // namespace agentserve::kernels::simd
