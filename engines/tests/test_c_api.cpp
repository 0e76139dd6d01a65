// The C API on the tiny test bundle (random/synthetic weights; built by make_test_bundle.py): error paths
// return a status and a message (missing bundle, tampered file, wrong manifest version, empty prompt
// list, ...), and encoding is consistent (mask = padding ids, batch = singles, caller = library buffers).
// Numbers vs the Python runtime: tests/test_engines.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "edgeseg/edgeseg.h"
#include "work_dir.h"

namespace fs = std::filesystem;

namespace {

const char* kPrompts[] = {"a dog", "wow!$ sign", "the leftmost child wearing blue vest",
                          "a player in white a player in white a player in white a player in white", ""};
constexpr size_t kCount = sizeof(kPrompts) / sizeof(kPrompts[0]);

class CApi : public edgeseg_test::WorkDirTest {
 protected:
  void SetUp() override {
    if (!fs::is_regular_file(fs::path(EDGESEG_TEST_BUNDLE) / "manifest.json")) {
      GTEST_SKIP() << "test bundle " << EDGESEG_TEST_BUNDLE << " missing (the make_test_bundle ctest fixture builds it)";
    }
    make_work("capi");
  }
  fs::path copy_bundle() {
    fs::path dir = work_ / "bundle";
    fs::copy(EDGESEG_TEST_BUNDLE, dir, fs::copy_options::recursive);
    return dir;
  }
  // Replaces the first top-level `"key": value` in manifest.json (written by Python with indent=2).
  static void edit_manifest(const fs::path& dir, const std::string& key, const std::string& value) {
    std::string text;
    {
      std::ifstream in(dir / "manifest.json");
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    const std::string needle = "\n  \"" + key + "\": ";
    size_t at = text.find(needle);
    ASSERT_NE(at, std::string::npos) << key;
    at += needle.size();
    size_t end = text.find_first_of(",\n", at);
    text.replace(at, end - at, value);
    std::ofstream(dir / "manifest.json") << text;
  }
  static edgeseg_status create(const fs::path& dir, edgeseg_runtime** out) {
    return edgeseg_create(dir.c_str(), nullptr, out);
  }
};

bool contains(const char* haystack, const std::string& needle) { return std::string(haystack).find(needle) != std::string::npos; }

}  // namespace

TEST_F(CApi, MissingBundle) {
  edgeseg_runtime* rt = reinterpret_cast<edgeseg_runtime*>(0x1);
  EXPECT_EQ(edgeseg_create((work_ / "nope").c_str(), nullptr, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_EQ(rt, nullptr);
  EXPECT_TRUE(contains(edgeseg_last_error(), "does not exist")) << edgeseg_last_error();
  EXPECT_EQ(edgeseg_create(work_.c_str(), nullptr, &rt), EDGESEG_ERROR_BUNDLE);  // a directory without manifest
  EXPECT_TRUE(contains(edgeseg_last_error(), "no manifest.json")) << edgeseg_last_error();
  EXPECT_EQ(edgeseg_create(nullptr, nullptr, &rt), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, nullptr, nullptr), EDGESEG_ERROR_INVALID_ARGUMENT);
}

TEST_F(CApi, TamperedFile) {
  fs::path dir = copy_bundle();
  fs::path model = dir / "model.onnx";
  std::string data;
  {
    std::ifstream in(model, std::ios::binary);
    data.assign(std::istreambuf_iterator<char>(in), {});
  }
  data[data.size() / 2] ^= 0x40;  // same size, different bytes
  std::ofstream(model, std::ios::binary) << data;
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_EQ(rt, nullptr);
  EXPECT_TRUE(contains(edgeseg_last_error(), "model.onnx does not match its sha256")) << edgeseg_last_error();
}

TEST_F(CApi, MissingListedFile) {
  fs::path dir = copy_bundle();
  fs::remove(dir / "reference.npz");
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_TRUE(contains(edgeseg_last_error(), "reference.npz is missing")) << edgeseg_last_error();
}

TEST_F(CApi, WrongManifestVersion) {
  fs::path dir = copy_bundle();
  edit_manifest(dir, "format_version", "2");
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_TRUE(contains(edgeseg_last_error(), "format version 2")) << edgeseg_last_error();
}

TEST_F(CApi, MalformedManifests) {
  fs::path dir = copy_bundle();
  std::ofstream(dir / "manifest.json") << "{not json";
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_TRUE(contains(edgeseg_last_error(), "not valid JSON")) << edgeseg_last_error();

  fs::remove_all(dir);
  dir = copy_bundle();
  edit_manifest(dir, "model", "\"../outside.onnx\"");
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
  EXPECT_TRUE(contains(edgeseg_last_error(), "outside the bundle")) << edgeseg_last_error();

  fs::remove_all(dir);
  dir = copy_bundle();
  edit_manifest(dir, "backend", "\"tensorrt\"");
  edgeseg_status status = create(dir, &rt);
#ifndef EDGESEG_WITH_TENSORRT
  EXPECT_EQ(status, EDGESEG_ERROR_UNSUPPORTED);
  EXPECT_TRUE(contains(edgeseg_last_error(), "without TensorRT")) << edgeseg_last_error();
#else
  EXPECT_NE(status, EDGESEG_OK);  // an ONNX file is not a TensorRT engine
#endif
  fs::remove_all(dir);
  dir = copy_bundle();
  edit_manifest(dir, "backend", "\"coreml\"");
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_UNSUPPORTED);
  EXPECT_TRUE(contains(edgeseg_last_error(), "coreml")) << edgeseg_last_error();
}

TEST_F(CApi, BadOnnxRuntimeLibrary) {
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.onnxruntime_library = "/nonexistent/libonnxruntime.so";
  edgeseg_runtime* rt = nullptr;
  // Either it fails to load (first load in this process) or ORT is already loaded from elsewhere.
  EXPECT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, &options, &rt), EDGESEG_ERROR_BACKEND);
  EXPECT_TRUE(contains(edgeseg_last_error(), "/nonexistent/libonnxruntime.so")) << edgeseg_last_error();
  options.struct_size = 3;
  EXPECT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, &options, &rt), EDGESEG_ERROR_INVALID_ARGUMENT);
}

