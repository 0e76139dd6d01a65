// The C API (edgeseg.h): every entry point catches everything and returns a status + message.
#include "edgeseg/edgeseg.h"

#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "backend.hpp"
#include "bundle.hpp"
#include "common.hpp"
#include "tokenizer.hpp"

using edgeseg::detail::Failure;

struct edgeseg_runtime {
  edgeseg::detail::Bundle bundle;
  std::unique_ptr<edgeseg::detail::Tokenizer> tokenizer;
  std::unique_ptr<edgeseg::detail::Backend> backend;
};

namespace {

thread_local std::string last_error;

edgeseg_status set_error(edgeseg_status status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename F>
edgeseg_status guarded(F&& body) {
  try {
    last_error.clear();
    body();
    return EDGESEG_OK;
  } catch (const Failure& e) {
    return set_error(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(EDGESEG_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return set_error(EDGESEG_ERROR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return set_error(EDGESEG_ERROR_INTERNAL, "internal error (unknown exception)");
  }
}

void check_prompts(const edgeseg_runtime* runtime, const char* const* prompts, size_t count) {
  using edgeseg::detail::fail;
  if (runtime == nullptr) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "runtime is NULL");
  if (count == 0) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "empty prompt list: pass at least one prompt");
  if (prompts == nullptr) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "prompts is NULL");
  for (size_t i = 0; i < count; ++i) {
    if (prompts[i] == nullptr) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "prompt " + std::to_string(i) + " is NULL");
  }
}

void tokenize(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids, int64_t* lengths) {
  const int64_t length = runtime->tokenizer->context_length();
  for (size_t i = 0; i < count; ++i) {
    try {
      int64_t total = runtime->tokenizer->pack(prompts[i], ids + i * static_cast<size_t>(length));
      if (lengths != nullptr) lengths[i] = total;
    } catch (const Failure& e) {
      edgeseg::detail::fail(e.status(), "prompt " + std::to_string(i) + ": " + e.what());
    }
  }
}

void encode(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids, uint8_t* mask,
            float* memory, size_t* truncated) {
  check_prompts(runtime, prompts, count);
  if (memory == nullptr) edgeseg::detail::fail(EDGESEG_ERROR_INVALID_ARGUMENT, "memory buffer is NULL");
  if (!runtime->backend) {
    edgeseg::detail::fail(EDGESEG_ERROR_INVALID_ARGUMENT, "this runtime was created with tokenizer_only: it cannot encode");
  }
  const auto length = static_cast<size_t>(runtime->bundle.context_length);
  const auto dim = static_cast<size_t>(runtime->bundle.output_dim);
  std::vector<int64_t> own_ids, lengths(count);
  std::vector<uint8_t> own_mask;
  if (ids == nullptr) {
    own_ids.resize(count * length);
    ids = own_ids.data();
  }
  if (mask == nullptr) {
    own_mask.resize(count * length);
    mask = own_mask.data();
  }
  tokenize(runtime, prompts, count, ids, lengths.data());
  if (truncated != nullptr) {
    *truncated = 0;
    for (int64_t n : lengths) *truncated += n > static_cast<int64_t>(length) ? 1 : 0;
  }
  const int64_t limit = runtime->backend->max_batch();
  const size_t step = limit > 0 ? static_cast<size_t>(limit) : count;
  for (size_t start = 0; start < count; start += step) {
    size_t batch = std::min(step, count - start);
    runtime->backend->run(ids + start * length, static_cast<int64_t>(batch), memory + start * length * dim,
                          mask + start * length);
  }
}

}  // namespace

