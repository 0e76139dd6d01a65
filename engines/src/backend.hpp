// Inference backends behind the C API: one model run per call, on caller-provided buffers.
#pragma once

#include <cstdint>
#include <memory>

#include "bundle.hpp"
#include "edgeseg/edgeseg.h"

namespace edgeseg {
namespace detail {

class Backend {
 public:
  virtual ~Backend() = default;
  // ids [batch, L] -> memory [batch, L, D] float32, mask [batch, L] (1 = padding). batch <= max_batch().
  virtual void run(const int64_t* ids, int64_t batch, float* memory, uint8_t* mask) = 0;
  // The largest batch one run accepts (0: no limit).
  virtual int64_t max_batch() const { return 0; }
};

std::unique_ptr<Backend> make_onnxruntime_backend(const Bundle& bundle, const edgeseg_options& options);
#ifdef EDGESEG_WITH_TENSORRT
std::unique_ptr<Backend> make_tensorrt_backend(const Bundle& bundle, const edgeseg_options& options);
#endif

}  // namespace detail
}  // namespace edgeseg
