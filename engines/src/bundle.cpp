// The bundle rules of edgeseg/bundlecheck.py, in C++ (the Python module is the reference):
//   1. manifest.json is a regular file inside the bundle, at most 1 MiB, nested at most 32 deep, strict JSON
//      (no duplicate keys, no non-finite numbers), and every field this runtime reads has the type and range of
//      edgeseg/manifest.schema.json (integers are integers, not floats or booleans);
//   2. every field that names a file (model, model_data, tokenizer.vocab, reference.file, engine.onnx,
//      engine.file once built, bank.file, banks[].file; coreml.package names a folder) holds a plain relative
//      path (no absolute path, "..", "." or empty part, backslash or control character) listed under "files";
//      no two listed names are equal after NFC + case folding;
//   3. every listed file resolves (through symlinks) to a regular file inside the bundle with the listed size
//      and sha256 (unless verify_hashes is off), and every external-data file an ONNX model names is listed.
#include "bundle.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <utf8proc.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "common.hpp"
#include "sha256.hpp"

namespace edgeseg {
namespace detail {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "edgeseg-bundle";
constexpr int64_t kMaxManifestBytes = 1 << 20;
constexpr int kMaxDepth = 32;
constexpr int64_t kMaxContext = 512;  // edgeseg/tokenizer.py MAX_CONTEXT_LENGTH
constexpr size_t kMaxName = 4096;
constexpr int64_t kMaxTokenId = 65535;  // manifest.schema.json: ids fit 16 bits
constexpr int64_t kMaxBytes = (int64_t{1} << 53) - 1;
constexpr const char* kRequired[] = {"format", "format_version", "encoder", "context_length", "precision", "target",
                                     "backend", "model", "inputs", "outputs", "tokenizer", "files"};

[[noreturn]] void bad(const std::string& message) { fail(EDGESEG_ERROR_BUNDLE, message); }

// Unicode characters that break a message line (C1 controls, line/paragraph separators, bidi controls), as UTF-8.
bool breaks_line(const std::string& s, size_t i, size_t* length) {
  const auto b = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  if (b(0) < 0x20 || b(0) == 0x7f) return (*length = 1), true;
  if (b(0) == 0xc2 && b(1) >= 0x80 && b(1) <= 0x9f) return (*length = 2), true;
  if (b(0) == 0xe2 && b(1) == 0x80 && (b(2) == 0x8e || b(2) == 0x8f || (b(2) >= 0xa8 && b(2) <= 0xae))) {
    return (*length = 3), true;
  }
  if (b(0) == 0xe2 && b(1) == 0x81 && b(2) >= 0xa6 && b(2) <= 0xa9) return (*length = 3), true;
  return false;
}

// `text` on one line: the characters above escaped as \xNN (bytes), at most 300 bytes kept.
std::string printable(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < 300;) {
    size_t n = 0;
    if (breaks_line(text, i, &n)) {
      for (size_t k = 0; k < n; ++k) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(text[i + k]));
        out += hex;
      }
      i += n;
    } else {
      out += text[i++];
    }
  }
  if (text.size() > 300) out += "...";
  return out;
}

std::string real_path(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return "";
  std::string out(resolved);
  std::free(resolved);
  return out;
}

bool inside(const std::string& root, const std::string& path) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          (root.back() == '/' || path[root.size()] == '/'));
}