extern "C" {

const char* edgeseg_version(void) { return "0.1.0"; }

void edgeseg_options_init(edgeseg_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(edgeseg_options);
  options->verify_hashes = 1;
}

const char* edgeseg_last_error(void) { return last_error.c_str(); }

edgeseg_status edgeseg_create(const char* bundle_dir, const edgeseg_options* options, edgeseg_runtime** out) {
  if (out == nullptr) return set_error(EDGESEG_ERROR_INVALID_ARGUMENT, "out is NULL");
  *out = nullptr;
  return guarded([&] {
    using edgeseg::detail::fail;
    if (bundle_dir == nullptr) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "bundle directory is NULL");
    edgeseg_options opts;
    edgeseg_options_init(&opts);
    if (options != nullptr) {
      if (options->struct_size != sizeof(edgeseg_options)) {
        fail(EDGESEG_ERROR_INVALID_ARGUMENT, "edgeseg_options.struct_size is wrong: call edgeseg_options_init first");
      }
      opts = *options;
    }
    auto runtime = std::make_unique<edgeseg_runtime>();
    runtime->bundle = edgeseg::detail::read_bundle(bundle_dir, opts.verify_hashes != 0);
    runtime->tokenizer = std::make_unique<edgeseg::detail::Tokenizer>(runtime->bundle.tokenizer);
    const std::string& backend = runtime->bundle.backend;
    if (opts.tokenizer_only != 0) {
      // no model: edgeseg_encode reports an error
    } else if (backend == "onnxruntime") {
      runtime->backend = edgeseg::detail::make_onnxruntime_backend(runtime->bundle, opts);
    } else if (backend == "tensorrt") {
#ifdef EDGESEG_WITH_TENSORRT
      runtime->backend = edgeseg::detail::make_tensorrt_backend(runtime->bundle, opts);
#else
      fail(EDGESEG_ERROR_UNSUPPORTED, "bundle " + runtime->bundle.dir +
                                          " is a TensorRT bundle, but this edgeseg_runtime was built without TensorRT "
                                          "(TensorRT and CUDA were not found at build time)");
#endif
    } else {
      fail(EDGESEG_ERROR_UNSUPPORTED, "this edgeseg_runtime cannot run '" + backend + "' bundles (known: onnxruntime" +
#ifdef EDGESEG_WITH_TENSORRT
                                          ", tensorrt" +
#endif
                                          std::string(")"));
    }
    *out = runtime.release();
  });
}

void edgeseg_destroy(edgeseg_runtime* runtime) { delete runtime; }

int64_t edgeseg_context_length(const edgeseg_runtime* runtime) { return runtime ? runtime->bundle.context_length : 0; }
int64_t edgeseg_output_dim(const edgeseg_runtime* runtime) { return runtime ? runtime->bundle.output_dim : 0; }
const char* edgeseg_backend(const edgeseg_runtime* runtime) { return runtime ? runtime->bundle.backend.c_str() : ""; }
const char* edgeseg_encoder_name(const edgeseg_runtime* runtime) { return runtime ? runtime->bundle.encoder.c_str() : ""; }

edgeseg_status edgeseg_tokenize(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids,
                                int64_t* lengths) {
  return guarded([&] {
    check_prompts(runtime, prompts, count);
    if (ids == nullptr) edgeseg::detail::fail(EDGESEG_ERROR_INVALID_ARGUMENT, "ids buffer is NULL");
    tokenize(runtime, prompts, count, ids, lengths);
  });
}

edgeseg_status edgeseg_encode(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids,
                              uint8_t* mask, float* memory) {
  return guarded([&] { encode(runtime, prompts, count, ids, mask, memory, nullptr); });
}

edgeseg_status edgeseg_encode_alloc(edgeseg_runtime* runtime, const char* const* prompts, size_t count,
                                    edgeseg_result** out) {
  if (out == nullptr) return set_error(EDGESEG_ERROR_INVALID_ARGUMENT, "out is NULL");
  *out = nullptr;
  return guarded([&] {
    check_prompts(runtime, prompts, count);
    const auto length = static_cast<size_t>(runtime->bundle.context_length);
    const auto dim = static_cast<size_t>(runtime->bundle.output_dim);
    std::unique_ptr<int64_t[]> ids(new int64_t[count * length]);
    std::unique_ptr<uint8_t[]> mask(new uint8_t[count * length]);
    std::unique_ptr<float[]> memory(new float[count * length * dim]);
    size_t truncated = 0;
    encode(runtime, prompts, count, ids.get(), mask.get(), memory.get(), &truncated);
    *out = new edgeseg_result{count, static_cast<int64_t>(length), static_cast<int64_t>(dim), ids.release(),
                              mask.release(), memory.release(), truncated};
  });
}

void edgeseg_result_free(edgeseg_result* result) {
  if (result == nullptr) return;
  delete[] result->ids;
  delete[] result->mask;
  delete[] result->memory;
  delete result;
}

}  // extern "C"
