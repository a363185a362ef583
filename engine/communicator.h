// Communicator: the collectives that tie the ranks of a tensor/expert-parallel model together, shaped
// like NCCL's (in-place sum all-reduce, all-gather, gather to a root, barrier) so a GPU backend implements
// the same interface over NCCL and the sharding logic above it does not change. InProcessCommunicator is
// the CPU implementation: the ranks are threads of one process and exchange data through each other's
// buffers (no copies beyond the reduction itself).
//
// Contract (as with NCCL): every rank of a group calls the same collectives in the same order with the same
// counts; a collective returns on a rank once that rank's result is complete. A communicator never
// allocates per call, never owns the caller's buffers, and is used by one thread (its rank's) at a time.
#pragma once

#include <barrier>
#include <memory>
#include <span>
#include <vector>

namespace agentserve::engine {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data becomes, on every rank, the elementwise sum over the ranks' data (same size on every rank).
  // Every rank gets bit-identical results: each element is summed once, in rank order.
  virtual void all_reduce_sum(std::span<float> data) = 0;
  // recv = the ranks' send buffers one after another (recv.size() == size() * send.size()).
  virtual void all_gather(std::span<const float> send, std::span<float> recv) = 0;
  // As all_gather, but only `root` receives; recv is ignored on the other ranks.
  virtual void gather(std::span<const float> send, std::span<float> recv, int root) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;
};

class InProcessCommunicator final : public Communicator {
 public:
  // One communicator per rank, all sharing one group; hand communicator r to the thread that runs rank r.
  // size must be at least 1.
  static std::vector<std::unique_ptr<InProcessCommunicator>> create_group(int size);

  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  void all_reduce_sum(std::span<float> data) override;
  void all_gather(std::span<const float> send, std::span<float> recv) override;
  void gather(std::span<const float> send, std::span<float> recv, int root) override;
  void barrier() override;

 private:
  // What the ranks publish to each other for the collective in progress. A rank writes its own entry
  // before the first barrier of a collective; the others read it only between that barrier and the next.
  struct Group {
    explicit Group(int n)
        : size(n), sync(n), buffers(static_cast<size_t>(n)), sends(static_cast<size_t>(n)) {}
    int size;
    std::barrier<> sync;
    std::vector<float*> buffers;
    std::vector<const float*> sends;
  };

  InProcessCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}

  std::shared_ptr<Group> group_;
  int rank_;
};

}  // namespace agentserve::engine
