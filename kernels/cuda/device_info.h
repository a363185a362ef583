// What CUDA devices this process can see. Used to decide whether CUDA tests and the CUDA backend can run;
// callers without a GPU get a count of zero and a reason, never a crash.
#pragma once

#include <string>

namespace agentserve::cuda {

struct DeviceInfo {
  int device_count = 0;
  std::string reason;  // why device_count is 0 (no driver, no device), empty otherwise
  std::string first_device_name;
  int first_device_sm = 0;  // e.g. 90 for Hopper
};

DeviceInfo query_devices();

}  // namespace agentserve::cuda
