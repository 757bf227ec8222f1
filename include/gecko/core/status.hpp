// Status: how every gecko entry point reports failure. The library never throws, prints or
// exits; it returns a Status whose message names the offending argument.
#pragma once

#include <string>
#include <utility>

namespace gecko {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // wrong shape, stride, dtype, memory location or value
  kUnsupported,      // a valid request this build or device cannot run
  kCudaError,        // a CUDA runtime / cuBLAS call failed
  kIoError,          // a file could not be read, written or parsed
  kInternal,
};

inline const char* status_code_name(StatusCode c) {
  switch (c) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kUnsupported: return "unsupported";
    case StatusCode::kCudaError: return "CUDA error";
    case StatusCode::kIoError: return "I/O error";
    case StatusCode::kInternal: return "internal error";
  }
  return "unknown";
}

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status success() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(status_code_name(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string msg) { return Status(StatusCode::kInvalidArgument, std::move(msg)); }
inline Status unsupported(std::string msg) { return Status(StatusCode::kUnsupported, std::move(msg)); }
inline Status io_error(std::string msg) { return Status(StatusCode::kIoError, std::move(msg)); }
inline Status internal_error(std::string msg) { return Status(StatusCode::kInternal, std::move(msg)); }

}  // namespace gecko

// Propagates a non-ok Status to the caller.
#define GECKO_RETURN_IF_ERROR(expr)          \
  do {                                       \
    ::gecko::Status gecko_status_ = (expr);  \
    if (!gecko_status_.ok()) return gecko_status_; \
  } while (0)
