// SAM3's CLIP byte-level BPE tokenizer in C++ (the reference is edgeseg/tokenizer.py).
//
// Cleaning: HTML unescape twice (Python's html.unescape rules and tables) -> strip -> collapse runs of
// Unicode whitespace to one space -> strip -> Unicode lowercase (Python's str.lower(), including
// U+0130 and the final-sigma rule). Python first runs ftfy.fix_text (mojibake repair, NFC, quote
// uncurling, ...), which has no C++ equivalent: prompts that ftfy changes may tokenize differently
// (README, "C++ runtime"). Pre-tokenizer: the special strings, English contractions, runs of letters
// (\p{L}), single numbers (\p{N}), runs of other non-space characters; categories come from utf8proc.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace edgeseg {
namespace detail {

struct TokenizerSpec {
  std::string vocab_path;  // gzip text: a header line, then "a b" merge lines
  int64_t num_merges = 49152 - 256 - 2;
  int64_t sot_id = -1;      // expected ids (checked against the vocabulary); -1: not checked
  int64_t eot_id = -1;
  int64_t pad_id = 0;
  int64_t vocab_size = -1;  // expected 512 + num_merges + 2; -1: not checked
  int64_t context_length = 32;
};

class Tokenizer {
 public:
  explicit Tokenizer(const TokenizerSpec& spec);

  // Content ids of one UTF-8 prompt (no SOT/EOT, no truncation; at most 513). Throws Failure on invalid UTF-8.
  std::vector<int32_t> encode(std::string_view text);

  // Packs [SOT] + ids + [EOT] into out[context_length] (truncated with EOT last, padded with the pad
  // id); returns the untruncated token count.
  int64_t pack(std::string_view text, int64_t* out);

  // The cleaned text (UTF-8), for tests and debugging.
  std::string clean(std::string_view text) const;

  int64_t context_length() const { return context_length_; }
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t sot_id() const { return sot_id_; }
  int64_t eot_id() const { return eot_id_; }
  int64_t pad_id() const { return pad_id_; }
  const std::string& token(int64_t id) const { return tokens_.at(static_cast<size_t>(id)); }

 private:
  const std::vector<int32_t>& bpe(const std::string& piece);

  std::vector<std::string> tokens_;                     // id -> token string (byte-mapped UTF-8)
  std::unordered_map<std::string, int32_t> encoder_;    // token string -> id (later ids win, as in Python)
  std::unordered_map<uint64_t, uint64_t> merges_;       // (left id << 32 | right id) -> (rank << 32 | merged id)
  int32_t byte_id_[256];                                // byte -> id of its symbol
  int32_t byte_end_id_[256];                            // byte -> id of its symbol + "</w>"
  std::unordered_map<std::string, std::vector<int32_t>> cache_;
  int64_t context_length_, sot_id_, eot_id_, pad_id_;
  size_t max_word_bytes_ = 0;  // see kMaxContext in tokenizer.cpp
};

// Exposed for tests.
std::u32string decode_utf8(std::string_view text);  // throws Failure(EDGESEG_ERROR_INVALID_ARGUMENT)
std::string encode_utf8(const std::u32string& text);
std::u32string html_unescape(const std::u32string& text);
std::u32string python_lower(const std::u32string& text);
bool is_regex_space(char32_t c);   // the regex module's \s (Unicode White_Space)
bool is_python_space(char32_t c);  // str.isspace()

}  // namespace detail
}  // namespace edgeseg