TEST_F(CApi, EmptyPromptListAndBadArguments) {
  edgeseg_runtime* rt = nullptr;
  ASSERT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, nullptr, &rt), EDGESEG_OK) << edgeseg_last_error();
  const int64_t L = edgeseg_context_length(rt), D = edgeseg_output_dim(rt);
  std::vector<float> memory(static_cast<size_t>(L * D));
  std::vector<int64_t> ids(static_cast<size_t>(L));
  EXPECT_EQ(edgeseg_encode(rt, kPrompts, 0, nullptr, nullptr, memory.data()), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(edgeseg_last_error(), "empty prompt list")) << edgeseg_last_error();
  edgeseg_result* result = reinterpret_cast<edgeseg_result*>(0x1);
  EXPECT_EQ(edgeseg_encode_alloc(rt, kPrompts, 0, &result), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(result, nullptr);
  EXPECT_EQ(edgeseg_tokenize(rt, kPrompts, 0, ids.data(), nullptr), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(edgeseg_last_error(), "empty prompt list")) << edgeseg_last_error();
  EXPECT_EQ(edgeseg_encode(rt, kPrompts, 1, nullptr, nullptr, nullptr), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(edgeseg_encode(nullptr, kPrompts, 1, nullptr, nullptr, memory.data()), EDGESEG_ERROR_INVALID_ARGUMENT);
  const char* with_null[] = {"a dog", nullptr};
  EXPECT_EQ(edgeseg_tokenize(rt, with_null, 2, ids.data(), nullptr), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(edgeseg_last_error(), "prompt 1 is NULL")) << edgeseg_last_error();
  const char* bad_utf8[] = {"caf\xc3"};
  EXPECT_EQ(edgeseg_encode(rt, bad_utf8, 1, nullptr, nullptr, memory.data()), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(edgeseg_last_error(), "not valid UTF-8")) << edgeseg_last_error();
  // A good call clears the error.
  EXPECT_EQ(edgeseg_encode(rt, kPrompts, 1, nullptr, nullptr, memory.data()), EDGESEG_OK);
  EXPECT_STREQ(edgeseg_last_error(), "");
  edgeseg_destroy(rt);
  edgeseg_destroy(nullptr);
  edgeseg_result_free(nullptr);
}

TEST_F(CApi, TokenizerOnly) {
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.tokenizer_only = 1;
  edgeseg_runtime* rt = nullptr;
  ASSERT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, &options, &rt), EDGESEG_OK) << edgeseg_last_error();
  std::vector<int64_t> ids(kCount * 16), lengths(kCount);
  ASSERT_EQ(edgeseg_tokenize(rt, kPrompts, kCount, ids.data(), lengths.data()), EDGESEG_OK);
  EXPECT_EQ(lengths[0], 4);
  EXPECT_GT(lengths[3], 16);
  std::vector<float> memory(kCount * 16 * 256);
  EXPECT_EQ(edgeseg_encode(rt, kPrompts, kCount, nullptr, nullptr, memory.data()), EDGESEG_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(edgeseg_last_error(), "tokenizer_only")) << edgeseg_last_error();
  edgeseg_destroy(rt);
}