// -- strict, bounded JSON -------------------------------------------------------------------------
int nesting_depth(const std::string& text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

bool all_finite(const json& value) {
  if (value.is_number_float()) return std::isfinite(value.get<double>());
  if (value.is_structured()) {
    for (const auto& item : value) {
      if (!all_finite(item)) return false;
    }
  }
  return true;
}

json parse_strict(const std::string& text, const std::string& where) {
  if (nesting_depth(text) > kMaxDepth) bad(where + " nests deeper than " + std::to_string(kMaxDepth) + " levels");
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  bool has_duplicate = false;
  json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end && !keys.empty()) {
      keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() &&
               !keys.back().insert(parsed.get<std::string>()).second && !has_duplicate) {
      has_duplicate = true;
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json value = json::parse(text, callback, /*allow_exceptions=*/false);
  if (value.is_discarded()) bad(where + " is not valid JSON");
  if (has_duplicate) bad(where + " is not valid JSON (duplicate key '" + printable(duplicate) + "')");
  if (!all_finite(value)) bad(where + " is not valid JSON (a number is out of range)");
  return value;
}

json read_manifest_file(const std::string& dir, const std::string& root) {
  const std::string path = dir + "/manifest.json";
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) bad(printable(dir) + " is not an edgeseg bundle: it has no manifest.json");
  const std::string real = real_path(path);
  if (real.empty() || !inside(root, real)) bad(printable(path) + " is a link that leaves the bundle");
  if (::stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) bad(printable(path) + " is not a regular file");
  if (st.st_size > kMaxManifestBytes) {
    bad(printable(path) + " is " + std::to_string(st.st_size) + " bytes; the limit is " +
        std::to_string(kMaxManifestBytes));
  }
  std::ifstream in(real, std::ios::binary);
  std::string text(static_cast<size_t>(st.st_size), '\0');
  if (!in.read(&text[0], static_cast<std::streamsize>(text.size()))) bad("cannot read " + printable(path));
  return parse_strict(text, printable(path));
}

// -- the schema (the fields this runtime reads) --------------------------------------------------------
bool is_int(const json& v) {
  return v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
}

