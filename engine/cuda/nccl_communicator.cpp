// engine/cuda/ is compiled whenever CUDA is found; NCCL is optional on top of it (engine/CMakeLists.txt
// defines AGENTSERVE_HAVE_NCCL when libnccl is there), so without it this file compiles to nothing.
#if defined(AGENTSERVE_HAVE_NCCL)

#include "engine/cuda/nccl_communicator.h"

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/cuda_status.h"

namespace agentserve::engine {
namespace {

Status nccl_status(ncclResult_t result, const std::string& what) {
  if (result == ncclSuccess) return Status::ok_status();
  return Status::internal(what + ": " + ncclGetErrorString(result));
}

}  // namespace

using kernels::cuda::cuda_status;

Result<std::vector<std::unique_ptr<NcclCommunicator>>> NcclCommunicator::create_group(
    std::span<const int> devices) {
  if (devices.empty()) return Status::invalid_argument("NcclCommunicator::create_group: no devices");
  int visible = 0;
  AS_RETURN_IF_ERROR(cuda_status(cudaGetDeviceCount(&visible), "cudaGetDeviceCount"));
  for (size_t i = 0; i < devices.size(); ++i) {
    if (devices[i] < 0 || devices[i] >= visible) {
      return Status::invalid_argument("NcclCommunicator::create_group: device " + std::to_string(devices[i]) +
                                      " is not one of the " + std::to_string(visible) + " visible");
    }
    for (size_t j = 0; j < i; ++j) {
      if (devices[j] == devices[i]) {
        return Status::invalid_argument("NcclCommunicator::create_group: device " +
                                        std::to_string(devices[i]) +
                                        " named twice (NCCL runs one rank per GPU)");
      }
    }
  }
  const int n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  AS_RETURN_IF_ERROR(nccl_status(ncclCommInitAll(comms.data(), n, devices.data()), "ncclCommInitAll"));
  std::vector<std::unique_ptr<NcclCommunicator>> group;
  group.reserve(devices.size());
  for (int r = 0; r < n; ++r) {
    group.push_back(std::unique_ptr<NcclCommunicator>(
        new NcclCommunicator(comms[static_cast<size_t>(r)], r, n, devices[static_cast<size_t>(r)])));
  }
  for (auto& c : group) AS_RETURN_IF_ERROR(c->init());
  return group;
}

Result<ncclUniqueId> NcclCommunicator::make_unique_id() {
  ncclUniqueId id;
  AS_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return id;
}

Result<std::unique_ptr<NcclCommunicator>> NcclCommunicator::create_rank(const ncclUniqueId& id, int rank,
                                                                        int size, int device) {
  if (size < 1 || rank < 0 || rank >= size) {
    return Status::invalid_argument("NcclCommunicator::create_rank: rank " + std::to_string(rank) + " of " +
                                    std::to_string(size));
  }
  AS_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")"));
  ncclComm_t comm = nullptr;
  AS_RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, size, id, rank), "ncclCommInitRank"));
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(comm, rank, size, device));
  AS_RETURN_IF_ERROR(c->init());
  return c;
}

Status NcclCommunicator::init() {
  AS_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  AS_RETURN_IF_ERROR(
      cuda_status(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
  stream_ = own_stream_;
  return cuda_status(cudaMalloc(&barrier_buffer_, sizeof(float)), "cudaMalloc (barrier buffer)");
}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (own_stream_ != nullptr) cudaStreamSynchronize(own_stream_);
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  if (barrier_buffer_ != nullptr) cudaFree(barrier_buffer_);
  if (own_stream_ != nullptr) cudaStreamDestroy(own_stream_);
}

Status NcclCommunicator::take_error() {
  Status s = error_;
  error_ = Status::ok_status();
  return s;
}

bool NcclCommunicator::check(ncclResult_t result, const char* what) {
  if (result == ncclSuccess) return true;
  if (error_.ok()) error_ = nccl_status(result, std::string("rank ") + std::to_string(rank_) + ": " + what);
  return false;
}

bool NcclCommunicator::check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  if (error_.ok()) error_ = cuda_status(err, std::string("rank ") + std::to_string(rank_) + ": " + what);
  return false;
}

bool NcclCommunicator::begin() {
  if (!error_.ok()) return false;
  return check(cudaSetDevice(device_), "cudaSetDevice");
}

void NcclCommunicator::finish(const char* what) {
  check(cudaStreamSynchronize(stream_), what);
}

void NcclCommunicator::all_reduce_sum(std::span<float> data) {
  if (!begin()) return;
  if (check(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat32, ncclSum, comm_, stream_),
            "ncclAllReduce")) {
    finish("all_reduce_sum");
  }
}

void NcclCommunicator::all_gather(std::span<const float> send, std::span<float> recv) {
  if (!begin()) return;
  if (recv.size() != send.size() * static_cast<size_t>(size_)) {
    error_ =
        Status::invalid_argument("all_gather: recv holds " + std::to_string(recv.size()) + " floats, need " +
                                 std::to_string(send.size() * static_cast<size_t>(size_)));
    return;
  }
  if (check(ncclAllGather(send.data(), recv.data(), send.size(), ncclFloat32, comm_, stream_),
            "ncclAllGather")) {
    finish("all_gather");
  }
}

void NcclCommunicator::gather(std::span<const float> send, std::span<float> recv, int root) {
  if (!begin()) return;
  if (root < 0 || root >= size_) {
    error_ =
        Status::invalid_argument("gather: root " + std::to_string(root) + " of " + std::to_string(size_));
    return;
  }
  const size_t n = send.size();
  if (rank_ == root) {
    if (recv.size() != n * static_cast<size_t>(size_)) {
      error_ = Status::invalid_argument("gather: recv holds " + std::to_string(recv.size()) +
                                        " floats, need " + std::to_string(n * static_cast<size_t>(size_)));
      return;
    }
    // NCCL has no gather: the root receives from every other rank in one group of point-to-point calls.
    if (!check(cudaMemcpyAsync(recv.data() + static_cast<size_t>(root) * n, send.data(), n * sizeof(float),
                               cudaMemcpyDeviceToDevice, stream_),
               "gather: own part")) {
      return;
    }
    if (!check(ncclGroupStart(), "ncclGroupStart")) return;
    bool ok = true;
    for (int r = 0; r < size_ && ok; ++r) {
      if (r == root) continue;
      ok = check(ncclRecv(recv.data() + static_cast<size_t>(r) * n, n, ncclFloat32, r, comm_, stream_),
                 "ncclRecv");
    }
    if (!check(ncclGroupEnd(), "ncclGroupEnd") || !ok) return;
  } else {
    if (!check(ncclSend(send.data(), n, ncclFloat32, root, comm_, stream_), "ncclSend")) return;
  }
  finish("gather");
}

void NcclCommunicator::barrier() {
  if (!begin()) return;
  // A one-float all-reduce: no rank's stream finishes it before every rank has enqueued its part.
  if (check(ncclAllReduce(barrier_buffer_, barrier_buffer_, 1, ncclFloat32, ncclSum, comm_, stream_),
            "ncclAllReduce (barrier)")) {
    finish("barrier");
  }
}

}  // namespace agentserve::engine

#endif  // AGENTSERVE_HAVE_NCCL
