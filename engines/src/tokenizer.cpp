// SAM3's CLIP BPE tokenizer; see tokenizer.hpp. The reference implementation is edgeseg/tokenizer.py.
#include "tokenizer.hpp"

#include <utf8proc.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "common.hpp"

namespace edgeseg {
namespace detail {

namespace {

struct HtmlEntity {
  const char* name;
  const char* value;
};
struct HtmlCharref {
  char32_t code;
  const char* value;
};
#include "html_entities.inc"

constexpr const char* kSpecialTokens[2] = {"<start_of_text>", "<end_of_text>"};
constexpr size_t kMaxCacheEntries = 1 << 18;
// Bounded work, as edgeseg/tokenizer.py: a prompt is tokenized until it has more than kMaxContext content tokens,
// and only the first max_word_bytes_ (longest token x (kMaxContext + 1)) bytes of a word are merged. Neither
// changes the ids of a prompt that fits a context of at most kMaxContext.
constexpr int64_t kMaxContext = 512;
constexpr size_t kMaxTokenBytes = 256;  // CLIP's longest token has 32

std::string read_gzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) fail(EDGESEG_ERROR_BUNDLE, "cannot open tokenizer vocabulary " + path);
  std::string data;
  char buffer[1 << 16];
  for (;;) {
    int n = gzread(file, buffer, sizeof(buffer));
    if (n < 0) {
      int code = 0;
      std::string message = gzerror(file, &code);
      gzclose(file);
      fail(EDGESEG_ERROR_BUNDLE, "cannot read tokenizer vocabulary " + path + " (" + message + ")");
    }
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > (size_t{64} << 20)) {  // CLIP's full file is 1.6 MB: this is a decompression bomb
      gzclose(file);
      fail(EDGESEG_ERROR_BUNDLE, "tokenizer vocabulary " + path + " is larger than 64 MiB uncompressed");
    }
  }
  gzclose(file);
  return data;
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::vector<std::string> split_ascii_whitespace(std::string_view line) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_ascii_space(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !is_ascii_space(line[i])) ++i;
    if (i > start) parts.emplace_back(line.substr(start, i - start));
  }
  return parts;
}

// CLIP's reversible byte -> printable code point map; order[i] is the byte of symbol id i.
void byte_to_unicode(char32_t (&code)[256], int (&order)[256]) {
  bool kept[256] = {};
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
      kept[b] = true;
      code[b] = static_cast<char32_t>(b);
      order[n++] = b;
    }
  }
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    if (!kept[b]) {
      code[b] = static_cast<char32_t>(256 + extra++);
      order[n++] = b;
    }
  }
}

int category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

bool is_letter(char32_t c) {
  int cat = category(c);
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

bool is_number(char32_t c) {
  int cat = category(c);
  return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

// Python's Cased / Case_Ignorable properties (used by str.lower()'s final-sigma rule), from categories
// and case mappings.
bool is_cased(char32_t c) {
  int cat = category(c);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return true;
  auto cp = static_cast<utf8proc_int32_t>(c);
  return utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp;
}

bool is_case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  // Word_Break MidLetter, MidNumLet and Single_Quote.
  static constexpr char32_t kMid[] = {0x27,   0x2e,   0x3a,   0xb7,   0x387,  0x55f,  0x5f4,  0x2018,
                                      0x2019, 0x2024, 0x2027, 0xfe13, 0xfe52, 0xfe55, 0xff07, 0xff0e, 0xff1a};
  return std::find(std::begin(kMid), std::end(kMid), c) != std::end(kMid);
}

const char* find_entity(const std::string& name) {
  auto begin = std::begin(kHtmlEntities), end = std::end(kHtmlEntities);
  auto it = std::lower_bound(begin, end, name,
                             [](const HtmlEntity& e, const std::string& key) { return std::strcmp(e.name, key.c_str()) < 0; });
  if (it != end && name == it->name) return it->value;
  return nullptr;
}

void append_utf8(std::u32string& out, const char* utf8) { out += decode_utf8(utf8); }

bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }
bool is_hex(char32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int hex_value(char32_t c) {
  if (is_digit(c)) return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  return static_cast<int>(c - 'A' + 10);
}

void numeric_charref(std::u32string& out, uint64_t num) {
  for (const auto& ref : kInvalidCharrefs) {
    if (ref.code == num) {
      append_utf8(out, ref.value);
      return;
    }
  }
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out += U'\uFFFD';
    return;
  }
  if (std::binary_search(std::begin(kInvalidCodepoints), std::end(kInvalidCodepoints), static_cast<char32_t>(num))) {
    return;
  }
  out += static_cast<char32_t>(num);
}

bool named_excluded(char32_t c) { return c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';'; }