const json* find(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string need_string(const json& object, const char* key, const std::string& where, size_t max_length = 4096) {
  const json* v = find(object, key);
  if (v == nullptr || !v->is_string() || v->get_ref<const std::string&>().empty() ||
      v->get_ref<const std::string&>().size() > max_length) {
    bad(where + ": field '" + key + "' must be a non-empty string of at most " + std::to_string(max_length) + " bytes");
  }
  return v->get<std::string>();
}

int64_t need_int(const json& object, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  const json* v = find(object, key);
  if (v == nullptr || !is_int(*v)) bad(where + ": field '" + key + "' must be an integer");
  const int64_t value = v->get<int64_t>();
  if (value < lo || value > hi) {
    bad(where + ": field '" + key + "' is " + std::to_string(value) + ", out of range " + std::to_string(lo) + ".." +
        std::to_string(hi));
  }
  return value;
}

int64_t optional_int(const json& object, const char* key, const std::string& where, int64_t lo, int64_t hi,
                     int64_t fallback) {
  return find(object, key) == nullptr ? fallback : need_int(object, key, where, lo, hi);
}

void need_kind(const json& object, const char* key, const std::string& where, bool (json::*is)() const noexcept,
               const char* kind) {
  const json* v = find(object, key);
  if (v != nullptr && !((*v).*is)()) bad(where + ": field '" + key + "' must be " + kind);
}

void check_tensor(const json& entry, const std::string& where) {
  if (!entry.is_object()) bad(where + " must be an object {name, dtype, shape}");
  need_string(entry, "name", where, 256);
  const std::string dtype = need_string(entry, "dtype", where, 16);
  if (dtype != "int64" && dtype != "int32" && dtype != "float32" && dtype != "float16" && dtype != "bool") {
    bad(where + ": dtype '" + printable(dtype) + "' is not one of int64, int32, float32, float16, bool");
  }
  const json* shape = find(entry, "shape");
  if (shape == nullptr || !shape->is_array() || shape->empty() || shape->size() > 8) {
    bad(where + ": shape must be a list of 1 to 8 dimensions");
  }
  for (const auto& d : *shape) {
    if (!d.is_string() && !(is_int(d) && d.get<int64_t>() >= 1 && d.get<int64_t>() <= 1048576)) {
      bad(where + ": shape must hold names or positive integers");
    }
  }
}

void check_files_table(const json& files, const std::string& where) {
  if (!files.is_object() || files.size() > 100000) bad(where + " is malformed: 'files' must map file names to {sha256, bytes}");
  for (const auto& item : files.items()) {
    const json& entry = item.value();
    const std::string at = where + ": files['" + printable(item.key()) + "']";
    if (!entry.is_object() || entry.size() != 2 || !entry.contains("sha256") || !entry.contains("bytes")) {
      bad(at + " must be exactly {sha256, bytes}");
    }
    const json& sha = entry["sha256"];
    bool hex = sha.is_string() && sha.get_ref<const std::string&>().size() == 64;
    for (char c : hex ? sha.get_ref<const std::string&>() : std::string()) {
      hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
    }
    if (!hex) bad(at + ".sha256 must be 64 lowercase hex digits");
    need_int(entry, "bytes", at, 0, kMaxBytes);
  }
}

void check_sections(const json& m, const std::string& where) {
  const json& tok = m["tokenizer"];
  if (!tok.is_object()) bad(where + ": field 'tokenizer' must be an object");
  const std::string tw = where + " tokenizer";
  need_string(tok, "vocab", tw);
  for (const char* key : {"sot_id", "eot_id", "pad_id"}) optional_int(tok, key, tw, 0, kMaxTokenId, 0);
  optional_int(tok, "vocab_size", tw, 514, kMaxTokenId + 1, 0);
  optional_int(tok, "num_merges", tw, 0, kMaxTokenId + 1 - 514, 0);
  need_kind(tok, "cleaning", tw, &json::is_string, "a string");
  for (const char* key : {"reference", "engine", "tensorrt", "coreml", "bank"}) {
    need_kind(m, key, where, &json::is_object, "an object");
  }
  if (const json* ref = find(m, "reference")) need_string(*ref, "file", where + " reference");
  if (const json* engine = find(m, "engine")) {
    const std::string ew = where + " engine";
    need_kind(*engine, "built", ew, &json::is_boolean, "true or false");
    optional_int(*engine, "max_batch", ew, 1, 65536, 1);
    need_kind(*engine, "builder_options", ew, &json::is_object, "an object");
    if (const json* options = find(*engine, "builder_options")) {
      need_kind(*options, "version_compatible", ew + " builder_options", &json::is_boolean, "true or false");
    }
  }
  if (const json* trt = find(m, "tensorrt")) {
    need_kind(*trt, "version", where + " tensorrt", &json::is_string, "a string");
    need_kind(*trt, "gpu", where + " tensorrt", &json::is_object, "an object");
    if (const json* gpu = find(*trt, "gpu")) {
      need_kind(*gpu, "name", where + " tensorrt.gpu", &json::is_string, "a string");
      need_kind(*gpu, "compute_capability", where + " tensorrt.gpu", &json::is_string, "a string");
    }
  }
}

void check_schema(const json& m, const std::string& where, const std::string& dir) {
  if (!m.is_object() || !m.contains("format") || m["format"] != kFormat) bad(where + " is not an edgeseg bundle manifest");
  if (!m.contains("format_version") || !is_int(m["format_version"]) ||
      m["format_version"].get<int64_t>() != EDGESEG_BUNDLE_FORMAT_VERSION) {
    bad(printable(dir) + " has bundle format version " +
        (m.contains("format_version") ? printable(m["format_version"].dump()) : "null") + "; this edgeseg runtime reads " +
        std::to_string(EDGESEG_BUNDLE_FORMAT_VERSION));
  }
  std::string missing;
  for (const char* key : kRequired) {
    if (!m.contains(key)) missing += (missing.empty() ? "" : ", ") + std::string(key);
  }
  if (!missing.empty()) bad(where + " lacks required field(s): " + missing);
  need_string(m, "encoder", where, 128);
  need_int(m, "context_length", where, 2, kMaxContext);
  const std::string precision = need_string(m, "precision", where, 16);
  if (precision != "fp32" && precision != "fp16" && precision != "int8") bad(where + ": precision must be fp32, fp16 or int8");
  need_string(m, "target", where, 64);
  need_string(m, "backend", where, 64);
  need_string(m, "model", where);
  need_kind(m, "model_data", where, &json::is_string, "a string");
  const json& inputs = m["inputs"];
  const json& outputs = m["outputs"];
  if (!inputs.is_array() || inputs.size() != 1 || !outputs.is_array() || outputs.size() != 2) {
    bad(where + ": expected one input (input_ids) and two outputs (memory, mask)");
  }
  check_tensor(inputs[0], where + " inputs[0]");
  check_tensor(outputs[0], where + " outputs[0]");
  check_tensor(outputs[1], where + " outputs[1]");
  check_files_table(m["files"], where);
  check_sections(m, where);
}

// inputs/outputs agree with context_length: ids [batch, L], memory [batch, L, D], mask [batch, L].
void check_shapes(const json& m, const std::string& where) {
  const int64_t length = m["context_length"].get<int64_t>();
  const json* shapes[] = {&m["inputs"][0]["shape"], &m["outputs"][0]["shape"], &m["outputs"][1]["shape"]};
  const size_t ranks[] = {2, 3, 2};
  const char* names[] = {"inputs[0]", "outputs[0]", "outputs[1]"};
  for (int i = 0; i < 3; ++i) {
    const json& s = *shapes[i];
    if (s.size() != ranks[i] || !is_int(s[1]) || s[1].get<int64_t>() != length || (ranks[i] == 3 && !is_int(s[2]))) {
      bad(where + ": " + names[i] + ".shape " + printable(s.dump()) + " does not agree with context_length " +
          std::to_string(length));
    }
  }
}

// -- names ----------------------------------------------------------------------------------------
bool is_plain_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxName || name.find('\\') != std::string::npos) return false;
  for (size_t i = 0, n = 0; i < name.size(); ++i) {
    if (breaks_line(name, i, &n)) return false;
  }
  std::stringstream parts(name + "/");  // a trailing "/" leaves an empty last part: refused below
  std::string part;
  size_t count = 0, total = 0;
  while (std::getline(parts, part, '/')) {
    ++count;
    total += part.size() + 1;
    if (part.empty() || part == "." || part == ".." || part.size() > 255) return false;
  }
  return count > 0 && total == name.size() + 1;
}

