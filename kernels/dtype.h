// Element types of the tensors the kernels read. Weights come as F32 or BF16 (the Hugging Face
// checkpoint's dtype); activations and the KV cache stay F32 on the CPU backend. This header only names
// types and sizes; it never converts data (base/bf16.h does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace agentserve::kernels {

enum class DType : uint8_t { kF32, kBF16 };

constexpr size_t dtype_size(DType t) {
  return t == DType::kF32 ? 4 : 2;
}

constexpr std::string_view dtype_name(DType t) {
  return t == DType::kF32 ? "f32" : "bf16";
}

}  // namespace agentserve::kernels
