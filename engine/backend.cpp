#include "engine/backend.h"

#include <utility>

#if defined(AGENTSERVE_HAVE_CUDA)
#include "kernels/cuda/device_info.h"
#if __has_include("engine/cuda/cuda_backend.h")
#include "engine/cuda/cuda_backend.h"
#define AGENTSERVE_HAVE_CUDA_BACKEND 1
#endif
#endif

namespace agentserve::engine {

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : backend_(std::exchange(other.backend_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    backend_ = std::exchange(other.backend_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  release();
}

void DeviceBuffer::release() {
  if (backend_ != nullptr && data_ != nullptr) backend_->deallocate(data_, bytes_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

std::vector<std::unique_ptr<Backend>> make_backends(ThreadPool& cpu_pool) {
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(make_cpu_backend(cpu_pool));
#if defined(AGENTSERVE_HAVE_CUDA_BACKEND)
  if (cuda::query_devices().device_count > 0) {
    if (auto cuda_backend = make_cuda_backend()) backends.push_back(std::move(cuda_backend));
  }
#endif
  return backends;
}

}  // namespace agentserve::engine
