#include <cstdio>
#include <thread>

#include "server/commands.h"
#ifdef AGENTSERVE_HAVE_CUDA
#include "kernels/cuda/device_info.h"
#endif

namespace agentserve::cli {

void add_info_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("info", "Print build and machine facts (CPU features, CUDA devices)");
  cmd->callback([&exit_code] {
    std::printf("agentserve %s\n", AGENTSERVE_VERSION);
    std::printf("hardware threads: %u\n", std::thread::hardware_concurrency());
#if defined(__AVX512BF16__)
    std::printf("cpu kernels: AVX-512 with BF16 dot products\n");
#elif defined(__AVX512F__)
    std::printf("cpu kernels: AVX-512\n");
#elif defined(__AVX2__)
    std::printf("cpu kernels: AVX2\n");
#else
    std::printf("cpu kernels: portable scalar\n");
#endif
#ifdef AGENTSERVE_HAVE_CUDA
    const auto devices = cuda::query_devices();
    if (devices.device_count > 0) {
      std::printf("cuda: %d device(s); first: %s (sm_%d)\n", devices.device_count,
                  devices.first_device_name.c_str(), devices.first_device_sm);
    } else {
      std::printf("cuda: built, no usable device (%s)\n", devices.reason.c_str());
    }
#else
    std::printf("cuda: not built (nvcc was not found at configure time)\n");
#endif
    exit_code = 0;
  });
}

}  // namespace agentserve::cli