std::string fold(const std::string& name) {
  utf8proc_uint8_t* folded = nullptr;
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD);
  if (utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(name.data()), static_cast<utf8proc_ssize_t>(name.size()),
                   &folded, options) < 0) {
    return name;
  }
  std::string out(reinterpret_cast<char*>(folded));
  std::free(folded);
  return out;
}

// Every (dotted path, value) at `path` ("*" matches every item of a list or object); null values are absent.
void field_values(const json& value, const std::vector<std::string>& path, size_t at, const std::string& where,
                  std::vector<std::pair<std::string, const json*>>* out) {
  if (at == path.size()) {
    out->emplace_back(where, &value);
    return;
  }
  if (path[at] == "*" && value.is_structured()) {
    size_t index = 0;
    for (auto it = value.begin(); it != value.end(); ++it, ++index) {
      const std::string key = value.is_object() ? it.key() : std::to_string(index);
      field_values(*it, path, at + 1, where + "." + key, out);
    }
  } else if (const json* child = find(value, path[at].c_str())) {
    field_values(*child, path, at + 1, where.empty() ? path[at] : where + "." + path[at], out);
  }
}

struct FileField {
  std::vector<std::string> path;
  std::vector<std::string> condition;  // must be true for the file to be required (empty: always)
  bool folder = false;                 // names a folder (its files are listed one by one)
};

const std::vector<FileField>& file_fields() {  // edgeseg/bundlecheck.py FILE_FIELDS and DIR_FIELDS
  static const std::vector<FileField> fields = {
      {{"model"}, {}},
      {{"model_data"}, {}},
      {{"tokenizer", "vocab"}, {}},
      {{"reference", "file"}, {}},
      {{"engine", "onnx"}, {}},
      {{"engine", "file"}, {"engine", "built"}},  // model.engine exists once build_engine.py has built it
      {{"bank", "file"}, {}},
      {{"banks", "*", "file"}, {}},
      {{"coreml", "package"}, {}, true},
  };
  return fields;
}