// The regex module's IGNORECASE literal match on already-lowercased text (only U+017F folds onto ASCII).
bool same_ignorecase(char32_t c, char literal) {
  if (c == static_cast<char32_t>(literal)) return true;
  if (literal >= 'a' && literal <= 'z' && c == static_cast<char32_t>(literal - 'a' + 'A')) return true;
  return literal == 's' && c == 0x17F;
}

bool match_at(const std::u32string& s, size_t i, const char* literal) {
  size_t n = std::strlen(literal);
  if (i + n > s.size()) return false;
  for (size_t k = 0; k < n; ++k) {
    if (!same_ignorecase(s[i + k], literal[k])) return false;
  }
  return true;
}

// Length of the pre-token starting at i (0: position i starts none; the caller skips one character).
size_t pre_token_length(const std::u32string& s, size_t i) {
  for (const char* special : kSpecialTokens) {
    if (match_at(s, i, special)) return std::strlen(special);
  }
  if (s[i] == '\'') {
    static constexpr const char* kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (const char* contraction : kContractions) {
      if (match_at(s, i, contraction)) return std::strlen(contraction);
    }
  }
  if (is_letter(s[i])) {
    size_t j = i + 1;
    while (j < s.size() && is_letter(s[j])) ++j;
    return j - i;
  }
  if (is_number(s[i])) return 1;
  // U+0345 (a combining mark) case-folds to a letter (U+03B9): under IGNORECASE the regex module's
  // [\p{L}]+ does not take it and [^\s\p{L}\p{N}]+ excludes it, so it belongs to no pre-token.
  auto other = [](char32_t c) { return !is_regex_space(c) && !is_letter(c) && !is_number(c) && c != 0x345; };
  if (!other(s[i])) return 0;
  size_t j = i + 1;
  while (j < s.size() && other(s[j])) ++j;
  return j - i;
}

}  // namespace

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  auto data = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  auto size = static_cast<utf8proc_ssize_t>(text.size());
  utf8proc_ssize_t i = 0;
  while (i < size) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(data + i, size - i, &cp);
    if (n <= 0 || cp < 0) {
      fail(EDGESEG_ERROR_INVALID_ARGUMENT, "prompt is not valid UTF-8 (bad byte at offset " + std::to_string(i) + ")");
    }
    out += static_cast<char32_t>(cp);
    i += n;
  }
  return out;
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  utf8proc_uint8_t buffer[4];
  for (char32_t c : text) {
    utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buffer);
    out.append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
  }
  return out;
}

bool is_regex_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  int cat = category(c);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_python_space(char32_t c) { return is_regex_space(c) || (c >= 0x1C && c <= 0x1F); }

// Python's html.unescape: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) replaced left to right.
std::u32string html_unescape(const std::u32string& s) {
  if (s.find(U'&') == std::u32string::npos) return s;
  std::u32string out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != '&') {
      out += s[i++];
      continue;
    }
    size_t j = i + 1;
    if (j < n && s[j] == '#') {
      bool hex = j + 2 < n && (s[j + 1] == 'x' || s[j + 1] == 'X') && is_hex(s[j + 2]);
      bool dec = j + 1 < n && is_digit(s[j + 1]);
      if (!hex && !dec) {
        out += s[i++];
        continue;
      }
      size_t k = hex ? j + 2 : j + 1;
      uint64_t num = 0;
      constexpr uint64_t kCap = 0x110000;  // anything larger decodes like any value > U+10FFFF
      while (k < n && (hex ? is_hex(s[k]) : is_digit(s[k]))) {
        num = std::min<uint64_t>(kCap, num * (hex ? 16 : 10) + static_cast<uint64_t>(hex ? hex_value(s[k]) : s[k] - '0'));
        ++k;
      }
      if (k < n && s[k] == ';') ++k;
      numeric_charref(out, num);
      i = k;
      continue;
    }
    size_t k = j;
    while (k < n && k - j < 32 && !named_excluded(s[k])) ++k;
    if (k == j) {
      out += s[i++];
      continue;
    }
    if (k < n && s[k] == ';') ++k;
    std::u32string name = s.substr(j, k - j);
    size_t ascii = 0;
    while (ascii < name.size() && name[ascii] < 0x80) ++ascii;
    std::string key(name.begin(), name.begin() + static_cast<std::ptrdiff_t>(ascii));
    const char* value = ascii == name.size() ? find_entity(key) : nullptr;
    if (value != nullptr) {
      append_utf8(out, value);
    } else {
      bool found = false;
      for (size_t x = name.size() - 1; x >= 2 && !found; --x) {
        if (x > ascii) continue;
        value = find_entity(key.substr(0, x));
        if (value != nullptr) {
          append_utf8(out, value);
          out += name.substr(x);
          found = true;
        }
      }
      if (!found) {
        out += U'&';
        out += name;
      }
    }
    i = k;
  }
  return out;
}

