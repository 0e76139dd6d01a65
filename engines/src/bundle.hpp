// Bundle manifests: read, check and verify an edgeseg bundle directory (see edgeseg/bundle.py).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "tokenizer.hpp"

namespace edgeseg {
namespace detail {

struct Bundle {
  std::string dir;
  std::string encoder, backend, target, precision, model_path;
  int64_t context_length = 0;
  int64_t output_dim = 0;
  std::string input_name = "input_ids", memory_name = "memory", mask_name = "mask";
  TokenizerSpec tokenizer;
  // TensorRT bundles: manifest "tensorrt" {version, gpu {name, compute_capability}} and "engine"
  // {max_batch, builder_options {version_compatible}} (empty / defaults for other backends).
  std::string tensorrt_version, tensorrt_gpu_name, tensorrt_compute_capability;
  int64_t engine_max_batch = 1;
  bool engine_version_compatible = false;
  // Prompt banks (bank.hpp): what a bank is bound to, and the bank a bundle ships (manifest "bank": {file,
  // model_sha256}; a bank-only bundle has backend "bank"). Names are relative to dir.
  std::string model_name, model_data_name, vocab_name, semantics = "efficientsam3", bank_file, bank_model_sha256;
  std::map<std::string, std::string> file_sha256;  // manifest "files": name -> sha256
};

// Parses manifest.json (nlohmann-json stays inside bundle.cpp) and checks format, version, required fields and file names; with verify, checks
// every listed file's size and sha256. Throws Failure(EDGESEG_ERROR_BUNDLE) with a one-line message.
Bundle read_bundle(const std::string& dir, bool verify);

}  // namespace detail
}  // namespace edgeseg
