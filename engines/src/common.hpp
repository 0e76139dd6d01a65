// Internal helpers shared by the edgeseg runtime's sources (not installed).
#pragma once

#include <stdexcept>
#include <string>

#include "edgeseg/edgeseg.h"

namespace edgeseg {
namespace detail {

// The one exception type used inside the library; the C API turns it into a status and a message.
class Failure : public std::runtime_error {
 public:
  Failure(edgeseg_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  edgeseg_status status() const noexcept { return status_; }

 private:
  edgeseg_status status_;
};

[[noreturn]] inline void fail(edgeseg_status status, const std::string& message) { throw Failure(status, message); }

}  // namespace detail
}  // namespace edgeseg
