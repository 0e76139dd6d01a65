#include "bundle.hpp"

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "common.hpp"
#include "sha256.hpp"

namespace edgeseg {
namespace detail {

namespace {

using nlohmann::json;

constexpr const char* kFormat = "edgeseg-bundle";
constexpr const char* kRequired[] = {"format", "format_version", "encoder", "context_length", "precision", "target",
                                     "backend", "model", "inputs", "outputs", "tokenizer", "files"};

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool regular_file_size(const std::string& path, int64_t* size) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  *size = static_cast<int64_t>(st.st_size);
  return true;
}

[[noreturn]] void bad(const std::string& message) { fail(EDGESEG_ERROR_BUNDLE, message); }

// Relative, no "..", not absolute: a manifest may not point outside its bundle.
bool safe_name(const std::string& name) {
  if (name.empty() || name[0] == '/') return false;
  std::stringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

std::string get_string(const json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) bad(where + ": '" + key + "' must be a string");
  return it->get<std::string>();
}

int64_t get_int(const json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer()) bad(where + ": '" + key + "' must be an integer");
  return it->get<int64_t>();
}

// The manifest fields prompt banks need (bank.hpp): file hashes, external data, semantics, the shipped bank.
void read_bank_fields(const json& m, const std::string& path, Bundle& bundle) {
  const json& files = m.at("files");
  for (const auto& item : files.items()) {
    if (item.value().contains("sha256") && item.value()["sha256"].is_string()) {
      bundle.file_sha256[item.key()] = item.value()["sha256"].get<std::string>();
    }
  }
  if (m.contains("model_data") && m["model_data"].is_string()) bundle.model_data_name = m["model_data"].get<std::string>();
  if (m.contains("semantics") && m["semantics"].is_string()) {
    bundle.semantics = m["semantics"].get<std::string>();
  } else if (m.contains("semantics") && m["semantics"].is_object()) {
    const json& s = m["semantics"];
    bundle.semantics = s.contains("name") && s["name"].is_string() ? s["name"].get<std::string>() : s.dump();
  } else if (m.contains("semantics") && !m["semantics"].is_null()) {
    bundle.semantics = m["semantics"].dump();
  }
  if (!m.contains("bank") || m.at("bank").is_null()) return;
  const json& bank = m.at("bank");
  if (!bank.is_object()) bad(path + ": 'bank' must be an object");
  bundle.bank_file = get_string(bank, "file", path + " bank");
  if (!safe_name(bundle.bank_file)) bad(path + " is malformed: file name '" + bundle.bank_file + "' points outside the bundle");
  if (!files.contains(bundle.bank_file)) {
    bad("bundle " + bundle.dir + " names file " + bundle.bank_file + " but does not list it");
  }
  if (bank.contains("model_sha256") && bank["model_sha256"].is_string()) {
    bundle.bank_model_sha256 = bank["model_sha256"].get<std::string>();
  }
}

}  // namespace