void check_names(const json& m, const std::string& where) {
  const json& files = m["files"];
  std::map<std::string, std::string> seen;
  for (const auto& item : files.items()) {
    if (!is_plain_name(item.key())) {
      bad(where + ": files: '" + printable(item.key()) + "' points outside the bundle or is not a plain relative path");
    }
    auto [it, fresh] = seen.emplace(fold(item.key()), item.key());
    if (!fresh) {
      bad(where + ": files lists '" + printable(it->second) + "' and '" + printable(item.key()) +
          "', one file on case-insensitive file systems");
    }
  }
  for (const FileField& field : file_fields()) {
    std::vector<std::pair<std::string, const json*>> values, condition;
    field_values(m, field.path, 0, "", &values);
    if (!field.condition.empty()) field_values(m, field.condition, 0, "", &condition);
    const bool needed = !field.folder && (field.condition.empty() || (!condition.empty() && *condition[0].second == true));
    for (const auto& [at, value] : values) {
      if (!value->is_string() || !is_plain_name(value->get<std::string>())) {
        bad(where + ": " + at + ": " + printable(value->dump()) + " points outside the bundle or is not a plain relative path");
      }
      if (needed && !files.contains(value->get<std::string>())) {
        bad(where + ": " + at + " names " + printable(value->get<std::string>()) +
            ", which 'files' does not list (every file a bundle uses must be listed with its sha256)");
      }
    }
  }
}

// -- ONNX external data (protobuf wire format) -----------------------------------------------------
enum Kind { kModel, kTraining, kGraph, kFunction, kNode, kAttribute, kSparse, kTensor, kNone };

Kind child_kind(Kind parent, uint64_t field) {  // field numbers of onnx.proto
  switch (parent) {
    case kModel: return field == 7 ? kGraph : field == 25 ? kFunction : field == 20 ? kTraining : kNone;
    case kTraining: return field == 1 || field == 2 ? kGraph : kNone;
    case kGraph: return field == 1 ? kNode : field == 5 ? kTensor : field == 15 ? kSparse : kNone;
    case kFunction: return field == 7 ? kNode : kNone;
    case kNode: return field == 5 ? kAttribute : kNone;
    case kAttribute:
      return field == 5 || field == 10 ? kTensor : field == 6 || field == 11 ? kGraph
                                                  : field == 22 || field == 23 ? kSparse : kNone;
    case kSparse: return field == 1 || field == 2 ? kTensor : kNone;
    default: return kNone;
  }
}

struct Malformed {};

struct Wire {
  const uint8_t* data;

  uint64_t varint(size_t& pos, size_t end) const {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= end) throw Malformed{};
      const uint8_t byte = data[pos++];
      value |= uint64_t(byte & 0x7f) << shift;
      if (byte < 0x80) return value;
    }
    throw Malformed{};
  }

  // Position after the value of a field with this key (start = where its value begins); payload start in *payload.
  size_t skip(size_t pos, size_t end, uint64_t key, size_t* payload) const {
    const uint64_t wire = key & 7;
    uint64_t size = 0;
    if (wire == 0) {
      varint(pos, end);
      *payload = pos;
      return pos;
    }
    if (wire == 2) {
      size = varint(pos, end);
    } else if (wire == 1 || wire == 5) {
      size = wire == 1 ? 8 : 4;
    } else if (wire == 3) {
      for (;;) {  // an obsolete group: skip to its end tag
        const uint64_t inner = varint(pos, end);
        if ((inner & 7) == 4) {
          if ((inner >> 3) != (key >> 3)) throw Malformed{};
          return *payload = pos, pos;
        }
        size_t unused = 0;
        pos = skip(pos, end, inner, &unused);
      }
    } else {
      throw Malformed{};
    }
    if (size > end - pos) throw Malformed{};
    *payload = pos;
    return pos + static_cast<size_t>(size);
  }

  void tensor_locations(size_t pos, size_t end, std::vector<std::string>* out) const {
    while (pos < end) {
      const uint64_t key = varint(pos, end);
      size_t start = 0;
      const size_t stop = skip(pos, end, key, &start);
      if (key == (13u << 3 | 2u)) {  // external_data: StringStringEntryProto {key = 1, value = 2}
        std::string entry_key, entry_value;
        for (size_t p = start; p < stop;) {
          const uint64_t k = varint(p, stop);
          size_t s = 0;
          const size_t e = skip(p, stop, k, &s);
          if (k == (1u << 3 | 2u)) entry_key.assign(reinterpret_cast<const char*>(data + s), e - s);
          if (k == (2u << 3 | 2u)) entry_value.assign(reinterpret_cast<const char*>(data + s), e - s);
          p = e;
        }
        if (entry_key == "location") out->push_back(entry_value);
      }
      pos = stop;
    }
  }

  void walk(Kind kind, size_t pos, size_t end, int depth, std::vector<std::string>* out) const {
    if (depth > 64) bad("its subgraphs nest more than 64 levels deep");
    while (pos < end) {
      const uint64_t key = varint(pos, end);
      size_t start = 0;
      const size_t stop = skip(pos, end, key, &start);
      const Kind child = child_kind(kind, key >> 3);
      if ((key & 7) == 2 && child == kTensor) tensor_locations(start, stop, out);
      else if ((key & 7) == 2 && child != kNone) walk(child, start, stop, depth + 1, out);
      pos = stop;
    }
  }
};