TEST_F(CApi, EncodeIsConsistent) {
  edgeseg_runtime* rt = nullptr;
  ASSERT_EQ(edgeseg_create(EDGESEG_TEST_BUNDLE, nullptr, &rt), EDGESEG_OK) << edgeseg_last_error();
  EXPECT_STREQ(edgeseg_backend(rt), "onnxruntime");
  EXPECT_STREQ(edgeseg_encoder_name(rt), "tiny");
  const auto L = static_cast<size_t>(edgeseg_context_length(rt)), D = static_cast<size_t>(edgeseg_output_dim(rt));
  ASSERT_EQ(L, 16u);
  ASSERT_EQ(D, 256u);
  std::vector<int64_t> ids(kCount * L);
  std::vector<uint8_t> mask(kCount * L);
  std::vector<float> memory(kCount * L * D);
  ASSERT_EQ(edgeseg_encode(rt, kPrompts, kCount, ids.data(), mask.data(), memory.data()), EDGESEG_OK) << edgeseg_last_error();
  for (size_t i = 0; i < kCount * L; ++i) EXPECT_EQ(mask[i] != 0, ids[i] == 0) << i;  // mask = padding ids
  for (float v : memory) ASSERT_TRUE(std::isfinite(v));
  // "wow!$ sign": "!" is token id 0 inside the prompt, so the mask flags it too (as SAM3 computes it).
  EXPECT_EQ(ids[L + 2], 0);
  EXPECT_EQ(mask[L + 2], 1);

  edgeseg_result* result = nullptr;
  ASSERT_EQ(edgeseg_encode_alloc(rt, kPrompts, kCount, &result), EDGESEG_OK) << edgeseg_last_error();
  ASSERT_EQ(result->batch, kCount);
  EXPECT_EQ(result->truncated, 1u);
  EXPECT_EQ(std::memcmp(result->ids, ids.data(), ids.size() * sizeof(int64_t)), 0);
  EXPECT_EQ(std::memcmp(result->mask, mask.data(), mask.size()), 0);
  for (size_t i = 0; i < memory.size(); ++i) ASSERT_EQ(result->memory[i], memory[i]) << i;
  edgeseg_result_free(result);

  // One prompt at a time gives the batch's rows (up to float reassociation).
  std::vector<float> single(L * D);
  float worst = 0.0f;
  for (size_t b = 0; b < kCount; ++b) {
    ASSERT_EQ(edgeseg_encode(rt, &kPrompts[b], 1, nullptr, nullptr, single.data()), EDGESEG_OK);
    for (size_t i = 0; i < L * D; ++i) worst = std::max(worst, std::fabs(single[i] - memory[b * L * D + i]));
  }
  EXPECT_LT(worst, 1e-5f);
  edgeseg_destroy(rt);
}

TEST_F(CApi, SkippingVerificationLoadsATamperedReference) {
  fs::path dir = copy_bundle();
  std::ofstream(dir / "reference.npz", std::ios::app) << "x";
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.verify_hashes = 0;
  edgeseg_runtime* rt = nullptr;
  EXPECT_EQ(edgeseg_create(dir.c_str(), &options, &rt), EDGESEG_OK) << edgeseg_last_error();
  edgeseg_destroy(rt);
  EXPECT_EQ(create(dir, &rt), EDGESEG_ERROR_BUNDLE);
}