Bundle read_bundle(const std::string& dir_in, bool verify) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir)) bad("bundle " + dir + " does not exist or is not a directory");
  const std::string path = dir + "/manifest.json";
  int64_t size = 0;
  if (!regular_file_size(path, &size)) bad(dir + " is not an edgeseg bundle: it has no manifest.json");
  Bundle bundle;
  bundle.dir = dir;
  json m;
  {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    m = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  }
  if (m.is_discarded()) bad(path + " is not valid JSON");
  if (!m.is_object() || !m.contains("format") || m["format"] != kFormat) bad(path + " is not an edgeseg bundle manifest");
  if (!m.contains("format_version") || !m["format_version"].is_number_integer() ||
      m["format_version"].get<int64_t>() != EDGESEG_BUNDLE_FORMAT_VERSION) {
    bad(dir + " has bundle format version " + (m.contains("format_version") ? m["format_version"].dump() : "null") +
        "; this edgeseg runtime reads " + std::to_string(EDGESEG_BUNDLE_FORMAT_VERSION));
  }
  std::string missing;
  for (const char* key : kRequired) {
    if (!m.contains(key)) missing += (missing.empty() ? "" : ", ") + std::string(key);
  }
  if (!missing.empty()) bad(path + " lacks required field(s): " + missing);
  const json& files = m["files"];
  if (!files.is_object()) bad(path + " is malformed: 'files' must map file names to {sha256, bytes}");
  for (const auto& item : files.items()) {
    if (!item.value().is_object()) bad(path + " is malformed: 'files' must map file names to {sha256, bytes}");
    if (!safe_name(item.key())) bad(path + " is malformed: file name '" + item.key() + "' points outside the bundle");
  }
  const std::string model = get_string(m, "model", path);
  if (!safe_name(model)) bad(path + " is malformed: file name '" + model + "' points outside the bundle");

  bundle.encoder = m["encoder"].is_string() ? m["encoder"].get<std::string>() : m["encoder"].dump();
  bundle.backend = get_string(m, "backend", path);
  bundle.target = get_string(m, "target", path);
  bundle.precision = get_string(m, "precision", path);
  bundle.context_length = get_int(m, "context_length", path);
  if (bundle.context_length < 2 || bundle.context_length > 4096) bad(path + ": context_length is out of range");
  bundle.model_path = dir + "/" + model;

  const json& inputs = m["inputs"];
  const json& outputs = m["outputs"];
  if (!inputs.is_array() || inputs.size() != 1 || !outputs.is_array() || outputs.size() != 2) {
    bad(path + ": expected one input (input_ids) and two outputs (memory, mask)");
  }
  bundle.input_name = get_string(inputs[0], "name", path + " inputs[0]");
  bundle.memory_name = get_string(outputs[0], "name", path + " outputs[0]");
  bundle.mask_name = get_string(outputs[1], "name", path + " outputs[1]");
  const json& shape = outputs[0].contains("shape") ? outputs[0]["shape"] : json();
  if (!shape.is_array() || shape.size() != 3 || !shape[2].is_number_integer() || shape[2].get<int64_t>() <= 0) {
    bad(path + ": outputs[0].shape must be [batch, L, D] with an integer D");
  }
  bundle.output_dim = shape[2].get<int64_t>();

  const json& tok = m["tokenizer"];
  if (!tok.is_object()) bad(path + ": 'tokenizer' must be an object");
  const std::string where = path + " tokenizer";
  const std::string vocab = get_string(tok, "vocab", where);
  if (!safe_name(vocab)) bad(where + ": vocab '" + vocab + "' points outside the bundle");
  if (tok.contains("id_map") && !tok["id_map"].is_null()) {
    fail(EDGESEG_ERROR_UNSUPPORTED, where + ": 'id_map' is set; this C++ runtime does not support remapped ids");
  }
  if (tok.contains("cleaning") && tok["cleaning"] != "sam3-lower") {
    fail(EDGESEG_ERROR_UNSUPPORTED, where + ": cleaning " + tok["cleaning"].dump() + " is not supported (sam3-lower only)");
  }
  bundle.tokenizer.vocab_path = dir + "/" + vocab;
  bundle.tokenizer.sot_id = get_int(tok, "sot_id", where);
  bundle.tokenizer.eot_id = get_int(tok, "eot_id", where);
  bundle.tokenizer.pad_id = get_int(tok, "pad_id", where);
  bundle.tokenizer.vocab_size = get_int(tok, "vocab_size", where);
  if (tok.contains("num_merges") && !tok["num_merges"].is_null()) {
    bundle.tokenizer.num_merges = get_int(tok, "num_merges", where);
  }
  bundle.tokenizer.context_length = bundle.context_length;
  bundle.model_name = model;
  bundle.vocab_name = vocab;
  read_bank_fields(m, path, bundle);

  if (bundle.backend == "tensorrt") {
    const json trt = m.contains("tensorrt") && m["tensorrt"].is_object() ? m["tensorrt"] : json::object();
    const json gpu = trt.contains("gpu") && trt["gpu"].is_object() ? trt["gpu"] : json::object();
    const json engine = m.contains("engine") && m["engine"].is_object() ? m["engine"] : json::object();
    const json options = engine.contains("builder_options") && engine["builder_options"].is_object()
                             ? engine["builder_options"] : json::object();
    if (trt.contains("version") && trt["version"].is_string()) bundle.tensorrt_version = trt["version"].get<std::string>();
    if (gpu.contains("name") && gpu["name"].is_string()) bundle.tensorrt_gpu_name = gpu["name"].get<std::string>();
    if (gpu.contains("compute_capability") && gpu["compute_capability"].is_string()) {
      bundle.tensorrt_compute_capability = gpu["compute_capability"].get<std::string>();
    }
    if (engine.contains("max_batch")) bundle.engine_max_batch = get_int(engine, "max_batch", path + " engine");
    if (options.contains("version_compatible") && options["version_compatible"].is_boolean()) {
      bundle.engine_version_compatible = options["version_compatible"].get<bool>();
    }
  }

  if (verify) {
    for (const auto& item : files.items()) {
      const std::string file = dir + "/" + item.key();
      int64_t bytes = 0;
      if (!regular_file_size(file, &bytes)) bad("bundle " + dir + " is incomplete: " + item.key() + " is missing");
      const json& entry = item.value();
      bool size_ok = entry.contains("bytes") && entry["bytes"].is_number_integer() && entry["bytes"].get<int64_t>() == bytes;
      bool hash_ok = size_ok && entry.contains("sha256") && entry["sha256"].is_string() &&
                     entry["sha256"].get<std::string>() == sha256_file(file);
      if (!hash_ok) bad("bundle " + dir + " is corrupt or was modified: " + item.key() + " does not match its sha256");
    }
    if (!files.contains(model)) bad("bundle " + dir + " names model file " + model + " but does not list it");
    if (!files.contains(vocab)) bad("bundle " + dir + " names vocabulary " + vocab + " but does not list it");
  }
  return bundle;
}

}  // namespace detail
}  // namespace edgeseg
