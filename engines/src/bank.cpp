// Prompt banks; see bank.hpp. The reference implementation (and the file format) is edgeseg/bank.py.
#include "bank.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "common.hpp"
#include "sha256.hpp"
#include "tokenizer.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "edgeseg banks store little-endian arrays that are mapped as they are: a big-endian host is not supported"
#endif

namespace edgeseg {
namespace detail {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "edgeseg-bank";
constexpr const char* kFormatVersion = "1";
constexpr uint64_t kMaxHeader = uint64_t(1) << 24;
constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr const char* kBinding[] = {"context_length", "vocab_sha256", "model_sha256", "pad_id", "semantics",
                                    "output_dim"};
constexpr const char* kRequired[] = {"format", "format_version", "context_length", "vocab_sha256", "model_sha256",
                                     "pad_id", "semantics", "output_dim", "dtype", "precision", "encoder", "prompts",
                                     "entries", "vocab_size", "data_sha256"};
// Tensors in file order; an empty dtype means the memory dtype (F16 or F32).
struct Layout {
  const char* name;
  const char* dtype;
  size_t itemsize;
};
constexpr Layout kLayout[] = {{"input_ids", "I64", 8},  {"text_offsets", "I64", 8}, {"text_entry", "I64", 8},
                              {"text_lengths", "I64", 8}, {"memory", "", 0},          {"mask", "BOOL", 1},
                              {"text_bytes", "U8", 1}};

[[noreturn]] void bad(const std::string& message) { fail(EDGESEG_ERROR_BUNDLE, message); }

// A JSON integer in [0, limit): nlohmann keeps non-negative integers unsigned.
bool small_int(const json& value, int64_t limit, int64_t* out) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    if (v >= static_cast<uint64_t>(limit)) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  if (!value.is_number_integer()) return false;
  int64_t v = value.get<int64_t>();
  if (v < 0 || v >= limit) return false;
  *out = v;
  return true;
}

// A header count: ASCII digits only, at most 12 of them (as edgeseg/bank.py accepts).
int64_t count_field(const std::unordered_map<std::string, std::string>& meta, const char* key, const std::string& where) {
  const std::string& text = meta.at(key);
  if (text.empty() || text.size() > 12 || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    bad(where + " is malformed: header field " + key + " = '" + text + "' is not a count");
  }
  return std::stoll(text);
}

std::u32string stripped_lower(std::string_view text) {
  std::u32string s = python_lower(decode_utf8(text));
  size_t begin = 0, end = s.size();
  while (begin < end && is_python_space(s[begin])) ++begin;
  while (end > begin && is_python_space(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

size_t edit_distance(const std::u32string& a, const std::u32string& b) {
  std::vector<size_t> previous(b.size() + 1), current(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

}  // namespace

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits = 0;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else {  // zero or subnormal: mantissa * 2^-24, exact in float
    float value = std::ldexp(static_cast<float>(mantissa), -24);
    std::memcpy(&bits, &value, sizeof(bits));
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

BankBinding bundle_binding(const Bundle& bundle) {
  BankBinding b;
  b.context_length = bundle.context_length;
  b.output_dim = bundle.output_dim;
  b.pad_id = bundle.tokenizer.pad_id;
  b.semantics = bundle.semantics;
  auto vocab = bundle.file_sha256.find(bundle.vocab_name);
  b.vocab_sha256 = vocab == bundle.file_sha256.end() ? "" : vocab->second;
  if (bundle.backend == "bank") {  // a bank-only bundle is bound to the model its bank came from
    b.model_sha256 = bundle.bank_model_sha256;
    return b;
  }
  // sha256 of the sha256sum-style listing of the model's files (model, external data, a Core ML package).
  std::set<std::string> names{bundle.model_name};
  if (!bundle.model_data_name.empty()) names.insert(bundle.model_data_name);
  const std::string head = bundle.model_name.substr(0, bundle.model_name.find('/'));
  if (head.size() > 10 && head.compare(head.size() - 10, 10, ".mlpackage") == 0) {
    for (const auto& item : bundle.file_sha256) {
      if (item.first.compare(0, head.size() + 1, head + "/") == 0) names.insert(item.first);
    }
  }
  std::string listing;
  for (const auto& name : names) {
    auto it = bundle.file_sha256.find(name);
    if (it == bundle.file_sha256.end()) bad("bundle " + bundle.dir + ": its manifest does not list its model file " + name);
    listing += it->second + "  " + name + "\n";
  }
  Sha256 digest;
  digest.update(listing.data(), listing.size());
  b.model_sha256 = digest.hex_digest();
  return b;
}

std::unique_ptr<Bank> Bank::open(const std::string& path, bool verify_data) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) bad("bank " + path + " does not exist");
  if (S_ISDIR(st.st_mode)) {
    bad("bank " + path + " is a directory, not a bank file (a bank-only bundle? give " + path +
        "/bank.safetensors, or open the folder as a bundle)");
  }
  if (!S_ISREG(st.st_mode)) bad("bank " + path + " is not a file");
  if (st.st_size < 8) bad("bank " + path + " is truncated or not a bank (" + std::to_string(st.st_size) + " bytes)");
  std::unique_ptr<Bank> bank(new Bank());
  bank->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad("cannot open bank " + path);
  void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) bad("cannot map bank " + path);
  bank->map_ = static_cast<const uint8_t*>(map);
  bank->size_ = static_cast<size_t>(st.st_size);
  bank->parse(verify_data);
  bank->index();
  return bank;
}

Bank::~Bank() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), size_);
}

