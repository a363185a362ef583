// NcclCommunicator's collectives on device buffers: one rank always, and one rank per visible GPU (threads)
// when there are several. Sums and gathers are checked against what the ranks' inputs must give. A build
// without NCCL compiles this file to no test cases.
#if defined(AGENTSERVE_HAVE_NCCL)

#include "engine/cuda/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

namespace agentserve::engine {
namespace {

// Rank r's input element i: distinct per rank and element, exact in f32 and in any order of summation.
float input(int rank, size_t i) {
  return static_cast<float>(rank + 1) * 1000.0f + static_cast<float>(i % 997);
}

struct RankOutcome {
  std::vector<float> reduced;
  std::vector<float> all_gathered;
  std::vector<float> gathered;  // root only
  bool setup_ok = false;
  std::string error;
};

// Runs every collective once on this rank, on buffers of `n` floats allocated on its device.
RankOutcome run_rank(NcclCommunicator& comm, size_t n, int root) {
  RankOutcome out;
  const int size = comm.size();
  const size_t total = n * static_cast<size_t>(size);
  if (cudaSetDevice(comm.device()) != cudaSuccess) return out;
  float* data = nullptr;
  float* gathered = nullptr;
  float* all = nullptr;
  if (cudaMalloc(&data, n * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&gathered, total * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&all, total * sizeof(float)) != cudaSuccess) {
    return out;
  }
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = input(comm.rank(), i);
  // A pageable cudaMemcpy may return before its DMA lands, and the communicator's stream is non-blocking
  // (not ordered after the legacy stream the copy went on): wait for the device before the collectives.
  out.setup_ok = cudaMemcpy(data, host.data(), n * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess &&
                 cudaDeviceSynchronize() == cudaSuccess;

  comm.all_gather({data, n}, {all, total});
  comm.gather({data, n}, {gathered, total}, root);
  comm.all_reduce_sum({data, n});
  comm.barrier();
  const Status st = comm.take_error();
  out.error = st.ok() ? "" : st.to_string();

  out.reduced.resize(n);
  out.all_gathered.resize(total);
  cudaMemcpy(out.reduced.data(), data, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(out.all_gathered.data(), all, total * sizeof(float), cudaMemcpyDeviceToHost);
  if (comm.rank() == root) {
    out.gathered.resize(total);
    cudaMemcpy(out.gathered.data(), gathered, total * sizeof(float), cudaMemcpyDeviceToHost);
  }
  cudaFree(data);
  cudaFree(gathered);
  cudaFree(all);
  return out;
}

void check_outcomes(const std::vector<RankOutcome>& outcomes, size_t n, int root) {
  const int size = static_cast<int>(outcomes.size());
  for (int r = 0; r < size; ++r) {
    const RankOutcome& o = outcomes[static_cast<size_t>(r)];
    CAPTURE(r);
    REQUIRE(o.setup_ok);
    CHECK(o.error == "");
    int bad_sum = 0, bad_all = 0, bad_gather = 0;
    for (size_t i = 0; i < n; ++i) {
      float want = 0;
      for (int q = 0; q < size; ++q) want += input(q, i);
      bad_sum += o.reduced[i] != want;
    }
    for (int q = 0; q < size; ++q) {
      for (size_t i = 0; i < n; ++i) {
        const size_t at = static_cast<size_t>(q) * n + i;
        bad_all += o.all_gathered[at] != input(q, i);
        if (r == root) bad_gather += o.gathered[at] != input(q, i);
      }
    }
    CHECK(bad_sum == 0);
    CHECK(bad_all == 0);
    CHECK(bad_gather == 0);
  }
}

int visible_devices() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

TEST_CASE("one NCCL rank: all-reduce leaves the data, gathers copy it, barrier returns") {
  const int device = 0;
  auto group = NcclCommunicator::create_group({&device, 1});
  REQUIRE(group.ok());
  REQUIRE(group->size() == 1);
  NcclCommunicator& comm = *(*group)[0];
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  for (size_t n : {size_t{1}, size_t{1000}, size_t{1} << 20}) {
    CAPTURE(n);
    check_outcomes({run_rank(comm, n, 0)}, n, 0);
  }
}

TEST_CASE("NCCL ranks on every visible GPU sum and gather what every rank sent") {
  const int n_devices = visible_devices();
  if (n_devices < 2) {
    MESSAGE("only " << n_devices << " GPU visible: the multi-rank case needs two or more");
    return;
  }
  std::vector<int> devices(static_cast<size_t>(n_devices));
  for (int d = 0; d < n_devices; ++d) devices[static_cast<size_t>(d)] = d;
  auto group = NcclCommunicator::create_group(devices);
  REQUIRE(group.ok());
  const size_t n = 12345;
  const int root = n_devices - 1;
  std::vector<RankOutcome> outcomes(static_cast<size_t>(n_devices));
  std::vector<std::thread> threads;
  for (int r = 0; r < n_devices; ++r) {
    // Each thread owns its rank to the end: NCCL's teardown waits for the other ranks of the group.
    threads.emplace_back([&, r, comm = std::move((*group)[static_cast<size_t>(r)])]() mutable {
      outcomes[static_cast<size_t>(r)] = run_rank(*comm, n, root);
      comm.reset();
    });
  }
  for (auto& t : threads) t.join();
  check_outcomes(outcomes, n, root);
}

TEST_CASE("NcclCommunicator refuses a device named twice or out of range") {
  const int twice[] = {0, 0};
  CHECK(NcclCommunicator::create_group(twice).status().code() == StatusCode::kInvalidArgument);
  const int missing = visible_devices();
  CHECK(NcclCommunicator::create_group({&missing, 1}).status().code() == StatusCode::kInvalidArgument);
  CHECK(NcclCommunicator::create_group({}).status().code() == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace agentserve::engine

#endif  // AGENTSERVE_HAVE_NCCL
