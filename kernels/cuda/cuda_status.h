// A CUDA runtime error as a Status: the one conversion every launcher, the CUDA backend and the NCCL
// communicator use, so an error reads the same wherever it surfaces ("<what>: <cudaGetErrorString>").
// It never clears or waits for anything but what its caller passes. This header compiles with g++.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "base/status.h"

namespace agentserve::kernels::cuda {

// Ok for cudaSuccess, otherwise an internal error naming `what`.
inline Status cuda_status(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return Status::ok_status();
  return Status::internal(std::string(what) + ": " + cudaGetErrorString(err));
}

// What a launcher returns after its launches: the launch error, if any (cudaGetLastError also clears it, so
// the next launcher does not report it again).
inline Status launch_status(std::string_view what) {
  return cuda_status(cudaGetLastError(), what);
}

}  // namespace agentserve::kernels::cuda
