// kernels/cuda/gemm against kernels/cpu/matmul's plain reference on odd shapes (rows 1, 3, 17, 300; in/out
// dims that are not multiples of 8), for BF16 and f32 weights, on the cuBLAS and the GEMV path, and the
// f32 -> BF16 conversion bit for bit.
#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "kernels/cpu/matmul.h"
#include "tests/cuda/device_array.h"

namespace agentserve::kernels::cuda {
namespace {

using testing::DeviceArray;

class Cublas {
 public:
  Cublas() { REQUIRE(cublasCreate(&handle_) == CUBLAS_STATUS_SUCCESS); }
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;
  ~Cublas() { cublasDestroy(handle_); }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

std::vector<float> random_floats(size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

std::vector<float> rounded_to_bf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(float_to_bf16(v[i]));
  return out;
}

std::vector<float> abs_of(std::vector<float> v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

struct Shape {
  int rows, in_dim, out_dim;
};

std::vector<Shape> odd_shapes() {
  std::vector<Shape> shapes;
  const int dims[][2] = {{64, 64}, {67, 129}, {255, 1000}, {2048, 768}, {1001, 2047}};
  for (int rows : {1, 3, 17, 300}) {
    for (const auto& d : dims) shapes.push_back({rows, d[0], d[1]});
  }
  return shapes;
}

const char* path_name(GemmPath p) {
  return p == GemmPath::kCublas ? "cublas" : p == GemmPath::kGemv ? "gemv" : "auto";
}

TEST_CASE("gemm with bf16 weights equals matmul_ref within f32 rounding of what each path multiplies") {
  std::mt19937 rng(11);
  Cublas cublas;
  for (const Shape& s : odd_shapes()) {
    CAPTURE(s.rows);
    CAPTURE(s.in_dim);
    CAPTURE(s.out_dim);
    const auto x = random_floats(static_cast<size_t>(s.rows) * s.in_dim, -2.0f, 2.0f, rng);
    const auto w_f32 = random_floats(static_cast<size_t>(s.out_dim) * s.in_dim, -1.0f, 1.0f, rng);
    const auto w = to_bf16(w_f32);

    // cuBLAS multiplies x rounded to bf16, the GEMV kernel x itself; both sum exactly-widened products in
    // f32. Each is compared with the double-accumulated product of its own operands within f32 summation
    // error (1e-4 of sum |x w|: TF32 or bf16 accumulation would be 10x off), and both with the exact
    // product within the bf16 bound of gemm.h.
    std::vector<float> y_rounded(static_cast<size_t>(s.rows) * s.out_dim);
    std::vector<float> y_exact(y_rounded.size());
    std::vector<float> magnitude(y_rounded.size());
    matmul_ref(y_rounded.data(), rounded_to_bf16(x).data(), w.data(), DType::kBF16, s.rows, s.in_dim,
               s.out_dim);
    matmul_ref(y_exact.data(), x.data(), w.data(), DType::kBF16, s.rows, s.in_dim, s.out_dim);
    const auto w_abs = abs_of(rounded_to_bf16(w_f32));
    matmul_ref(magnitude.data(), abs_of(x).data(), w_abs.data(), DType::kF32, s.rows, s.in_dim, s.out_dim);

    DeviceArray<float> dx(x);
    DeviceArray<bf16> dw(w);
    DeviceArray<float> dy(y_rounded.size());
    const size_t ws_bytes = gemm_workspace_bytes(s.rows, s.in_dim, DType::kBF16);
    DeviceArray<unsigned char> ws(ws_bytes);
    for (GemmPath path : {GemmPath::kCublas, GemmPath::kGemv, GemmPath::kAuto}) {
      CAPTURE(path_name(path));
      REQUIRE(cudaMemset(dy.get(), 0xff, y_rounded.size() * sizeof(float)) == cudaSuccess);  // NaNs
      REQUIRE(gemm(cublas.get(), nullptr, dy.get(), dx.get(), dw.get(), DType::kBF16, s.rows, s.in_dim,
                   s.out_dim, ws.get(), ws_bytes, path)
                  .ok());
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const auto y = dy.download();
      const bool rounds_x =
          path == GemmPath::kCublas || (path == GemmPath::kAuto && s.rows > kGemmGemvMaxRows);
      const auto& own = rounds_x ? y_rounded : y_exact;
      int bad_own = 0;
      int bad_exact = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        if (!(std::fabs(y[i] - own[i]) <= 1e-4 * magnitude[i] + 1e-6)) ++bad_own;
        if (!(std::fabs(y[i] - y_exact[i]) <= std::ldexp(1.0, -8) * magnitude[i] + 1e-6)) ++bad_exact;
      }
      CHECK(bad_own == 0);
      CHECK(bad_exact == 0);
    }
  }
}

TEST_CASE("gemm with f32 weights equals matmul_ref within f32 rounding on both paths") {
  std::mt19937 rng(12);
  Cublas cublas;
  for (const Shape& s : odd_shapes()) {
    CAPTURE(s.rows);
    CAPTURE(s.in_dim);
    CAPTURE(s.out_dim);
    const auto x = random_floats(static_cast<size_t>(s.rows) * s.in_dim, -2.0f, 2.0f, rng);
    const auto w = random_floats(static_cast<size_t>(s.out_dim) * s.in_dim, -1.0f, 1.0f, rng);
    std::vector<float> y_ref(static_cast<size_t>(s.rows) * s.out_dim);
    std::vector<float> magnitude(y_ref.size());
    matmul_ref(y_ref.data(), x.data(), w.data(), DType::kF32, s.rows, s.in_dim, s.out_dim);
    matmul_ref(magnitude.data(), abs_of(x).data(), abs_of(w).data(), DType::kF32, s.rows, s.in_dim,
               s.out_dim);

    DeviceArray<float> dx(x);
    DeviceArray<float> dw(w);
    DeviceArray<float> dy(y_ref.size());
    CHECK(gemm_workspace_bytes(s.rows, s.in_dim, DType::kF32) == 0);
    for (GemmPath path : {GemmPath::kCublas, GemmPath::kGemv}) {
      CAPTURE(path_name(path));
      REQUIRE(cudaMemset(dy.get(), 0xff, y_ref.size() * sizeof(float)) == cudaSuccess);
      REQUIRE(gemm(cublas.get(), nullptr, dy.get(), dx.get(), dw.get(), DType::kF32, s.rows, s.in_dim,
                   s.out_dim, nullptr, 0, path)
                  .ok());
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const auto y = dy.download();
      int bad = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        if (!(std::fabs(y[i] - y_ref[i]) <= 1e-4 * magnitude[i] + 1e-6)) ++bad;
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("gemm's GEMV path reads unaligned BF16 weights and activations") {
  std::mt19937 rng(14);
  Cublas cublas;
  const int rows = 5, in_dim = 64, out_dim = 33;
  const auto x = random_floats(static_cast<size_t>(rows) * in_dim + 1, -1.0f, 1.0f, rng);
  const auto w = to_bf16(random_floats(static_cast<size_t>(out_dim) * in_dim + 1, -1.0f, 1.0f, rng));
  std::vector<float> y_ref(static_cast<size_t>(rows) * out_dim);
  std::vector<float> magnitude(y_ref.size());
  matmul_ref(y_ref.data(), x.data() + 1, w.data() + 1, DType::kBF16, rows, in_dim, out_dim);
  std::vector<float> w_abs(w.size() - 1);
  for (size_t i = 0; i + 1 < w.size(); ++i) w_abs[i] = std::fabs(bf16_to_float(w[i + 1]));
  matmul_ref(magnitude.data(), abs_of({x.begin() + 1, x.end()}).data(), w_abs.data(), DType::kF32, rows,
             in_dim, out_dim);
  DeviceArray<float> dx(x);
  DeviceArray<bf16> dw(w);
  DeviceArray<float> dy(y_ref.size());
  REQUIRE(gemm(cublas.get(), nullptr, dy.get(), dx.get() + 1, dw.get() + 1, DType::kBF16, rows, in_dim,
               out_dim, nullptr, 0, GemmPath::kGemv)
              .ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto y = dy.download();
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i) bad += !(std::fabs(y[i] - y_ref[i]) <= 1e-4 * magnitude[i] + 1e-6);
  CHECK(bad == 0);
}

TEST_CASE("convert_f32_to_bf16 rounds to nearest even exactly like float_to_bf16") {
  std::mt19937 rng(13);
  auto x = random_floats(100003, -1e4f, 1e4f, rng);
  // Exact ties (the low 16 bits 0x8000) with both even and odd kept halves, zeros, extremes, denormals.
  const uint32_t specials[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x00000000u, 0x80000000u,
                               0x7f7fffffu, 0x00000001u, 0x00018000u, 0x7f800000u, 0xff800000u};
  for (size_t i = 0; i < std::size(specials); ++i) std::memcpy(&x[i], &specials[i], sizeof(float));
  DeviceArray<float> dx(x);
  DeviceArray<bf16> dy(x.size());
  REQUIRE(convert_f32_to_bf16(dy.get(), dx.get(), x.size(), nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto y = dy.download();
  int mismatches = 0;
  for (size_t i = 0; i < x.size(); ++i) mismatches += y[i].bits != float_to_bf16(x[i]).bits;
  CHECK(mismatches == 0);
}

TEST_CASE("gemm refuses a workspace smaller than gemm_workspace_bytes and bad shapes") {
  Cublas cublas;
  DeviceArray<float> buf(64 * 64);
  const size_t needed = gemm_workspace_bytes(3, 64, DType::kBF16);
  CHECK(needed == 3 * 64 * sizeof(bf16));
  CHECK(gemm(cublas.get(), nullptr, buf.get(), buf.get(), buf.get(), DType::kBF16, 3, 64, 64, buf.get(),
             needed - 1, GemmPath::kCublas)
            .code() == StatusCode::kInvalidArgument);
  CHECK(gemm(cublas.get(), nullptr, buf.get(), buf.get(), buf.get(), DType::kF32, 3, 0, 64, nullptr, 0)
            .code() == StatusCode::kInvalidArgument);
  CHECK(
      gemm(cublas.get(), nullptr, buf.get(), buf.get(), buf.get(), DType::kF32, 0, 64, 64, nullptr, 0).ok());
}

}  // namespace
}  // namespace agentserve::kernels::cuda