// The external-data locations of an ONNX model; none for a file that is not a protobuf message (no parser reads it).
std::vector<std::string> onnx_external_data(const std::string& path, const std::string& name) {
  std::vector<std::string> found;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) bad("cannot read " + printable(name));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return found;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) bad("cannot read " + printable(name));
  try {
    Wire{static_cast<const uint8_t*>(map)}.walk(kModel, 0, size, 0, &found);
  } catch (const Malformed&) {
    found.clear();
  } catch (const Failure& e) {
    ::munmap(map, size);
    bad(printable(name) + " is refused: " + e.what());
  }
  ::munmap(map, size);
  return found;
}

// -- verification ---------------------------------------------------------------------------------
void verify_files(const json& files, const std::string& dir, const std::string& root, bool verify) {
  for (const auto& item : files.items()) {
    const std::string name = printable(item.key());
    const std::string real = real_path(dir + "/" + item.key());
    struct stat st {};
    if (real.empty() && ::lstat((dir + "/" + item.key()).c_str(), &st) != 0) {
      bad("bundle " + printable(dir) + " is incomplete: " + name + " is missing");
    }
    if (real.empty()) bad("bundle " + printable(dir) + ": " + name + " is a link to nothing");
    if (!inside(root, real)) bad("bundle " + printable(dir) + ": " + name + " is a link that leaves the bundle");
    if (::stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      bad("bundle " + printable(dir) + ": " + name + " is not a regular file");
    }
    if (!verify) continue;
    const bool same = item.value()["bytes"].get<int64_t>() == static_cast<int64_t>(st.st_size) &&
                      item.value()["sha256"].get<std::string>() == sha256_file(real);
    if (!same) bad("bundle " + printable(dir) + " is corrupt or was modified: " + name + " does not match its sha256");
  }
  for (const auto& item : files.items()) {
    const std::string& key = item.key();
    if (key.size() < 5 || key.compare(key.size() - 5, 5, ".onnx") != 0) continue;
    for (const std::string& location : onnx_external_data(real_path(dir + "/" + key), key)) {
      if (!is_plain_name(location) || !files.contains(location)) {
        bad("bundle " + printable(dir) + ": " + printable(key) + " reads its weights from '" + printable(location) +
            "', which 'files' does not list");
      }
    }
  }
}

void fill_tensorrt(const json& m, const std::string& where, Bundle* bundle) {
  const json* trt = find(m, "tensorrt");
  const json* gpu = trt ? find(*trt, "gpu") : nullptr;
  const json* engine = find(m, "engine");
  const json* options = engine ? find(*engine, "builder_options") : nullptr;
  if (trt && find(*trt, "version")) bundle->tensorrt_version = (*trt)["version"].get<std::string>();
  if (gpu && find(*gpu, "name")) bundle->tensorrt_gpu_name = (*gpu)["name"].get<std::string>();
  if (gpu && find(*gpu, "compute_capability")) {
    bundle->tensorrt_compute_capability = (*gpu)["compute_capability"].get<std::string>();
  }
  if (engine) bundle->engine_max_batch = optional_int(*engine, "max_batch", where + " engine", 1, 65536, 1);
  if (options && find(*options, "version_compatible")) {
    bundle->engine_version_compatible = (*options)["version_compatible"].get<bool>();
  }
}