std::u32string python_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char32_t c = s[i];
    if (c == 0x130) {  // the one unconditional multi-character lowercase mapping
      out += U'i';
      out += static_cast<char32_t>(0x307);
    } else if (c == 0x3A3) {  // final sigma: cased (case-ignorable)* SIGMA !((case-ignorable)* cased)
      size_t j = i;
      while (j > 0 && is_case_ignorable(s[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(s[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < s.size() && is_case_ignorable(s[k])) ++k;
        final_sigma = k == s.size() || !is_cased(s[k]);
      }
      out += final_sigma ? static_cast<char32_t>(0x3C2) : static_cast<char32_t>(0x3C3);
    } else {
      out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
    }
  }
  return out;
}

namespace {

std::u32string strip(const std::u32string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_python_space(s[a])) ++a;
  while (b > a && is_python_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

std::u32string clean_codepoints(std::string_view text) {
  std::u32string s = strip(html_unescape(html_unescape(decode_utf8(text))));
  std::u32string collapsed;
  collapsed.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (is_regex_space(s[i])) {
      collapsed += U' ';
      while (i < s.size() && is_regex_space(s[i])) ++i;
    } else {
      collapsed += s[i++];
    }
  }
  return python_lower(strip(collapsed));
}

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec)
    : context_length_(spec.context_length), pad_id_(spec.pad_id) {
  if (spec.context_length < 2 || spec.context_length > kMaxContext) {
    fail(EDGESEG_ERROR_BUNDLE, "context length must be 2.." + std::to_string(kMaxContext) + " (SOT and EOT need 2), got " +
                                   std::to_string(spec.context_length));
  }
  if (spec.num_merges < 0 || spec.num_merges > 10000000) {
    fail(EDGESEG_ERROR_BUNDLE, "tokenizer num_merges " + std::to_string(spec.num_merges) + " is out of range");
  }
  const std::string data = read_gzip(spec.vocab_path);
  // lines[1 : num_merges + 1] of data.split("\n"), each "left right".
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(static_cast<size_t>(spec.num_merges));
  size_t pos = data.find('\n');
  while (pos != std::string::npos && merges.size() < static_cast<size_t>(spec.num_merges)) {
    size_t start = pos + 1;
    pos = data.find('\n', start);
    std::string_view line(data.data() + start, (pos == std::string::npos ? data.size() : pos) - start);
    auto parts = split_ascii_whitespace(line);
    if (parts.size() != 2) {
      fail(EDGESEG_ERROR_BUNDLE, spec.vocab_path + " is not a CLIP BPE vocabulary (merge line " +
                                     std::to_string(merges.size() + 1) + " does not hold two symbols)");
    }
    merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
  }
  if (merges.size() != static_cast<size_t>(spec.num_merges)) {
    fail(EDGESEG_ERROR_BUNDLE, spec.vocab_path + " is not a CLIP BPE vocabulary (" + std::to_string(merges.size()) +
                                   " merge lines, the manifest expects " + std::to_string(spec.num_merges) + ")");
  }

  char32_t code[256];
  int order[256];
  byte_to_unicode(code, order);
  tokens_.reserve(512 + merges.size() + 2);
  for (int i = 0; i < 256; ++i) tokens_.push_back(encode_utf8(std::u32string(1, code[order[i]])));
  for (int i = 0; i < 256; ++i) tokens_.push_back(tokens_[static_cast<size_t>(i)] + "</w>");
  size_t longest = 1;  // bytes of the longest token: one code point per byte, "</w>" aside
  for (const auto& m : merges) {
    tokens_.push_back(m.first + m.second);
    const std::string& t = tokens_.back();
    const size_t chars = decode_utf8(t).size();
    const bool end = t.size() >= 4 && t.compare(t.size() - 4, 4, "</w>") == 0;
    longest = std::max(longest, end ? chars - 4 : chars);
  }
  if (longest > kMaxTokenBytes) {
    fail(EDGESEG_ERROR_BUNDLE, spec.vocab_path + " is not a CLIP BPE vocabulary (a token of " + std::to_string(longest) +
                                   " bytes; at most " + std::to_string(kMaxTokenBytes) + ")");
  }
  max_word_bytes_ = longest * static_cast<size_t>(kMaxContext + 1);
  for (const char* special : kSpecialTokens) tokens_.emplace_back(special);
  encoder_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) encoder_[tokens_[i]] = static_cast<int32_t>(i);
  for (int b = 0; b < 256; ++b) {
    std::string symbol = encode_utf8(std::u32string(1, code[b]));
    byte_id_[b] = encoder_.at(symbol);
    byte_end_id_[b] = encoder_.at(symbol + "</w>");
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    auto left = encoder_.find(merges[rank].first);
    auto right = encoder_.find(merges[rank].second);
    if (left == encoder_.end() || right == encoder_.end()) continue;  // can never apply
    int32_t merged = encoder_.at(merges[rank].first + merges[rank].second);
    uint64_t key = (static_cast<uint64_t>(left->second) << 32) | static_cast<uint32_t>(right->second);
    merges_[key] = (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(merged);  // later lines win
  }
  sot_id_ = encoder_.at(kSpecialTokens[0]);
  eot_id_ = encoder_.at(kSpecialTokens[1]);
  if (spec.vocab_size >= 0 && spec.vocab_size != static_cast<int64_t>(tokens_.size())) {
    fail(EDGESEG_ERROR_BUNDLE, "tokenizer vocabulary has " + std::to_string(tokens_.size()) +
                                   " tokens but the manifest says vocab_size " + std::to_string(spec.vocab_size));
  }
  if ((spec.sot_id >= 0 && spec.sot_id != sot_id_) || (spec.eot_id >= 0 && spec.eot_id != eot_id_)) {
    fail(EDGESEG_ERROR_BUNDLE, "manifest sot_id/eot_id (" + std::to_string(spec.sot_id) + "/" +
                                   std::to_string(spec.eot_id) + ") do not match the vocabulary (" +
                                   std::to_string(sot_id_) + "/" + std::to_string(eot_id_) + ")");
  }
  if (pad_id_ < 0 || pad_id_ >= static_cast<int64_t>(tokens_.size())) {
    fail(EDGESEG_ERROR_BUNDLE, "manifest pad_id " + std::to_string(pad_id_) + " is outside the vocabulary");
  }
  for (const char* special : kSpecialTokens) cache_[special] = {encoder_.at(special)};
}

const std::vector<int32_t>& Tokenizer::bpe(const std::string& piece) {
  auto hit = cache_.find(piece);
  if (hit != cache_.end()) return hit->second;
  std::vector<int32_t> word(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    auto b = static_cast<unsigned char>(piece[i]);
    word[i] = i + 1 == piece.size() ? byte_end_id_[b] : byte_id_[b];
  }
  std::vector<int32_t> next;
  while (word.size() > 1) {
    uint64_t best = std::numeric_limits<uint64_t>::max();  // (rank << 32 | merged id) of the lowest rank
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      uint64_t key = (static_cast<uint64_t>(word[i]) << 32) | static_cast<uint32_t>(word[i + 1]);
      auto it = merges_.find(key);
      if (it != merges_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<uint64_t>::max()) break;
    const int32_t merged = static_cast<int32_t>(best & 0xFFFFFFFFu);
    const int32_t first = word[at], second = word[at + 1];
    next.clear();
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        next.push_back(merged);
        i += 2;
      } else {
        next.push_back(word[i++]);
      }
    }
    word.swap(next);
  }
  if (cache_.size() >= kMaxCacheEntries) {
    cache_.clear();
    for (const char* special : kSpecialTokens) cache_[special] = {encoder_.at(special)};
  }
  return cache_.emplace(piece, std::move(word)).first->second;
}

