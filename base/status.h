// Status and Result<T>: how errors cross module boundaries (RocksDB style). A Status carries a code and
// a human-readable message; Result<T> holds either a value or a non-OK Status. Exceptions stay inside a
// module or mark programming errors; anything a client or a file on disk can cause is a Status.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace agentserve {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // the caller's input is wrong (bad ids, bad JSON, bad option)
  kNotFound,           // a file, key, session or tensor does not exist
  kCorruption,         // stored bytes fail validation (bad header, checksum, truncated file)
  kIoError,            // the operating system refused (open, read, write, mmap)
  kOutOfRange,         // a length or index past a limit (context length, header size)
  kResourceExhausted,  // a budget is spent (KV blocks, disk quota, queue length)
  kFailedPrecondition, // the system is not in a state that allows the call
  kCancelled,
  kDeadlineExceeded,
  kInternal,
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }
  static Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
  static Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
  static Status deadline_exceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
  static Status internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: token id 200000 is past the vocabulary (151936)"
  std::string to_string() const;

  // Prefixes the message with context, keeping the code: "model.safetensors: " + message.
  Status with_context(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) { assert(!std::get<Status>(state_).ok()); }  // NOLINT

  bool ok() const { return std::holds_alternative<T>(state_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(state_);
  }
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace agentserve

#define AS_CONCAT_INNER(a, b) a##b
#define AS_CONCAT(a, b) AS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function when `expr` is not OK.
#define AS_RETURN_IF_ERROR(expr)                   \
  do {                                             \
    ::agentserve::Status as_status_ = (expr);      \
    if (!as_status_.ok()) return as_status_;       \
  } while (0)

// `AS_ASSIGN_OR_RETURN(auto x, make_x());` declares x from a Result or returns its Status.
#define AS_ASSIGN_OR_RETURN(lhs, expr) AS_ASSIGN_OR_RETURN_IMPL(AS_CONCAT(as_result_, __LINE__), lhs, expr)
#define AS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
