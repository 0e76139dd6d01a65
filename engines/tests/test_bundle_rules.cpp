// The bundle rules (engines/src/bundle.cpp, the same as edgeseg/bundlecheck.py) on tampered copies of the tiny
// test bundle (random/synthetic weights; built by make_test_bundle.py): every case must fail edgeseg_create with
// EDGESEG_ERROR_BUNDLE and a one-line message naming the field or file, and never hang or crash.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "edgeseg/edgeseg.h"
#include "work_dir.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class BundleRules : public edgeseg_test::WorkDirTest {
 protected:
  void SetUp() override {
    if (!fs::is_regular_file(fs::path(EDGESEG_TEST_BUNDLE) / "manifest.json")) {
      GTEST_SKIP() << "test bundle " << EDGESEG_TEST_BUNDLE << " missing (the make_test_bundle ctest fixture builds it)";
    }
    make_work("rules");
    dir_ = work_ / "bundle";
    fs::copy(EDGESEG_TEST_BUNDLE, dir_, fs::copy_options::recursive);
  }
  json manifest() const {
    std::ifstream in(dir_ / "manifest.json");
    return json::parse(in);
  }
  void write_manifest(const std::string& text) const { std::ofstream(dir_ / "manifest.json", std::ios::trunc) << text; }
  void edit(const std::function<void(json&)>& change) const {
    json m = manifest();
    change(m);
    write_manifest(m.dump(2));
  }
  void flip_byte(const std::string& name) const {
    std::fstream file(dir_ / name, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(fs::file_size(dir_ / name) / 2));
    char c = 0;
    file.get(c);
    file.seekp(static_cast<std::streamoff>(fs::file_size(dir_ / name) / 2));
    file.put(static_cast<char>(c ^ 0x40));
  }
  // edgeseg_create (tokenizer_only: no ONNX Runtime needed) must refuse the bundle with `needle` in one line.
  void expect_refused(const std::string& needle) const {
    edgeseg_options options;
    edgeseg_options_init(&options);
    options.tokenizer_only = 1;
    edgeseg_runtime* rt = nullptr;
    EXPECT_EQ(edgeseg_create(dir_.c_str(), &options, &rt), EDGESEG_ERROR_BUNDLE) << edgeseg_last_error();
    EXPECT_EQ(rt, nullptr);
    const std::string message = edgeseg_last_error();
    EXPECT_NE(message.find(needle), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    edgeseg_destroy(rt);
  }
  fs::path dir_;
};

}  // namespace

TEST_F(BundleRules, TheCopyLoads) {
  edgeseg_runtime* rt = nullptr;
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.tokenizer_only = 1;
  ASSERT_EQ(edgeseg_create(dir_.c_str(), &options, &rt), EDGESEG_OK) << edgeseg_last_error();
  edgeseg_destroy(rt);
}

// -- one tampered file per file type ------------------------------------------------------------------
TEST_F(BundleRules, TamperedModelGraph) {
  flip_byte("model.onnx");
  expect_refused("model.onnx does not match its sha256");
}

TEST_F(BundleRules, TamperedExternalWeights) {
  flip_byte("model.onnx.data");
  expect_refused("model.onnx.data does not match its sha256");
}

TEST_F(BundleRules, TamperedVocabulary) {
  flip_byte("bpe_vocab.txt.gz");
  expect_refused("bpe_vocab.txt.gz does not match its sha256");
}

TEST_F(BundleRules, TamperedReference) {
  flip_byte("reference.npz");
  expect_refused("reference.npz does not match its sha256");
}

TEST_F(BundleRules, TamperedManifestValue) {
  edit([](json& m) { m["context_length"] = "16"; });
  expect_refused("'context_length' must be an integer");
}

// -- files that escape verification -------------------------------------------------------------------
TEST_F(BundleRules, ExternalWeightsNotListed) {
  edit([](json& m) { m["files"].erase("model.onnx.data"); });
  expect_refused("model_data names model.onnx.data, which 'files' does not list");
}

TEST_F(BundleRules, ExternalWeightsNotNamedAtAll) {
  edit([](json& m) {
    m["files"].erase("model.onnx.data");
    m.erase("model_data");
  });
  expect_refused("model.onnx reads its weights from 'model.onnx.data', which 'files' does not list");
}

TEST_F(BundleRules, VocabularyOutsideTheBundle) {
  fs::copy_file(dir_ / "bpe_vocab.txt.gz", work_ / "outside.gz");
  const std::string absolute = (work_ / "outside.gz").string();
  edit([&](json& m) { m["tokenizer"]["vocab"] = absolute; });
  expect_refused("points outside the bundle");
  edit([&](json& m) { m["tokenizer"]["vocab"] = "../outside.gz"; });
  expect_refused("points outside the bundle");
  edit([&](json& m) { m["tokenizer"]["vocab"] = "./bpe_vocab.txt.gz"; });
  expect_refused("points outside the bundle");
}

