// kernels/cuda/random_fill: the device tensor equals hash_uniform on the host bit for bit (so a benchmark's
// model can be rebuilt anywhere), in f32 and BF16, and its values cover [-scale, scale) evenly.
#include "kernels/cuda/random_fill.h"

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "base/bf16.h"

namespace agentserve::kernels::cuda {
namespace {

TEST_CASE("fill_uniform writes hash_uniform(seed, i) * scale, f32 and bf16, on any length") {
  for (size_t n : {size_t{1}, size_t{255}, size_t{1000003}}) {
    CAPTURE(n);
    void* dev = nullptr;
    REQUIRE(cudaMalloc(&dev, n * sizeof(float)) == cudaSuccess);
    REQUIRE(fill_uniform(dev, DType::kF32, n, 7, 0.25f, nullptr).ok());
    std::vector<float> f(n);
    REQUIRE(cudaMemcpy(f.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(fill_uniform(dev, DType::kBF16, n, 8, 3.0f, nullptr).ok());
    std::vector<bf16> b(n);
    REQUIRE(cudaMemcpy(b.data(), dev, n * sizeof(bf16), cudaMemcpyDeviceToHost) == cudaSuccess);
    cudaFree(dev);
    int bad_f32 = 0, bad_bf16 = 0;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      bad_f32 += f[i] != hash_uniform(7, i) * 0.25f;
      bad_bf16 += b[i].bits != float_to_bf16(hash_uniform(8, i) * 3.0f).bits;
      bad_f32 += !(f[i] >= -0.25f && f[i] < 0.25f);
      sum += f[i];
    }
    CHECK(bad_f32 == 0);
    CHECK(bad_bf16 == 0);
    if (n > 100000) CHECK(std::fabs(sum / static_cast<double>(n)) < 0.25 * 0.01);
  }
}

TEST_CASE("hash_uniform gives different streams for different seeds") {
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += hash_uniform(1, i) == hash_uniform(2, i);
  CHECK(same < 5);
}

}  // namespace
}  // namespace agentserve::kernels::cuda
