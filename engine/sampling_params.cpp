#include "engine/sampling_params.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace agentserve::engine {
namespace {

std::string num(double v) {
  std::string s = std::to_string(v);
  // std::to_string prints six decimals; trim the zeros so messages read "got 1.5", not "got 1.500000".
  if (s.find('.') != std::string::npos) {
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

Status bad(const std::string& field, const std::string& rule, const std::string& got) {
  return Status::invalid_argument("sampling." + field + " must be " + rule + ", got " + got);
}

Status validate_numbers(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    return bad("temperature", ">= 0 (0 = greedy)", num(p.temperature));
  if (p.top_k < 0) return bad("top_k", ">= 0 (0 = off)", std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p", "in (0, 1]", num(p.top_p));
  if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p", "in [0, 1]", num(p.min_p));
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0)
    return bad("repetition_penalty", "> 0 (1 = off)", num(p.repetition_penalty));
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2))
    return bad("presence_penalty", "in [-2, 2]", num(p.presence_penalty));
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2))
    return bad("frequency_penalty", "in [-2, 2]", num(p.frequency_penalty));
  if (p.max_tokens < 1) return bad("max_tokens", ">= 1", std::to_string(p.max_tokens));
  if (p.logprobs && (*p.logprobs < 0 || *p.logprobs > SamplingParams::kMaxLogprobs))
    return bad("logprobs", "in [0, " + std::to_string(SamplingParams::kMaxLogprobs) + "]",
               std::to_string(*p.logprobs));
  return Status::ok_status();
}

Status validate_stops(const SamplingParams& p, int vocab_size) {
  for (int32_t id : p.stop_token_ids) {
    if (id < 0 || id >= vocab_size)
      return bad("stop_token_ids", "token ids in [0, " + std::to_string(vocab_size) + ")",
                 std::to_string(id));
  }
  if (p.stop.size() > SamplingParams::kMaxStopStrings)
    return bad("stop", "at most " + std::to_string(SamplingParams::kMaxStopStrings) + " strings",
               std::to_string(p.stop.size()));
  for (size_t i = 0; i < p.stop.size(); ++i) {
    const size_t n = p.stop[i].size();
    if (n == 0 || n > SamplingParams::kMaxStopStringBytes)
      return bad("stop[" + std::to_string(i) + "]",
                 "1.." + std::to_string(SamplingParams::kMaxStopStringBytes) + " bytes long",
                 std::to_string(n) + " bytes");
  }
  return Status::ok_status();
}

}  // namespace

Status SamplingParams::validate(int vocab_size) const {
  if (vocab_size < 1)
    return Status::invalid_argument("vocab_size must be >= 1, got " + std::to_string(vocab_size));
  AS_RETURN_IF_ERROR(validate_numbers(*this));
  return validate_stops(*this, vocab_size);
}

bool is_stop_token(const SamplingParams& params, int32_t token, std::span<const int32_t> eos_token_ids) {
  if (std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), token) !=
      params.stop_token_ids.end())
    return true;
  return !params.ignore_eos &&
         std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end();
}

}  // namespace agentserve::engine