namespace {

struct TensorSpan {
  std::vector<int64_t> shape;
  uint64_t begin = 0;
};

// Every tensor's shape and byte range, checked against the layout and to tile the data section exactly
// (all arithmetic overflow-checked) before any array is touched.
std::map<std::string, TensorSpan> read_layout(const json& header, const std::string& dtype, uint64_t data_start,
                                              uint64_t size, const std::string& where) {
  size_t tensors = 0;
  for (const auto& item : header.items()) tensors += item.key() == "__metadata__" ? 0 : 1;
  std::map<std::string, TensorSpan> spans;
  uint64_t offset = 0;
  const uint64_t data_size = size - data_start;
  for (const Layout& layout : kLayout) {
    const std::string code = layout.dtype[0] != '\0' ? layout.dtype : (dtype == "float16" ? "F16" : "F32");
    const uint64_t itemsize = layout.itemsize != 0 ? layout.itemsize : (dtype == "float16" ? 2 : 4);
    auto it = header.find(layout.name);
    if (it == header.end()) {
      bad(where + " has a corrupted header: tensor " + layout.name + " is missing");
    }
    const json& info = *it;
    if (!info.is_object() || !info.contains("dtype") || info["dtype"] != code) {
      bad(where + " has a corrupted header: " + layout.name + " must be " + code);
    }
    const json shape = info.contains("shape") ? info["shape"] : json();
    const json offsets = info.contains("data_offsets") ? info["data_offsets"] : json();
    TensorSpan span;
    uint64_t elements = 1;
    bool ok = shape.is_array() && offsets.is_array() && offsets.size() == 2;
    for (size_t i = 0; ok && i < shape.size(); ++i) {
      int64_t dim = 0;
      ok = small_int(shape[i], kMaxDim, &dim) && !__builtin_mul_overflow(elements, static_cast<uint64_t>(dim), &elements);
      span.shape.push_back(dim);
    }
    int64_t begin = 0, end = 0;
    uint64_t nbytes = 0;
    ok = ok && small_int(offsets[0], INT64_MAX, &begin) && small_int(offsets[1], INT64_MAX, &end) &&
         !__builtin_mul_overflow(elements, itemsize, &nbytes);
    if (!ok) bad(where + " has a corrupted header: " + layout.name + " has a bad shape or data_offsets");
    if (static_cast<uint64_t>(begin) != offset || end < begin || static_cast<uint64_t>(end - begin) != nbytes) {
      bad(where + " has a lying header: " + layout.name + "'s bytes [" + std::to_string(begin) + ", " +
          std::to_string(end) + ") do not match its shape or follow the previous tensor");
    }
    if (static_cast<uint64_t>(end) > data_size) {
      bad(where + " is truncated: " + layout.name + " ends at byte " + std::to_string(data_start + end) +
          ", the file has " + std::to_string(size));
    }
    if ((data_start + static_cast<uint64_t>(begin)) % itemsize != 0) {
      bad(where + " is malformed: " + layout.name + " is not aligned to " + std::to_string(itemsize) + " bytes");
    }
    span.begin = static_cast<uint64_t>(begin);
    spans[layout.name] = span;
    offset = static_cast<uint64_t>(end);
  }
  if (tensors != spans.size()) bad(where + " has a corrupted header: it holds tensors other than the bank's 7");
  if (offset != data_size) {
    bad(where + " is truncated or has trailing bytes: the header describes " + std::to_string(data_start + offset) +
        " bytes, the file has " + std::to_string(size));
  }
  return spans;
}

}  // namespace