// The manifest fields prompt banks need (bank.hpp): file hashes, external data, semantics, the shipped bank
// (its name is checked and listed by check_names, like every file-bearing field).
void read_bank_fields(const json& m, const std::string& where, Bundle& bundle) {
  for (const auto& item : m["files"].items()) bundle.file_sha256[item.key()] = item.value()["sha256"].get<std::string>();
  if (const json* data = find(m, "model_data")) bundle.model_data_name = data->get<std::string>();
  if (const json* s = find(m, "semantics")) {
    if (s->is_string()) {
      bundle.semantics = s->get<std::string>();
    } else if (s->is_object()) {
      bundle.semantics = find(*s, "name") && (*s)["name"].is_string() ? (*s)["name"].get<std::string>() : s->dump();
    } else {
      bundle.semantics = s->dump();
    }
  }
  const json* bank = find(m, "bank");
  if (bank == nullptr) return;
  bundle.bank_file = need_string(*bank, "file", where + " bank");
  need_kind(*bank, "model_sha256", where + " bank", &json::is_string, "a string");
  if (find(*bank, "model_sha256")) bundle.bank_model_sha256 = (*bank)["model_sha256"].get<std::string>();
}

}  // namespace

Bundle read_bundle(const std::string& dir_in, bool verify) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    bad("bundle " + printable(dir) + " does not exist or is not a directory");
  }
  const std::string root = real_path(dir);
  const json m = read_manifest_file(dir, root);
  const std::string where = printable(dir + "/manifest.json");
  check_schema(m, where, dir);
  check_shapes(m, where);
  check_names(m, where);
  verify_files(m["files"], dir, root, verify);

  const json& tok = m["tokenizer"];
  if (const json* id_map = find(tok, "id_map")) {
    (void)id_map;
    fail(EDGESEG_ERROR_UNSUPPORTED, where + " tokenizer: 'id_map' is set; this C++ runtime does not support remapped ids");
  }
  if (find(tok, "cleaning") && tok["cleaning"] != "sam3-lower") {
    fail(EDGESEG_ERROR_UNSUPPORTED, where + " tokenizer: cleaning " + printable(tok["cleaning"].dump()) +
                                        " is not supported (sam3-lower only)");
  }
  Bundle bundle;
  bundle.dir = dir;
  bundle.encoder = m["encoder"].get<std::string>();
  bundle.backend = m["backend"].get<std::string>();
  bundle.target = m["target"].get<std::string>();
  bundle.precision = m["precision"].get<std::string>();
  bundle.context_length = m["context_length"].get<int64_t>();
  bundle.model_path = dir + "/" + m["model"].get<std::string>();
  bundle.input_name = m["inputs"][0]["name"].get<std::string>();
  bundle.memory_name = m["outputs"][0]["name"].get<std::string>();
  bundle.mask_name = m["outputs"][1]["name"].get<std::string>();
  bundle.output_dim = m["outputs"][0]["shape"][2].get<int64_t>();
  bundle.tokenizer.vocab_path = dir + "/" + tok["vocab"].get<std::string>();
  bundle.tokenizer.sot_id = optional_int(tok, "sot_id", where, 0, kMaxTokenId, -1);
  bundle.tokenizer.eot_id = optional_int(tok, "eot_id", where, 0, kMaxTokenId, -1);
  bundle.tokenizer.pad_id = optional_int(tok, "pad_id", where, 0, kMaxTokenId, 0);
  bundle.tokenizer.vocab_size = optional_int(tok, "vocab_size", where, 514, kMaxTokenId + 1, -1);
  bundle.tokenizer.num_merges = optional_int(tok, "num_merges", where, 0, kMaxTokenId + 1 - 514,
                                             bundle.tokenizer.num_merges);
  bundle.tokenizer.context_length = bundle.context_length;
  bundle.model_name = m["model"].get<std::string>();
  bundle.vocab_name = tok["vocab"].get<std::string>();
  read_bank_fields(m, where, bundle);
  if (bundle.backend == "tensorrt") fill_tensorrt(m, where, &bundle);
  return bundle;
}

}  // namespace detail
}  // namespace edgeseg
