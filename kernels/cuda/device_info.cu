#include "kernels/cuda/device_info.h"

#include <cuda_runtime.h>

namespace agentserve::cuda {

DeviceInfo query_devices() {
  DeviceInfo info;
  cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.reason = cudaGetErrorString(err);
    return info;
  }
  if (info.device_count == 0) {
    info.reason = "no CUDA device";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    info.first_device_name = prop.name;
    info.first_device_sm = prop.major * 10 + prop.minor;
  }
  return info;
}

}  // namespace agentserve::cuda
