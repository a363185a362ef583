#include "kernels/cuda/sampling.h"

#include <climits>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_helpers.cuh"

namespace agentserve::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kOneBits = 0x3f800000u;  // 1.0f: the weight of the max logit

struct Best {
  float value;
  int index;  // INT_MAX: none yet
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (b.index == INT_MAX) return a;
  if (a.index == INT_MAX) return b;
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

// Argmax over the row with NaN skipped and ties to the lowest id; every thread gets the result.
__device__ Best block_argmax(const float* x, int n, Best* scratch) {
  Best best{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    if (v != v) continue;
    best = better(best, Best{v, i});
  }
  for (int o = 16; o > 0; o >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, o),
                     __shfl_xor_sync(0xffffffffu, best.index, o)};
    best = better(best, other);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = best;
  __syncthreads();
  Best total{-INFINITY, INT_MAX};
  for (int w = 0; w < kWarps; ++w) total = better(total, scratch[w]);
  __syncthreads();
  return total;
}

__device__ __forceinline__ double block_sum_double(double v, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

__device__ __forceinline__ float weight_of(float logit, float max_logit, float inv_t) {
  if (!(logit > -INFINITY)) return 0.0f;  // NaN and -inf
  return expf((logit - max_logit) * inv_t);
}

// Kept mass: the sum of the weights >= the weight whose bits are tau (weights are >= 0, so their bit
// patterns order like their values).
__device__ double mass_at_least(const float* x, int n, float max_logit, float inv_t, uint32_t tau,
                                double* scratch) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float w = weight_of(x[i], max_logit, inv_t);
    if (__float_as_uint(w) >= tau) sum += w;
  }
  return block_sum_double(sum, scratch);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(int32_t* out, const float* logits, int vocab) {
  __shared__ Best scratch[kWarps];
  const Best best = block_argmax(logits + static_cast<size_t>(blockIdx.x) * vocab, vocab, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = best.index == INT_MAX ? 0 : best.index;
}

// Prefix sums over the block (Hillis-Steele in shared memory). Thread t gets [*begin, *end) = [scan[t-1],
// scan[t]): read from the same shared values, so adjacent threads' ranges meet exactly and cover [0, total).
template <typename T>
__device__ T block_scan(T own, T* scan, T* begin, T* end) {
  scan[threadIdx.x] = own;
  __syncthreads();
  for (int offset = 1; offset < kThreads; offset <<= 1) {
    const T add = threadIdx.x >= offset ? scan[threadIdx.x - offset] : T(0);
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  *begin = threadIdx.x == 0 ? T(0) : scan[threadIdx.x - 1];
  *end = scan[threadIdx.x];
  const T total = scan[kThreads - 1];
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(int32_t* out, const float* logits, const RowSampling* params, int vocab) {
  __shared__ Best best_scratch[kWarps];
  __shared__ double sum_scratch[kWarps];
  __shared__ double scan_d[kThreads];
  __shared__ long long scan_i[kThreads];
  __shared__ int chosen;
  const float* x = logits + static_cast<size_t>(blockIdx.x) * vocab;
  const RowSampling p = params[blockIdx.x];
  const Best best = block_argmax(x, vocab, best_scratch);
  if (!(p.temperature >= kGreedyTemperature)) {  // NaN too
    if (threadIdx.x == 0) out[blockIdx.x] = best.index == INT_MAX ? 0 : best.index;
    return;
  }
  // No finite maximum (all NaN, all -inf, or an inf): the softmax is undefined; greedy is the safe answer.
  if (best.index == INT_MAX || !(best.value > -INFINITY) || best.value == INFINITY) {
    if (threadIdx.x == 0) out[blockIdx.x] = best.index == INT_MAX ? 0 : best.index;
    return;
  }
  const float max_logit = best.value;
  const float inv_t = 1.0f / p.temperature;

  // The nucleus: every token with weight > tau, and the first `ties_kept` (in id order) of those == tau.
  uint32_t tau = 0u;
  long long ties_kept = LLONG_MAX;
  if (p.top_p < 1.0f) {
    const double needed =
        static_cast<double>(p.top_p) * mass_at_least(x, vocab, max_logit, inv_t, 0u, sum_scratch);
    uint32_t lo = 0u;
    uint32_t hi = kOneBits;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      if (mass_at_least(x, vocab, max_logit, inv_t, mid, sum_scratch) >= needed) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    tau = lo;
    const double above = mass_at_least(x, vocab, max_logit, inv_t, tau + 1, sum_scratch);
    const double tau_weight = static_cast<double>(__uint_as_float(tau));
    const double ties_needed = tau_weight > 0.0 ? ceil((needed - above) / tau_weight) : 1.0;
    ties_kept =
        ties_needed < 1.0 ? 1 : (ties_needed > 1e18 ? LLONG_MAX : static_cast<long long>(ties_needed));
  }

  // Thread t owns ids [t * span, (t + 1) * span): count its ties, then its kept weight, scan both.
  const int span = (vocab + kThreads - 1) / kThreads;
  const int first = min(vocab, static_cast<int>(threadIdx.x) * span);
  const int last = min(vocab, first + span);
  long long own_ties = 0;
  double own_above = 0.0;
  for (int i = first; i < last; ++i) {
    const uint32_t w = __float_as_uint(weight_of(x[i], max_logit, inv_t));
    if (w > tau) own_above += __uint_as_float(w);
    if (w == tau) ++own_ties;
  }
  long long ties_before = 0;
  long long ties_through = 0;
  const long long all_ties = block_scan(own_ties, scan_i, &ties_before, &ties_through);
  const long long own_kept_ties = max(0LL, min(own_ties, ties_kept - ties_before));
  const double own = own_above + static_cast<double>(own_kept_ties) * __uint_as_float(tau);
  double before = 0.0;
  double through = 0.0;
  const double kept = block_scan(own, scan_d, &before, &through);

  const double target = sampling_uniform(p.seed) * kept;
  if (threadIdx.x == 0) chosen = -1;
  __syncthreads();
  if (own > 0.0 && before <= target && target < through) {
    // The walk re-adds what the scan summed in another order; if rounding ends it short of the target, the
    // range's last kept id is the answer.
    double running = before;
    long long tie_rank = ties_before;
    int pick = -1;
    for (int i = first; i < last; ++i) {
      const float wf = weight_of(x[i], max_logit, inv_t);
      const uint32_t w = __float_as_uint(wf);
      const bool keep = w > tau || (w == tau && tie_rank++ < ties_kept);
      if (!keep || wf == 0.0f) continue;
      pick = i;
      running += wf;
      if (running > target) break;
    }
    chosen = pick;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int token = chosen;
    if (token < 0) {  // the target fell at or past the total: the last kept id with weight
      long long rank = all_ties;
      for (int i = vocab - 1; i >= 0 && token < 0; --i) {
        const float wf = weight_of(x[i], max_logit, inv_t);
        const uint32_t w = __float_as_uint(wf);
        if (w == tau) --rank;
        if (wf > 0.0f && (w > tau || (w == tau && rank < ties_kept))) token = i;
      }
    }
    out[blockIdx.x] = token < 0 ? best.index : token;
  }
}

Status check(const int32_t* out, const float* logits, int n_rows, int vocab, const char* what) {
  if (n_rows < 0 || vocab < 1) return Status::invalid_argument(std::string(what) + ": bad shape");
  if (n_rows > 0 && (out == nullptr || logits == nullptr))
    return Status::invalid_argument(std::string(what) + ": null pointer");
  return Status::ok_status();
}

}  // namespace

Status argmax_rows(int32_t* out, const float* logits, int n_rows, int vocab, cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check(out, logits, n_rows, vocab, "argmax_rows"));
  if (n_rows == 0) return Status::ok_status();
  argmax_kernel<<<n_rows, kThreads, 0, stream>>>(out, logits, vocab);
  return launch_status("argmax_rows");
}

Status sample_rows(int32_t* out, const float* logits, const RowSampling* params, int n_rows, int vocab,
                   cudaStream_t stream) {
  AS_RETURN_IF_ERROR(check(out, logits, n_rows, vocab, "sample_rows"));
  if (n_rows == 0) return Status::ok_status();
  if (params == nullptr) return Status::invalid_argument("sample_rows: null params");
  sample_kernel<<<n_rows, kThreads, 0, stream>>>(out, logits, params, vocab);
  return launch_status("sample_rows");
}

}  // namespace agentserve::kernels::cuda
