// A typed device allocation for the CUDA kernel tests: cudaMalloc'd on construction (REQUIRE fails the
// test when it cannot be), filled from and read back to std::vector, freed on scope exit.
#pragma once

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cstddef>
#include <vector>

namespace agentserve::testing {

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&data_), (n ? n : 1) * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemset(data_, 0, (n ? n : 1) * sizeof(T)) == cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(data_); }

  T* get() const { return data_; }
  size_t size() const { return n_; }

  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == n_);
    REQUIRE(cudaMemcpy(data_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  // Waits for all device work first, so a kernel's result (or its asynchronous error) is seen here.
  std::vector<T> download() const {
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> host(n_);
    REQUIRE(cudaMemcpy(host.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return host;
  }

 private:
  T* data_ = nullptr;
  size_t n_ = 0;
};

}  // namespace agentserve::testing
