// CUDA device check: the entry point of the CUDA test suite. Without a usable GPU it says why and exits
// with CTest's skip code, so a CPU-only run reports the CUDA tests as skipped, never as passed.
#include <cstdio>

#include "kernels/cuda/device_info.h"

int main() {
  constexpr int kSkip = 77;
  const auto info = agentserve::cuda::query_devices();
  if (info.device_count == 0) {
    std::printf("CUDA tests skipped: no usable GPU (%s)\n", info.reason.c_str());
    return kSkip;
  }
  std::printf("CUDA: %d device(s); first: %s (sm_%d)\n", info.device_count, info.first_device_name.c_str(),
              info.first_device_sm);
  if (info.first_device_sm < 80) {
    std::printf("FAIL: the build targets sm_80 and sm_90; this device is sm_%d\n", info.first_device_sm);
    return 1;
  }
  return 0;
}
