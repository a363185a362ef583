// kernels/cuda/moe against the CPU: routing against kernels/cpu/moe_router's oracle (ids exactly, ties to the
// lower expert id), and the expert MLP against matmul_ref + silu_mul_ref + axpy_ref per (token, slot) as the
// CPU engine runs it, on both expert kernels (GEMV and tiled), BF16 and f32 weights, odd shapes, tied
// logits, empty experts, one expert taking every token, and ids outside the layer.
#include "kernels/cuda/moe.h"

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "base/bf16.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/moe_router.h"
#include "tests/cuda/device_array.h"

namespace agentserve::kernels::cuda {
namespace {

using testing::DeviceArray;

size_t sz(int v) {
  return static_cast<size_t>(v);
}

std::vector<float> random_floats(size_t n, float lo, float hi, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Logits on a grid of half-steps: among 8 or more experts most tokens have tied logits.
std::vector<float> tied_logits(size_t n, std::mt19937& rng) {
  auto v = random_floats(n, -3.0f, 3.0f, rng);
  for (auto& x : v) x = std::round(x * 2.0f) / 2.0f;
  return v;
}

float round_bf16(float v) {
  return bf16_to_float(float_to_bf16(v));
}

// One MoE layer's experts on the host, with the values the device sees.
struct HostExperts {
  int n_experts, hidden, inter;
  DType dtype;
  std::vector<float> gate, up, down;

  HostExperts(int e, int h, int i, DType t, std::mt19937& rng) : n_experts(e), hidden(h), inter(i), dtype(t) {
    const float sh = 1.0f / std::sqrt(static_cast<float>(h));
    const float si = 1.0f / std::sqrt(static_cast<float>(i));
    gate = random_floats(sz(e) * sz(i) * sz(h), -sh, sh, rng);
    up = random_floats(gate.size(), -sh, sh, rng);
    down = random_floats(sz(e) * sz(h) * sz(i), -si, si, rng);
    // BF16 values in either dtype: the tiled kernel feeds f32 weights to the tensor cores as BF16, the GEMV
    // kernel reads them whole, and both must then match one reference.
    for (auto* m : {&gate, &up, &down}) {
      for (auto& x : *m) x = round_bf16(x);
    }
  }
};

// The device copy of HostExperts, in the layer's dtype.
struct DeviceExperts {
  std::vector<std::unique_ptr<DeviceArray<unsigned char>>> arrays;
  MoeExperts view;

  // pad: elements put before each matrix, so pad 1 gives BF16 weights that are not 16-byte aligned.
  explicit DeviceExperts(const HostExperts& h, size_t pad = 0) {
    const void* ptrs[3];
    const std::vector<float>* mats[3] = {&h.gate, &h.up, &h.down};
    for (int m = 0; m < 3; ++m) {
      const auto& src = *mats[m];
      const size_t elem = h.dtype == DType::kBF16 ? sizeof(bf16) : sizeof(float);
      std::vector<unsigned char> bytes((pad + src.size()) * elem);
      for (size_t i = 0; i < src.size(); ++i) {
        if (h.dtype == DType::kBF16) {
          const bf16 b = float_to_bf16(src[i]);
          std::memcpy(&bytes[(pad + i) * elem], &b, elem);
        } else {
          std::memcpy(&bytes[(pad + i) * elem], &src[i], elem);
        }
      }
      arrays.push_back(std::make_unique<DeviceArray<unsigned char>>(bytes));
      ptrs[m] = arrays.back()->get() + pad * elem;
    }
    view = MoeExperts{h.dtype, ptrs[0], ptrs[1], ptrs[2], h.n_experts, h.hidden, h.inter};
  }
};

// out[t] = sum_i w[t, i] * down_e(bf16(silu(gate_e x~) * up_e x~)), x~ = bf16(x): the CPU engine's per-expert
// SwiGLU with the two roundings the device applies; ids outside [0, n_experts) contribute nothing.
std::vector<float> moe_reference(const std::vector<float>& x, const std::vector<int32_t>& ids,
                                 const std::vector<float>& weights, int n_tokens, int top_k,
                                 const HostExperts& ex) {
  const int H = ex.hidden, I = ex.inter;
  std::vector<float> out(sz(n_tokens) * sz(H), 0.0f);
  std::vector<float> xr(sz(H)), g(sz(I)), u(sz(I)), y(sz(H));
  for (int t = 0; t < n_tokens; ++t) {
    for (int d = 0; d < H; ++d) xr[sz(d)] = round_bf16(x[sz(t) * sz(H) + sz(d)]);
    for (int i = 0; i < top_k; ++i) {
      const int e = ids[sz(t) * sz(top_k) + sz(i)];
      if (e < 0 || e >= ex.n_experts) continue;
      const size_t w_off = sz(e) * sz(I) * sz(H);
      matmul_ref(g.data(), xr.data(), ex.gate.data() + w_off, DType::kF32, 1, H, I);
      matmul_ref(u.data(), xr.data(), ex.up.data() + w_off, DType::kF32, 1, H, I);
      silu_mul_ref(g.data(), g.data(), u.data(), sz(I));
      for (auto& v : g) v = round_bf16(v);
      matmul_ref(y.data(), g.data(), ex.down.data() + w_off, DType::kF32, 1, I, H);
      axpy_ref(out.data() + sz(t) * sz(H), weights[sz(t) * sz(top_k) + sz(i)], y.data(), sz(H));
    }
  }
  return out;
}

// Every row within 1% of that row's RMS: bf16 flips of single activations stay far below this, while a
// wrong expert, weight or missing slot moves a row by about its RMS.
void check_rows_close(const std::vector<float>& got, const std::vector<float>& want, int n_tokens,
                      int hidden) {
  int bad_rows = 0;
  for (int t = 0; t < n_tokens; ++t) {
    double sq = 0;
    for (int d = 0; d < hidden; ++d)
      sq += double(want[sz(t) * sz(hidden) + sz(d)]) * want[sz(t) * sz(hidden) + sz(d)];
    const double tol = 1e-2 * std::sqrt(sq / hidden) + 1e-5;
    bool ok = true;
    for (int d = 0; d < hidden; ++d) {
      const size_t at = sz(t) * sz(hidden) + sz(d);
      ok = ok && std::isfinite(got[at]) && std::fabs(double(got[at]) - want[at]) <= tol;
    }
    bad_rows += !ok;
  }
  CHECK(bad_rows == 0);
}

std::vector<float> run_moe_experts(const std::vector<float>& x, const std::vector<int32_t>& ids,
                                   const std::vector<float>& weights, int n_tokens, int top_k,
                                   const DeviceExperts& dev, MoeExpertPath path) {
  DeviceArray<float> dx(x);
  DeviceArray<int32_t> dids(ids);
  DeviceArray<float> dw(weights);
  DeviceArray<float> dout(x.size());
  const size_t ws_bytes = moe_workspace_bytes(n_tokens, top_k, dev.view);
  DeviceArray<unsigned char> ws(ws_bytes);
  REQUIRE(moe_experts(dout.get(), dx.get(), dids.get(), dw.get(), n_tokens, top_k, dev.view, ws.get(),
                      ws_bytes, nullptr, path)
              .ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  return dout.download();
}

struct RouteCase {
  int n_tokens, n_experts, top_k;
};

TEST_CASE("moe_route picks exactly the CPU oracle's experts, ties to the lower id, with its weights") {
  std::mt19937 rng(21);
  const RouteCase cases[] = {{1, 4, 1},    {3, 8, 2},     {17, 60, 8}, {300, 128, 8},
                             {5, 128, 32}, {33, 1024, 8}, {2, 32, 32}, {64, 7, 7}};
  for (const auto& c : cases) {
    for (bool normalize : {false, true}) {
      for (bool ties : {false, true}) {
        CAPTURE(c.n_tokens);
        CAPTURE(c.n_experts);
        CAPTURE(c.top_k);
        CAPTURE(normalize);
        CAPTURE(ties);
        const size_t n = sz(c.n_tokens) * sz(c.n_experts);
        const auto logits = ties ? tied_logits(n, rng) : random_floats(n, -4.0f, 4.0f, rng);
        std::vector<int32_t> ids_ref(sz(c.n_tokens) * sz(c.top_k));
        std::vector<float> w_ref(ids_ref.size());
        moe_route_ref(ids_ref.data(), w_ref.data(), logits.data(), c.n_tokens, c.n_experts, c.top_k,
                      normalize);

        DeviceArray<float> dl(logits);
        DeviceArray<int32_t> dids(ids_ref.size());
        DeviceArray<float> dw(ids_ref.size());
        REQUIRE(
            moe_route(dids.get(), dw.get(), dl.get(), c.n_tokens, c.n_experts, c.top_k, normalize, nullptr)
                .ok());
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        CHECK(dids.download() == ids_ref);
        const auto w = dw.download();
        double max_err = 0;
        for (size_t i = 0; i < w.size(); ++i)
          max_err = std::fmax(max_err, std::fabs(double(w[i]) - w_ref[i]));
        CHECK(max_err < 1e-5);
      }
    }
  }
}

struct ExpertCase {
  int n_tokens, n_experts, top_k, hidden, inter;
  DType dtype;
  bool one_expert_takes_all;  // every logit equal: every token picks experts 0..top_k-1
};

TEST_CASE("moe_experts equals the per-expert SwiGLU reference on the GEMV and the tiled kernel") {
  std::mt19937 rng(22);
  const ExpertCase cases[] = {
      {1, 8, 2, 64, 32, DType::kBF16, false},  // the tiny preset's layer
      {3, 16, 4, 72, 40, DType::kBF16, false},
      {17, 128, 8, 256, 96, DType::kBF16, false},  // most experts empty
      {300, 16, 4, 130, 70, DType::kBF16, false},  // K % 8 != 0 (scalar loads); experts span several tiles
      {300, 8, 2, 128, 64, DType::kBF16, true},    // experts 0 and 1 take 300 rows each (5 tiles)
      {70, 8, 2, 64, 48, DType::kF32, false},
      {5, 4, 4, 24, 20, DType::kF32, false},        // top_k == n_experts
      {40, 64, 8, 2048, 768, DType::kBF16, false},  // Qwen3-30B-A3B's expert shape
  };
  for (const auto& c : cases) {
    CAPTURE(c.n_tokens);
    CAPTURE(c.n_experts);
    CAPTURE(c.top_k);
    CAPTURE(c.hidden);
    CAPTURE(c.inter);
    CAPTURE(dtype_name(c.dtype));
    const HostExperts host(c.n_experts, c.hidden, c.inter, c.dtype, rng);
    const DeviceExperts dev(host);
    const auto x = random_floats(sz(c.n_tokens) * sz(c.hidden), -1.0f, 1.0f, rng);
    std::vector<float> logits = tied_logits(sz(c.n_tokens) * sz(c.n_experts), rng);
    if (c.one_expert_takes_all) std::fill(logits.begin(), logits.end(), 0.5f);
    std::vector<int32_t> ids(sz(c.n_tokens) * sz(c.top_k));
    std::vector<float> weights(ids.size());
    moe_route_ref(ids.data(), weights.data(), logits.data(), c.n_tokens, c.n_experts, c.top_k, true);
    const auto want = moe_reference(x, ids, weights, c.n_tokens, c.top_k, host);
    for (MoeExpertPath path : {MoeExpertPath::kGemv, MoeExpertPath::kTiled, MoeExpertPath::kAuto}) {
      CAPTURE(static_cast<int>(path));
      const auto got = run_moe_experts(x, ids, weights, c.n_tokens, c.top_k, dev, path);
      check_rows_close(got, want, c.n_tokens, c.hidden);
    }
  }
}

TEST_CASE("moe_experts skips expert ids outside the layer, as an expert-parallel rank passes them") {
  std::mt19937 rng(23);
  const int n_tokens = 9, n_experts = 8, top_k = 3, hidden = 64, inter = 40;
  const HostExperts host(n_experts, hidden, inter, DType::kBF16, rng);
  const DeviceExperts dev(host);
  const auto x = random_floats(sz(n_tokens) * sz(hidden), -1.0f, 1.0f, rng);
  std::vector<int32_t> ids(sz(n_tokens) * sz(top_k));
  std::vector<float> weights(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>(i % 11) - 1;  // -1, 0..9: -1, 8 and 9 are not in this layer
    weights[i] = 0.1f + 0.05f * static_cast<float>(i % 5);
  }
  ids[sz(2) * top_k] = ids[sz(2) * top_k + 1] = ids[sz(2) * top_k + 2] = -1;  // token 2 has no local expert
  const auto want = moe_reference(x, ids, weights, n_tokens, top_k, host);
  for (MoeExpertPath path : {MoeExpertPath::kGemv, MoeExpertPath::kTiled}) {
    const auto got = run_moe_experts(x, ids, weights, n_tokens, top_k, dev, path);
    check_rows_close(got, want, n_tokens, hidden);
    for (int d = 0; d < hidden; ++d) CHECK(got[sz(2) * hidden + sz(d)] == 0.0f);
  }
}

TEST_CASE("moe_experts reads BF16 weights that are not 16-byte aligned") {
  std::mt19937 rng(25);
  const int n_tokens = 6, n_experts = 8, top_k = 2, hidden = 64, inter = 32;
  const HostExperts host(n_experts, hidden, inter, DType::kBF16, rng);
  const DeviceExperts dev(host, 1);
  const auto x = random_floats(sz(n_tokens) * sz(hidden), -1.0f, 1.0f, rng);
  const auto logits = tied_logits(sz(n_tokens) * sz(n_experts), rng);
  std::vector<int32_t> ids(sz(n_tokens) * sz(top_k));
  std::vector<float> weights(ids.size());
  moe_route_ref(ids.data(), weights.data(), logits.data(), n_tokens, n_experts, top_k, true);
  const auto want = moe_reference(x, ids, weights, n_tokens, top_k, host);
  for (MoeExpertPath path : {MoeExpertPath::kGemv, MoeExpertPath::kTiled}) {
    check_rows_close(run_moe_experts(x, ids, weights, n_tokens, top_k, dev, path), want, n_tokens, hidden);
  }
}

TEST_CASE("moe on the device, route then experts, equals the CPU engine's routing and SwiGLU") {
  std::mt19937 rng(24);
  const int n_tokens = 23, n_experts = 128, top_k = 8, hidden = 136, inter = 64;
  const HostExperts host(n_experts, hidden, inter, DType::kBF16, rng);
  const DeviceExperts dev(host);
  const auto x = random_floats(sz(n_tokens) * sz(hidden), -1.0f, 1.0f, rng);
  const auto logits = tied_logits(sz(n_tokens) * sz(n_experts), rng);
  std::vector<int32_t> ids(sz(n_tokens) * sz(top_k));
  std::vector<float> weights(ids.size());
  kernels::moe_route(ids.data(), weights.data(), logits.data(), n_tokens, n_experts, top_k, true);
  const auto want = moe_reference(x, ids, weights, n_tokens, top_k, host);

  DeviceArray<float> dl(logits);
  DeviceArray<float> dx(x);
  DeviceArray<int32_t> dids(ids.size());
  DeviceArray<float> dw(ids.size());
  DeviceArray<float> dout(x.size());
  const size_t ws_bytes = moe_workspace_bytes(n_tokens, top_k, dev.view);
  DeviceArray<unsigned char> ws(ws_bytes);
  REQUIRE(moe_route(dids.get(), dw.get(), dl.get(), n_tokens, n_experts, top_k, true, nullptr).ok());
  REQUIRE(moe_experts(dout.get(), dx.get(), dids.get(), dw.get(), n_tokens, top_k, dev.view, ws.get(),
                      ws_bytes, nullptr)
              .ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(dids.download() == ids);
  check_rows_close(dout.download(), want, n_tokens, hidden);
}

TEST_CASE("moe launchers refuse shapes past their limits and a short workspace") {
  DeviceArray<float> buf(4096);
  auto* f = buf.get();
  auto* i = reinterpret_cast<int32_t*>(buf.get());
  CHECK(moe_route(i, f, f, 1, kMoeMaxExperts + 1, 2, true, nullptr).code() == StatusCode::kInvalidArgument);
  CHECK(moe_route(i, f, f, 1, 8, 9, true, nullptr).code() == StatusCode::kInvalidArgument);
  CHECK(moe_route(i, f, f, 1, 64, kMoeMaxTopK + 1, true, nullptr).code() == StatusCode::kInvalidArgument);
  CHECK(moe_route(i, f, f, 0, 8, 2, true, nullptr).ok());
  const MoeExperts ex{DType::kBF16, f, f, f, 8, 16, 8};
  const size_t need = moe_workspace_bytes(4, 2, ex);
  CHECK(moe_experts(f, f, i, f, 4, 2, ex, f, need - 1, nullptr).code() == StatusCode::kInvalidArgument);
  CHECK(moe_experts(f, f, i, f, 4, 0, ex, f, need, nullptr).code() == StatusCode::kInvalidArgument);
  // A workspace off 16 bytes would misalign the vector loads of its bf16 rows.
  CHECK(moe_experts(f, f, i, f, 4, 2, ex, f + 1, need, nullptr).code() == StatusCode::kInvalidArgument);
  CHECK(moe_experts(f, f, i, f, 0, 2, ex, f, need, nullptr).ok());
  CHECK(moe_workspace_bytes(8, 2, ex) > need);
}

}  // namespace
}  // namespace agentserve::kernels::cuda