void Bank::parse(bool verify_data) {
  const std::string where = "bank " + path_;
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(map_[i]) << (8 * i);
  if (length > kMaxHeader || length > size_ - 8) {
    bad(where + " is truncated or not a bank: its header claims " + std::to_string(length) + " bytes, the file has " +
        std::to_string(size_));
  }
  const json header = json::parse(map_ + 8, map_ + 8 + length, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) bad(where + " has a corrupted header (not a JSON object)");
  auto meta = header.find("__metadata__");
  if (meta == header.end() || !meta->is_object()) bad(where + " is not an edgeseg bank: it has no __metadata__");
  for (const auto& item : meta->items()) {
    if (!item.value().is_string()) bad(where + " is not an edgeseg bank: its __metadata__ must map strings to strings");
    meta_[item.key()] = item.value().get<std::string>();
  }
  if (meta_["format"] != kFormat) bad(where + " is not an edgeseg bank (format '" + meta_["format"] + "')");
  if (meta_["format_version"] != kFormatVersion) {
    bad(where + " has bank format version " + meta_["format_version"] + "; this edgeseg reads " + kFormatVersion);
  }
  for (const char* key : kRequired) {
    if (meta_.find(key) == meta_.end()) {
      bad(where + " is malformed: its header lacks " + key);
    }
  }
  context_length_ = count_field(meta_, "context_length", where);
  output_dim_ = count_field(meta_, "output_dim", where);
  pad_id_ = count_field(meta_, "pad_id", where);
  vocab_size_ = count_field(meta_, "vocab_size", where);
  prompts_ = count_field(meta_, "prompts", where);
  entries_ = count_field(meta_, "entries", where);
  dtype_ = meta_["dtype"];
  if (dtype_ != "float16" && dtype_ != "float32") bad(where + " is malformed: dtype '" + dtype_ + "'");
  if (context_length_ < 2 || output_dim_ < 1 || entries_ > prompts_) {
    bad(where + " is malformed: context length, output width or counts out of range");
  }
  const uint64_t data_start = 8 + length;
  auto spans = read_layout(header, dtype_, data_start, size_, where);
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"input_ids", {entries_, context_length_}}, {"text_offsets", {prompts_ + 1}}, {"text_entry", {prompts_}},
      {"text_lengths", {prompts_}}, {"memory", {entries_, context_length_, output_dim_}},
      {"mask", {entries_, context_length_}}};
  for (const auto& item : expected) {
    if (spans[item.first].shape != item.second) {
      bad(where + " has a lying header: the shape of " + item.first + " does not match its entry/prompt counts");
    }
  }
  if (verify_data) {
    Sha256 digest;
    digest.update(map_ + data_start, size_ - data_start);
    if (digest.hex_digest() != meta_["data_sha256"]) {
      bad(where + " is corrupt or was modified: its data does not match data_sha256");
    }
  }
  const uint8_t* data = map_ + data_start;
  ids_ = reinterpret_cast<const int64_t*>(data + spans["input_ids"].begin);
  text_offsets_ = reinterpret_cast<const int64_t*>(data + spans["text_offsets"].begin);
  text_entry_ = reinterpret_cast<const int64_t*>(data + spans["text_entry"].begin);
  text_lengths_ = reinterpret_cast<const int64_t*>(data + spans["text_lengths"].begin);
  memory_ = data + spans["memory"].begin;
  mask_ = data + spans["mask"].begin;
  text_bytes_ = reinterpret_cast<const char*>(data + spans["text_bytes"].begin);
  text_bytes_size_ = static_cast<size_t>(spans["text_bytes"].shape[0]);
}

// What the header cannot say by itself (ids in the vocabulary, booleans, offsets, references), then the
// lookup tables; a repeated text or id row is refused.
void Bank::index() {
  const std::string where = "bank " + path_;
  const auto cells = static_cast<size_t>(entries_ * context_length_);
  for (size_t i = 0; i < cells; ++i) {
    if (ids_[i] < 0 || ids_[i] >= vocab_size_) bad(where + " is corrupt: token ids outside the vocabulary");
    if (mask_[i] > 1) bad(where + " is corrupt: mask values other than 0/1");
  }
  if (text_offsets_[0] != 0 || text_offsets_[prompts_] != static_cast<int64_t>(text_bytes_size_)) {
    bad(where + " is corrupt: text offsets do not index text_bytes");
  }
  std::vector<uint8_t> used(static_cast<size_t>(entries_), 0);
  for (int64_t i = 0; i < prompts_; ++i) {
    if (text_offsets_[i + 1] < text_offsets_[i]) bad(where + " is corrupt: text offsets do not index text_bytes");
    if (text_entry_[i] < 0 || text_entry_[i] >= entries_) bad(where + " is corrupt: text_entry out of range");
    if (text_lengths_[i] < 2) bad(where + " is corrupt: a text has fewer than 2 tokens (SOT, EOT)");
    used[static_cast<size_t>(text_entry_[i])] = 1;
    std::string_view text(text_bytes_ + text_offsets_[i], static_cast<size_t>(text_offsets_[i + 1] - text_offsets_[i]));
    try {
      decode_utf8(text);
    } catch (const Failure&) {
      bad(where + " is corrupt: a prompt text is not UTF-8");
    }
    if (!by_text_.emplace(text, i).second) bad(where + " is corrupt: it repeats a prompt text or a token-id row");
  }
  if (std::find(used.begin(), used.end(), 0) != used.end()) {
    bad(where + " is corrupt: text_entry does not map every text to one of " + std::to_string(entries_) + " entries");
  }
  const auto row_bytes = static_cast<size_t>(context_length_) * sizeof(int64_t);
  for (int64_t e = 0; e < entries_; ++e) {
    std::string_view row(reinterpret_cast<const char*>(ids_ + e * context_length_), row_bytes);
    if (!by_ids_.emplace(row, e).second) bad(where + " is corrupt: it repeats a prompt text or a token-id row");
  }
}