TEST_F(BundleRules, ListedSymlinkLeavingTheBundle) {
  fs::rename(dir_ / "bpe_vocab.txt.gz", work_ / "outside.gz");  // same bytes, same hash: only the link can tell
  fs::create_symlink(work_ / "outside.gz", dir_ / "bpe_vocab.txt.gz");
  expect_refused("bpe_vocab.txt.gz is a link that leaves the bundle");
}

TEST_F(BundleRules, ManifestSymlinkLeavingTheBundle) {
  fs::rename(dir_ / "manifest.json", work_ / "manifest.json");
  fs::create_symlink(work_ / "manifest.json", dir_ / "manifest.json");
  expect_refused("is a link that leaves the bundle");
}

TEST_F(BundleRules, FifoInsteadOfAFile) {
  fs::remove(dir_ / "reference.npz");
  ASSERT_EQ(::mkfifo((dir_ / "reference.npz").c_str(), 0600), 0);
  expect_refused("reference.npz is not a regular file");  // and does not block reading it
}

TEST_F(BundleRules, EngineNamedButNotListedOnceBuilt) {
  edit([](json& m) { m["engine"] = {{"file", "model.engine"}, {"onnx", "model.onnx"}, {"built", true}}; });
  expect_refused("engine.file names model.engine, which 'files' does not list");
  edit([](json& m) { m["engine"]["built"] = false; });  // not built yet (a Jetson bundle before build_engine.py)
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.tokenizer_only = 1;
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(edgeseg_create(dir_.c_str(), &options, &rt), EDGESEG_OK) << edgeseg_last_error();
  edgeseg_destroy(rt);
}

TEST_F(BundleRules, CaseCollisionAndOddNames) {
  edit([](json& m) { m["files"]["MODEL.onnx"] = m["files"]["model.onnx"]; });
  expect_refused("one file on case-insensitive file systems");
  edit([](json& m) {
    m["files"].erase("MODEL.onnx");
    m["files"]["a\nb"] = m["files"]["model.onnx"];
  });
  expect_refused("a\\x0ab");  // escaped: the message stays one line
}

// -- the manifest itself ---------------------------------------------------------------------------------
TEST_F(BundleRules, StrictJson) {
  std::string text;
  {
    std::ifstream in(dir_ / "manifest.json");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  write_manifest("{\"format\": \"edgeseg-bundle\", " + text.substr(1));  // "format" twice
  expect_refused("duplicate key 'format'");
  write_manifest(text.substr(0, text.size() - 2) + ", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_refused("nests deeper than 32 levels");
  write_manifest(text.substr(0, text.size() - 2) + ", \"x\": 1e999}");
  expect_refused("not valid JSON");  // nlohmann refuses the overflow; a parser that gives inf is refused too
  write_manifest(text.substr(0, text.size() - 2) + ", \"x\": NaN}");
  expect_refused("not valid JSON");
  write_manifest(text.substr(0, text.size() - 2) + ", \"pad\": \"" + std::string(2 << 20, ' ') + "\"}");
  expect_refused("the limit is 1048576");
}

TEST_F(BundleRules, WrongTypesAndRanges) {
  const json original = manifest();
  const std::pair<std::function<void(json&)>, std::string> cases[] = {
      {[](json& m) { m["context_length"] = true; }, "'context_length' must be an integer"},
      {[](json& m) { m["context_length"] = 16.0; }, "'context_length' must be an integer"},
      {[](json& m) { m["context_length"] = 1000000000000; }, "out of range 2..512"},
      {[](json& m) { m["context_length"] = 8; }, "does not agree with context_length 8"},
      {[](json& m) { m["tokenizer"] = nullptr; }, "'tokenizer' must be an object"},
      {[](json& m) { m["tokenizer"] = "bpe_vocab.txt.gz"; }, "'tokenizer' must be an object"},
      {[](json& m) { m["tokenizer"]["vocab"] = 3; }, "'vocab' must be a non-empty string"},
      {[](json& m) { m["files"]["model.onnx"]["bytes"] = -1; }, "out of range"},
      {[](json& m) { m["files"]["model.onnx"]["sha256"] = std::string(64, 'A'); }, "64 lowercase hex digits"},
      {[](json& m) { m["files"]["model.onnx"]["extra"] = 1; }, "must be exactly {sha256, bytes}"},
      {[](json& m) { m["outputs"] = json::array(); }, "expected one input (input_ids) and two outputs"},
      {[](json& m) { m["precision"] = "int4"; }, "precision must be fp32, fp16 or int8"},
      {[](json& m) { m["reference"] = "reference.npz"; }, "'reference' must be an object"},
      {[](json& m) { m.erase("files"); }, "lacks required field(s): files"},
  };
  for (const auto& [change, needle] : cases) {
    json m = original;
    change(m);
    write_manifest(m.dump());
    expect_refused(needle);
  }
}
