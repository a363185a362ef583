// The main of every CUDA test binary: doctest runs only when a usable GPU is visible. Otherwise the binary
// prints why and exits 77, which CTest reports as "skipped", so a CPU-only run never counts these tests as
// passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "kernels/cuda/device_info.h"

int main(int argc, char** argv) {
  constexpr int kSkip = 77;
  const auto info = agentserve::cuda::query_devices();
  if (info.device_count == 0) {
    std::printf("CUDA test skipped: no usable GPU (%s)\n", info.reason.c_str());
    return kSkip;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
