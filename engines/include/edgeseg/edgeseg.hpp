// edgeseg C++ API: a thin, header-only RAII layer over the C API (edgeseg.h). Errors throw edgeseg::Error.
//
//   edgeseg::Runtime runtime("bundles/s0-int8");
//   edgeseg::Encoded out = runtime.encode({"a dog", "the leftmost child"});
//   // out.memory: [B, L, D] float32, out.mask: [B, L] (1 = padding), out.ids: [B, L] int64
//
//   edgeseg::Options options;
//   options.bank = "classes.bank.safetensors";  // prompts it holds are answered from it, the rest run the model
//   edgeseg::Runtime banked("bundles/s0-int8", options);
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "edgeseg/edgeseg.h"

namespace edgeseg {

class Error : public std::runtime_error {
 public:
  Error(edgeseg_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  edgeseg_status status() const noexcept { return status_; }

 private:
  edgeseg_status status_;
};

struct Options {
  std::string onnxruntime_library;  // empty: $EDGESEG_ONNXRUNTIME_LIBRARY, then the build-time default
  int intra_op_threads = 0;         // 0: backend default
  bool verify_hashes = true;
  int device = 0;
  bool tokenizer_only = false;  // load the tokenizer (and a bank) only: no model, encode() serves bank hits only
  std::string bank;             // a prompt-bank file built from this bundle (empty: the bundle's own, if any)
};

struct Encoded {
  size_t batch = 0;
  int64_t context_length = 0, dim = 0;
  std::vector<int64_t> ids;     // [B, L]
  std::vector<uint8_t> mask;    // [B, L], 1 = padding
  std::vector<float> memory;    // [B, L, D]
  const float* row(size_t b, size_t t) const { return memory.data() + (b * context_length + t) * dim; }
};

class Runtime {
 public:
  explicit Runtime(const std::string& bundle_dir, const Options& options = Options()) {
    edgeseg_options opts;
    edgeseg_options_init(&opts);
    opts.onnxruntime_library = options.onnxruntime_library.empty() ? nullptr : options.onnxruntime_library.c_str();
    opts.intra_op_threads = options.intra_op_threads;
    opts.verify_hashes = options.verify_hashes ? 1 : 0;
    opts.device = options.device;
    opts.tokenizer_only = options.tokenizer_only ? 1 : 0;
    opts.bank_path = options.bank.empty() ? nullptr : options.bank.c_str();
    check(edgeseg_create(bundle_dir.c_str(), &opts, &handle_));
  }
  ~Runtime() { edgeseg_destroy(handle_); }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  Runtime(Runtime&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Runtime& operator=(Runtime&& other) noexcept {
    if (this != &other) {
      edgeseg_destroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }

  int64_t context_length() const { return edgeseg_context_length(handle_); }
  int64_t output_dim() const { return edgeseg_output_dim(handle_); }
  std::string backend() const { return edgeseg_backend(handle_); }
  std::string encoder_name() const { return edgeseg_encoder_name(handle_); }
  edgeseg_runtime* handle() const { return handle_; }
  int64_t bank_entries() const { return edgeseg_bank_entries(handle_); }

  // Token ids [B, L]; lengths (optional) receives the untruncated token counts.
  std::vector<int64_t> tokenize(const std::vector<std::string>& prompts, std::vector<int64_t>* lengths = nullptr) {
    std::vector<const char*> ptrs = pointers(prompts);
    std::vector<int64_t> ids(prompts.size() * static_cast<size_t>(context_length()));
    if (lengths != nullptr) lengths->assign(prompts.size(), 0);
    check(edgeseg_tokenize(handle_, ptrs.data(), ptrs.size(), ids.data(), lengths ? lengths->data() : nullptr));
    return ids;
  }

  Encoded encode(const std::vector<std::string>& prompts) {
    std::vector<const char*> ptrs = pointers(prompts);
    Encoded out = allocate(prompts.size());
    check(edgeseg_encode(handle_, ptrs.data(), ptrs.size(), out.ids.data(), out.mask.data(), out.memory.data()));
    return out;
  }

  // Bank lookup without any model: found[i] = 1 where prompt i is in the bank (its rows are filled), 0 where
  // not (only its ids are filled: run your own model on them). Throws if the runtime has no bank.
  Encoded lookup(const std::vector<std::string>& prompts, std::vector<uint8_t>* found) {
    std::vector<const char*> ptrs = pointers(prompts);
    Encoded out = allocate(prompts.size());
    found->assign(prompts.size(), 0);
    check(edgeseg_bank_lookup(handle_, ptrs.data(), ptrs.size(), out.ids.data(), out.mask.data(), out.memory.data(),
                              found->data()));
    return out;
  }

 private:
  static void check(edgeseg_status status) {
    if (status != EDGESEG_OK) throw Error(status, edgeseg_last_error());
  }
  Encoded allocate(size_t batch) const {
    Encoded out;
    out.batch = batch;
    out.context_length = context_length();
    out.dim = output_dim();
    const size_t tokens = batch * static_cast<size_t>(out.context_length);
    out.ids.resize(tokens);
    out.mask.resize(tokens);
    out.memory.resize(tokens * static_cast<size_t>(out.dim));
    return out;
  }
  static std::vector<const char*> pointers(const std::vector<std::string>& prompts) {
    std::vector<const char*> ptrs;
    ptrs.reserve(prompts.size());
    for (const auto& p : prompts) ptrs.push_back(p.c_str());
    return ptrs;
  }

  edgeseg_runtime* handle_ = nullptr;
};

}  // namespace edgeseg
