// NcclCommunicator: engine/communicator.h's collectives over NCCL, so the tensor/expert-parallel sharding
// that runs on CPU threads in CI runs unchanged across GPUs. One communicator is one rank on one device;
// ranks are threads of one process (create_group, one device each) or processes (create_rank with a shared
// id).
//
// Contract, on top of Communicator's: every span points into device memory of this rank's device. A
// collective is enqueued on the rank's stream (its own, or the caller's through set_stream, so it orders
// after the kernels that produced the data) and returns once that stream has finished it, as Communicator
// promises. NCCL gives every rank the same all-reduce result, but sums in its own order (ring or tree), not
// in rank order. One thread per rank: a single thread calling the ranks of a group one after another
// deadlocks, as with NCCL itself. Collectives return nothing (the interface's shape); the first NCCL or CUDA
// failure is kept and returned by take_error(), and a failed communicator skips later collectives. It never
// allocates per call (the barrier's one-float buffer is made once).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "engine/communicator.h"

namespace agentserve::engine {

class NcclCommunicator final : public Communicator {
 public:
  // Ranks 0..devices.size()-1 of one group in this process, rank r on device devices[r] (distinct devices;
  // NCCL refuses two ranks on one GPU). Hand communicator r to the thread that runs rank r, and destroy it
  // there too.
  static Result<std::vector<std::unique_ptr<NcclCommunicator>>> create_group(std::span<const int> devices);

  // The id that every process of a multi-process group passes to create_rank; made by one process and sent
  // to the others out of band.
  static Result<ncclUniqueId> make_unique_id();
  // This process's rank of a group of `size` processes, on `device`. Blocks until every rank has joined.
  static Result<std::unique_ptr<NcclCommunicator>> create_rank(const ncclUniqueId& id, int rank, int size,
                                                               int device);

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  void all_reduce_sum(std::span<float> data) override;
  void all_gather(std::span<const float> send, std::span<float> recv) override;
  void gather(std::span<const float> send, std::span<float> recv, int root) override;
  void barrier() override;

  // Collectives run on `stream` (of this rank's device) from now on; nullptr returns to the rank's own
  // stream.
  void set_stream(cudaStream_t stream) { stream_ = stream ? stream : own_stream_; }
  // The first failure since the last call (OK if none), and clears it.
  Status take_error();

 private:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {}
  // Makes the stream and the barrier buffer on the rank's device.
  Status init();
  // Records the first failure; true when this call's result is usable.
  bool check(ncclResult_t result, const char* what);
  bool check(cudaError_t err, const char* what);
  // Selects the device; false (and nothing to do) once a failure is recorded.
  bool begin();
  // Waits for the stream: a collective returns with its result in place.
  void finish(const char* what);

  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  cudaStream_t own_stream_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* barrier_buffer_ = nullptr;
  Status error_;
};

}  // namespace agentserve::engine
