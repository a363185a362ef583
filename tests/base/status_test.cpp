#include "base/status.h"

#include <doctest/doctest.h>

#include <cmath>

#include "base/bf16.h"

namespace agentserve {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return Status::invalid_argument("value must be positive, got " + std::to_string(v));
  return v;
}

Result<int> doubled(int v) {
  AS_ASSIGN_OR_RETURN(int x, parse_positive(v));
  return 2 * x;
}

TEST_CASE("status carries code and message, and context keeps the code") {
  Status s = Status::corruption("bad header");
  CHECK_FALSE(s.ok());
  CHECK(s.to_string() == "Corruption: bad header");
  Status c = s.with_context("model.safetensors");
  CHECK(c.code() == StatusCode::kCorruption);
  CHECK(c.message() == "model.safetensors: bad header");
  CHECK(Status().ok());
}

TEST_CASE("result propagates errors through AS_ASSIGN_OR_RETURN") {
  CHECK(doubled(4).value() == 8);
  auto r = doubled(-1);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("bf16 rounds to nearest even and round-trips representable values") {
  CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  CHECK(bf16_to_float(float_to_bf16(-3.5f)) == -3.5f);
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even mantissa, 1.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  // 1 + 3 * 2^-8 is a tie between 1 + 2^-7 and 1 + 2^-6: the even one is 1 + 2^-6.
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST_CASE("f16 conversion round-trips normal, subnormal and out-of-range values") {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f}) {
    CHECK(f16_to_float(float_to_f16(v)) == v);
  }
  CHECK(std::isinf(f16_to_float(float_to_f16(1e6f))));
  CHECK(float_to_f16(1.0f) == 0x3c00);
}

}  // namespace
}  // namespace agentserve
