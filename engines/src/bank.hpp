// Prompt banks (edgeseg/bank.py): per known prompt its token ids, mask and memory, in one safetensors file
// (8-byte little-endian header length, JSON header, raw arrays), memory-mapped read-only. A prompt is found
// by its exact text (no tokenization) or by its token ids, the key Python and C++ agree on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bundle.hpp"

namespace edgeseg {
namespace detail {

// IEEE half -> float, exact for every value (subnormals, infinities, NaN payloads).
float half_to_float(uint16_t h);

// What a bank must be bound to (edgeseg.bank.bundle_identity): computed from a bundle's manifest.
struct BankBinding {
  int64_t context_length = 0, output_dim = 0, pad_id = 0;
  std::string vocab_sha256, model_sha256, semantics;
};
BankBinding bundle_binding(const Bundle& bundle);

class Bank {
 public:
  // Maps and checks path: the header against the file size before any array is read, then the arrays;
  // verify_data also checks data_sha256. Throws Failure(EDGESEG_ERROR_BUNDLE) with a one-line message.
  static std::unique_ptr<Bank> open(const std::string& path, bool verify_data);
  ~Bank();
  Bank(const Bank&) = delete;
  Bank& operator=(const Bank&) = delete;

  // Throws Failure(EDGESEG_ERROR_BUNDLE) naming the first field that differs from the bundle's.
  void check_binding(const BankBinding& bundle, const std::string& bundle_dir) const;

  // Entry of an exact prompt text (-1: not stored); *length receives its untruncated token count.
  int64_t find_text(std::string_view text, int64_t* length) const;
  // Entry of a token-id row of context_length() ids (-1: not stored).
  int64_t find_ids(const int64_t* ids) const;
  // Writes an entry's ids [L], mask [L] (1 = padding) and memory [L, D] (float32); any may be NULL.
  void copy(int64_t entry, int64_t* ids, uint8_t* mask, float* memory) const;
  // The stored prompts nearest to text (edit distance over lower-cased code points, then storage order).
  std::vector<std::string> closest(std::string_view text, size_t count) const;

  int64_t entries() const { return entries_; }
  int64_t prompts() const { return prompts_; }
  int64_t context_length() const { return context_length_; }
  int64_t output_dim() const { return output_dim_; }
  const std::string& path() const { return path_; }
  const std::string& dtype() const { return dtype_; }

 private:
  Bank() = default;
  void parse(bool verify_data);
  void index();

  std::string path_, dtype_;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::unordered_map<std::string, std::string> meta_;
  int64_t entries_ = 0, prompts_ = 0, context_length_ = 0, output_dim_ = 0, pad_id_ = 0, vocab_size_ = 0;
  const int64_t* ids_ = nullptr;
  const int64_t* text_offsets_ = nullptr;
  const int64_t* text_entry_ = nullptr;
  const int64_t* text_lengths_ = nullptr;
  const uint8_t* memory_ = nullptr;  // float16 or float32 [E, L, D]
  const uint8_t* mask_ = nullptr;
  const char* text_bytes_ = nullptr;
  size_t text_bytes_size_ = 0;
  std::unordered_map<std::string_view, int64_t> by_text_;  // text (in the map) -> text index
  std::unordered_map<std::string_view, int64_t> by_ids_;   // id row bytes (in the map) -> entry
};

}  // namespace detail
}  // namespace edgeseg