void Bank::check_binding(const BankBinding& bundle, const std::string& bundle_dir) const {
  const std::map<std::string, std::pair<std::string, std::string>> fields = {
      {"context_length", {"context length", std::to_string(bundle.context_length)}},
      {"vocab_sha256", {"vocabulary (sha256)", bundle.vocab_sha256}},
      {"model_sha256", {"model (sha256)", bundle.model_sha256}},
      {"pad_id", {"pad id", std::to_string(bundle.pad_id)}},
      {"semantics", {"padding semantics", bundle.semantics}},
      {"output_dim", {"output width", std::to_string(bundle.output_dim)}}};
  for (const char* key : kBinding) {
    const auto& field = fields.at(key);
    const std::string& have = meta_.at(key);
    if (have != field.second) {
      const bool hash = std::string(key).find("sha256") != std::string::npos;
      bad("bank " + path_ + " was built for another bundle: its " + field.first + " is " +
          (hash ? have.substr(0, 12) : have) + ", bundle " + bundle_dir + " has " +
          (hash ? field.second.substr(0, 12) : field.second) + "; rebuild it with edgeseg bank build");
    }
  }
}

int64_t Bank::find_text(std::string_view text, int64_t* length) const {
  auto it = by_text_.find(text);
  if (it == by_text_.end()) return -1;
  if (length != nullptr) *length = text_lengths_[it->second];
  return text_entry_[it->second];
}

int64_t Bank::find_ids(const int64_t* ids) const {
  auto it = by_ids_.find(std::string_view(reinterpret_cast<const char*>(ids),
                                          static_cast<size_t>(context_length_) * sizeof(int64_t)));
  return it == by_ids_.end() ? -1 : it->second;
}

void Bank::copy(int64_t entry, int64_t* ids, uint8_t* mask, float* memory) const {
  const auto length = static_cast<size_t>(context_length_);
  const size_t cells = length * static_cast<size_t>(output_dim_);
  const auto e = static_cast<size_t>(entry);
  if (ids != nullptr) std::memcpy(ids, ids_ + e * length, length * sizeof(int64_t));
  if (mask != nullptr) std::memcpy(mask, mask_ + e * length, length);
  if (memory == nullptr) return;
  if (dtype_ == "float32") {
    std::memcpy(memory, memory_ + e * cells * sizeof(float), cells * sizeof(float));
    return;
  }
  const uint8_t* half = memory_ + e * cells * sizeof(uint16_t);
  for (size_t i = 0; i < cells; ++i) {
    uint16_t h;
    std::memcpy(&h, half + i * sizeof(uint16_t), sizeof(h));
    memory[i] = half_to_float(h);
  }
}

std::vector<std::string> Bank::closest(std::string_view text, size_t count) const {
  const std::u32string query = stripped_lower(text);
  std::vector<std::pair<size_t, int64_t>> scored;
  scored.reserve(static_cast<size_t>(prompts_));
  for (int64_t i = 0; i < prompts_; ++i) {
    std::string_view stored(text_bytes_ + text_offsets_[i], static_cast<size_t>(text_offsets_[i + 1] - text_offsets_[i]));
    scored.emplace_back(edit_distance(query, python_lower(decode_utf8(stored))), i);
  }
  count = std::min(count, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(count), scored.end());
  std::vector<std::string> out;
  for (size_t k = 0; k < count; ++k) {
    const int64_t i = scored[k].second;
    out.emplace_back(text_bytes_ + text_offsets_[i], static_cast<size_t>(text_offsets_[i + 1] - text_offsets_[i]));
  }
  return out;
}

}  // namespace detail
}  // namespace edgeseg