std::string Tokenizer::clean(std::string_view text) const { return encode_utf8(clean_codepoints(text)); }

std::vector<int32_t> Tokenizer::encode(std::string_view text) {
  const std::u32string s = clean_codepoints(text);
  std::vector<int32_t> ids;
  std::u32string piece;
  for (size_t i = 0; i < s.size();) {
    size_t n = pre_token_length(s, i);
    if (n == 0) {
      ++i;
      continue;
    }
    piece.assign(s, i, n);
    std::string bytes = encode_utf8(piece);
    if (bytes.size() > max_word_bytes_) bytes.resize(max_word_bytes_);
    const auto& piece_ids = bpe(bytes);
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    if (static_cast<int64_t>(ids.size()) > kMaxContext) {
      ids.resize(static_cast<size_t>(kMaxContext) + 1);
      break;
    }
    i += n;
  }
  return ids;
}

int64_t Tokenizer::pack(std::string_view text, int64_t* out) {
  std::vector<int32_t> ids = encode(text);
  const int64_t total = static_cast<int64_t>(ids.size()) + 2;
  const int64_t length = context_length_;
  out[0] = sot_id_;
  int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), length - 2);
  for (int64_t i = 0; i < n; ++i) out[1 + i] = ids[static_cast<size_t>(i)];
  if (total > length) {
    // Python keeps tokens[:L] and forces EOT last: SOT + L-2 content ids + EOT.
    out[length - 1] = eot_id_;
  } else {
    out[1 + n] = eot_id_;
    for (int64_t i = 2 + n; i < length; ++i) out[i] = pad_id_;
  }
  return total;
}

}  // namespace detail
}  // namespace edgeseg
