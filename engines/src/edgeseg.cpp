// The C API (edgeseg.h): every entry point catches everything and returns a status + message.
#include "edgeseg/edgeseg.h"

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "backend.hpp"
#include "bank.hpp"
#include "bundle.hpp"
#include "common.hpp"
#include "tokenizer.hpp"

using edgeseg::detail::Failure;

struct edgeseg_runtime {
  edgeseg::detail::Bundle bundle;
  std::unique_ptr<edgeseg::detail::Tokenizer> tokenizer;  // with a bank: built on the first prompt it lacks
  std::unique_ptr<edgeseg::detail::Backend> backend;
  std::unique_ptr<edgeseg::detail::Bank> bank;
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

edgeseg::detail::Tokenizer& tokenizer(edgeseg_runtime* runtime) {
  if (!runtime->tokenizer) runtime->tokenizer = std::make_unique<edgeseg::detail::Tokenizer>(runtime->bundle.tokenizer);
  return *runtime->tokenizer;
}

int64_t pack(edgeseg_runtime* runtime, size_t i, const char* prompt, int64_t* ids) {
  try {
    return tokenizer(runtime).pack(prompt, ids);
  } catch (const Failure& e) {
    edgeseg::detail::fail(e.status(), "prompt " + std::to_string(i) + ": " + e.what());
  }
}

void tokenize(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids, int64_t* lengths) {
  const auto length = static_cast<size_t>(runtime->bundle.context_length);
  for (size_t i = 0; i < count; ++i) {
    int64_t total = pack(runtime, i, prompts[i], ids + i * length);
    if (lengths != nullptr) lengths[i] = total;
  }
}

// Bank rows where the bank knows a prompt (exact text first, else its token ids); found[i] says which.
void lookup(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids, uint8_t* mask,
            float* memory, uint8_t* found, int64_t* lengths) {
  const auto length = static_cast<size_t>(runtime->bundle.context_length);
  const auto dim = static_cast<size_t>(runtime->bundle.output_dim);
  const edgeseg::detail::Bank& bank = *runtime->bank;
  for (size_t i = 0; i < count; ++i) {
    int64_t total = 0;
    int64_t entry = bank.find_text(prompts[i], &total);
    if (entry < 0) {
      total = pack(runtime, i, prompts[i], ids + i * length);
      entry = bank.find_ids(ids + i * length);
    }
    found[i] = entry >= 0 ? 1 : 0;
    if (lengths != nullptr) lengths[i] = total;
    if (entry >= 0) {
      bank.copy(entry, ids + i * length, mask ? mask + i * length : nullptr, memory ? memory + i * length * dim : nullptr);
    }
  }
}

[[noreturn]] void not_in_bank(const edgeseg_runtime* runtime, const char* const* prompts, const std::vector<size_t>& misses) {
  const size_t first = misses.front();
  std::string close;
  for (const std::string& text : runtime->bank->closest(prompts[first], 3)) close += (close.empty() ? "'" : ", '") + text + "'";
  std::string more = misses.size() > 1 ? " (and " + std::to_string(misses.size() - 1) + " more unknown prompt(s))" : "";
  edgeseg::detail::fail(EDGESEG_ERROR_NOT_IN_BANK,
                        "prompt " + std::to_string(first) + " ('" + prompts[first] + "') is not in the bank of " +
                            runtime->bundle.dir + " (" + std::to_string(runtime->bank->prompts()) +
                            " known prompts; no encoder to run it)" + more + "; closest known prompts: " + close);
}

// Runs the model on some rows (gathered into one block, in batches of the backend's limit), then scatters.
void run_rows(edgeseg_runtime* runtime, const std::vector<size_t>& rows, const int64_t* ids, uint8_t* mask,
              float* memory) {
  const auto length = static_cast<size_t>(runtime->bundle.context_length);
  const auto dim = static_cast<size_t>(runtime->bundle.output_dim);
  const int64_t limit = runtime->backend->max_batch();
  const size_t step = limit > 0 ? static_cast<size_t>(limit) : rows.size();
  std::vector<int64_t> block_ids(step * length);
  std::vector<uint8_t> block_mask(step * length);
  std::vector<float> block_memory(step * length * dim);
  for (size_t start = 0; start < rows.size(); start += step) {
    const size_t batch = std::min(step, rows.size() - start);
    for (size_t k = 0; k < batch; ++k) std::memcpy(&block_ids[k * length], ids + rows[start + k] * length, length * sizeof(int64_t));
    runtime->backend->run(block_ids.data(), static_cast<int64_t>(batch), block_memory.data(), block_mask.data());
    for (size_t k = 0; k < batch; ++k) {
      std::memcpy(mask + rows[start + k] * length, &block_mask[k * length], length);
      std::memcpy(memory + rows[start + k] * length * dim, &block_memory[k * length * dim], length * dim * sizeof(float));
    }
  }
}

void encode(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids, uint8_t* mask,
            float* memory, size_t* truncated) {
  check_prompts(runtime, prompts, count);
  if (memory == nullptr) edgeseg::detail::fail(EDGESEG_ERROR_INVALID_ARGUMENT, "memory buffer is NULL");
  if (!runtime->backend && !runtime->bank) {
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
  std::vector<uint8_t> found(count, 0);
  if (runtime->bank) {
    lookup(runtime, prompts, count, ids, mask, memory, found.data(), lengths.data());
  } else {
    tokenize(runtime, prompts, count, ids, lengths.data());
  }
  if (truncated != nullptr) {
    *truncated = 0;
    for (int64_t n : lengths) *truncated += n > static_cast<int64_t>(length) ? 1 : 0;
  }
  if (runtime->bank) {
    std::vector<size_t> misses;
    for (size_t i = 0; i < count; ++i) {
      if (!found[i]) misses.push_back(i);
    }
    if (!misses.empty() && !runtime->backend) not_in_bank(runtime, prompts, misses);
    if (!misses.empty()) run_rows(runtime, misses, ids, mask, memory);
    return;
  }
  const int64_t limit = runtime->backend->max_batch();
  const size_t step = limit > 0 ? static_cast<size_t>(limit) : count;
  for (size_t start = 0; start < count; start += step) {
    size_t batch = std::min(step, count - start);
    runtime->backend->run(ids + start * length, static_cast<int64_t>(batch), memory + start * length * dim,
                          mask + start * length);
  }
}

// Options from the caller: the current struct, or the one before bank_path (older callers).
edgeseg_options read_options(const edgeseg_options* options) {
  edgeseg_options opts;
  edgeseg_options_init(&opts);
  if (options == nullptr) return opts;
  const size_t size = options->struct_size;
  if (size != sizeof(edgeseg_options) && size != offsetof(edgeseg_options, bank_path)) {
    edgeseg::detail::fail(EDGESEG_ERROR_INVALID_ARGUMENT, "edgeseg_options.struct_size is wrong: call edgeseg_options_init first");
  }
  std::memcpy(&opts, options, size);
  opts.struct_size = sizeof(edgeseg_options);
  return opts;
}

// The bank to serve: options.bank_path (sha256-checked when verify_hashes), else the bundle's own (already
// verified with the bundle's files); a bank-only bundle must have one. Refused unless bound to this bundle.
void attach_bank(edgeseg_runtime* runtime, const edgeseg_options& opts) {
  const edgeseg::detail::Bundle& bundle = runtime->bundle;
  const bool given = opts.bank_path != nullptr && opts.bank_path[0] != '\0';
  if (!given && bundle.bank_file.empty()) {
    if (bundle.backend == "bank") edgeseg::detail::fail(EDGESEG_ERROR_BUNDLE, "bundle " + bundle.dir + " is bank-only but names no bank");
    return;
  }
  runtime->bank = given ? edgeseg::detail::Bank::open(opts.bank_path, opts.verify_hashes != 0)
                        : edgeseg::detail::Bank::open(bundle.dir + "/" + bundle.bank_file, false);
  runtime->bank->check_binding(edgeseg::detail::bundle_binding(bundle), bundle.dir);
}

void make_backend(edgeseg_runtime* runtime, const edgeseg_options& opts) {
  using edgeseg::detail::fail;
  (void)opts;  // unused when the build has neither ONNX Runtime nor TensorRT
  const std::string& backend = runtime->bundle.backend;
  if (backend == "bank") return;  // a bank-only bundle: no model
  if (backend == "onnxruntime") {
#ifdef EDGESEG_WITH_ONNXRUNTIME
    runtime->backend = edgeseg::detail::make_onnxruntime_backend(runtime->bundle, opts);
#else
    fail(EDGESEG_ERROR_UNSUPPORTED, "bundle " + runtime->bundle.dir + " is an ONNX Runtime bundle, but this edgeseg_runtime "
                                    "was built without ONNX Runtime (EDGESEG_WITH_ONNXRUNTIME=OFF): use a bank-only bundle, "
                                    "or tokenizer_only with a bank");
#endif
  } else if (backend == "tensorrt") {
#ifdef EDGESEG_WITH_TENSORRT
    runtime->backend = edgeseg::detail::make_tensorrt_backend(runtime->bundle, opts);
#else
    fail(EDGESEG_ERROR_UNSUPPORTED, "bundle " + runtime->bundle.dir +
                                        " is a TensorRT bundle, but this edgeseg_runtime was built without TensorRT "
                                        "(TensorRT and CUDA were not found at build time)");
#endif
  } else {
    fail(EDGESEG_ERROR_UNSUPPORTED, "this edgeseg_runtime cannot run '" + backend + "' bundles (known: bank" +
#ifdef EDGESEG_WITH_ONNXRUNTIME
                                        std::string(", onnxruntime") +
#endif
#ifdef EDGESEG_WITH_TENSORRT
                                        ", tensorrt" +
#endif
                                        std::string(")"));
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
    const edgeseg_options opts = read_options(options);
    auto runtime = std::make_unique<edgeseg_runtime>();
    runtime->bundle = edgeseg::detail::read_bundle(bundle_dir, opts.verify_hashes != 0);
    attach_bank(runtime.get(), opts);
    if (!runtime->bank) runtime->tokenizer = std::make_unique<edgeseg::detail::Tokenizer>(runtime->bundle.tokenizer);
    if (opts.tokenizer_only == 0) make_backend(runtime.get(), opts);
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

int64_t edgeseg_bank_entries(const edgeseg_runtime* runtime) {
  return runtime != nullptr && runtime->bank ? runtime->bank->entries() : 0;
}

edgeseg_status edgeseg_bank_lookup(edgeseg_runtime* runtime, const char* const* prompts, size_t count, int64_t* ids,
                                   uint8_t* mask, float* memory, uint8_t* found) {
  return guarded([&] {
    using edgeseg::detail::fail;
    check_prompts(runtime, prompts, count);
    if (ids == nullptr || found == nullptr) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "ids and found buffers are required");
    if (!runtime->bank) fail(EDGESEG_ERROR_INVALID_ARGUMENT, "this runtime has no prompt bank (options.bank_path)");
    lookup(runtime, prompts, count, ids, mask, memory, found, nullptr);
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
