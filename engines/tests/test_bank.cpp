// Prompt banks in C++ (bank.hpp and the C API), on the banks make_test_bank.py builds from the tiny test
// bundle (random/synthetic weights). Runs in every build, including EDGESEG_WITH_ONNXRUNTIME=OFF: nothing
// here runs a model. Hostile files (truncated, lying or corrupted headers, flipped bytes) must fail with
// one message, never crash (the sanitizer build checks every read). Python-vs-C++ equality of the served
// values: tests/test_bank.py.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bank.hpp"
#include "common.hpp"
#include "edgeseg/edgeseg.h"
#include "edgeseg/edgeseg.hpp"
#include "work_dir.h"

namespace fs = std::filesystem;
using edgeseg::detail::Bank;
using edgeseg::detail::Failure;

namespace {

const fs::path kBankDir = EDGESEG_TEST_BANK;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& data) { std::ofstream(path, std::ios::binary) << data; }

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

// The message of Bank::open's failure ("" if it opened).
std::string open_error(const fs::path& path) {
  try {
    Bank::open(path.string(), true);
    return "";
  } catch (const Failure& e) {
    EXPECT_EQ(e.status(), EDGESEG_ERROR_BUNDLE);
    return e.what();
  }
}

class Banks : public edgeseg_test::WorkDirTest {
 protected:
  void SetUp() override {
    if (!fs::is_regular_file(kBankDir / "bank-f32.safetensors")) {
      GTEST_SKIP() << "test banks missing in " << kBankDir << " (the make_test_bank ctest fixture builds them)";
    }
    make_work("bank");
  }
  // A copy of a bank file with its JSON header replaced (the 8-byte length updated).
  fs::path with_header(const std::string& find, const std::string& replace) {
    std::string data = read_file(kBankDir / "bank-f32.safetensors");
    uint64_t length = 0;
    std::memcpy(&length, data.data(), 8);
    std::string header = data.substr(8, length);
    size_t at = header.find(find);
    EXPECT_NE(at, std::string::npos) << find;
    header.replace(at, find.size(), replace);
    uint64_t new_length = header.size();
    std::string out(reinterpret_cast<const char*>(&new_length), 8);
    fs::path path = work_ / "edited.safetensors";
    write_file(path, out + header + data.substr(8 + length));
    return path;
  }
  static edgeseg_runtime* create(const fs::path& bundle, const char* bank, bool tokenizer_only, edgeseg_status* status,
                                 bool verify = true) {
    edgeseg_options options;
    edgeseg_options_init(&options);
    options.bank_path = bank;
    options.tokenizer_only = tokenizer_only ? 1 : 0;
    options.verify_hashes = verify ? 1 : 0;
    edgeseg_runtime* rt = nullptr;
    *status = edgeseg_create(bundle.c_str(), &options, &rt);
    return rt;
  }
};

}  // namespace

TEST(BankHalf, ExactConversion) {
  using edgeseg::detail::half_to_float;
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(half_to_float(0x3555), 0.25f * (1.0f + 0x155 / 1024.0f));  // exponent 13 - 15, mantissa 0x155
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)) && half_to_float(0x8000) == 0.0f);
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
}

TEST_F(Banks, OpensAndFinds) {
  auto bank = Bank::open((kBankDir / "bank-f32.safetensors").string(), true);
  EXPECT_EQ(bank->prompts(), 10);
  EXPECT_EQ(bank->entries(), 9);  // "a dog" and "A Dog" tokenize alike
  EXPECT_EQ(bank->context_length(), 16);
  int64_t length = 0;
  const int64_t dog = bank->find_text("a dog", &length);
  EXPECT_EQ(length, 4);
  EXPECT_EQ(bank->find_text("A Dog", nullptr), dog);
  EXPECT_EQ(bank->find_text("a dog ", nullptr), -1);  // exact text only
  std::vector<int64_t> ids(16);
  std::vector<uint8_t> mask(16);
  std::vector<float> memory(16 * 256);
  bank->copy(dog, ids.data(), mask.data(), memory.data());
  EXPECT_EQ(ids[0], 49406);
  EXPECT_EQ(bank->find_ids(ids.data()), dog);
  ids[1] += 1;
  EXPECT_EQ(bank->find_ids(ids.data()), -1);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(mask[i], i >= 4 ? 1 : 0) << i;
  // The float16 bank holds the same values rounded to half precision.
  auto half = Bank::open((kBankDir / "bank-f16.safetensors").string(), true);
  std::vector<float> rounded(16 * 256);
  half->copy(half->find_text("a dog", nullptr), nullptr, nullptr, rounded.data());
  for (size_t i = 0; i < memory.size(); ++i) ASSERT_NEAR(rounded[i], memory[i], std::fabs(memory[i]) * 1e-3 + 1e-7) << i;
  EXPECT_EQ(bank->closest("forklfit", 2), (std::vector<std::string>{"forklift", "pallet"}));
  EXPECT_EQ(bank->closest("  PALLETS ", 1), (std::vector<std::string>{"pallet"}));
}

TEST_F(Banks, RefusesDirectoriesAndMissingFiles) {
  EXPECT_TRUE(contains(open_error(kBankDir / "bankonly"), "is a directory, not a bank file"));
  EXPECT_TRUE(contains(open_error(work_ / "nope.safetensors"), "does not exist"));
}

TEST_F(Banks, RefusesTruncatedFiles) {
  const std::string data = read_file(kBankDir / "bank-f32.safetensors");
  const fs::path path = work_ / "cut.safetensors";
  for (size_t size : {size_t(0), size_t(7), size_t(8), size_t(100), data.size() / 2, data.size() - 1}) {
    write_file(path, data.substr(0, size));
    EXPECT_TRUE(contains(open_error(path), "truncated")) << size << ": " << open_error(path);
  }
  write_file(path, data + "x");
  EXPECT_TRUE(contains(open_error(path), "trailing bytes")) << open_error(path);
  std::string huge = data;
  const uint64_t length = uint64_t(1) << 40;
  std::memcpy(&huge[0], &length, 8);
  write_file(path, huge);
  EXPECT_TRUE(contains(open_error(path), "truncated or not a bank")) << open_error(path);
}

TEST_F(Banks, RefusesLyingOrCorruptedHeaders) {
  EXPECT_TRUE(contains(open_error(with_header("\"entries\":\"9\"", "\"entries\":\"8\"")), "lying header"));
  EXPECT_TRUE(contains(open_error(with_header("\"data_offsets\":[0,", "\"data_offsets\":[8,")), "lying header"));
  EXPECT_TRUE(contains(open_error(with_header("\"format_version\":\"1\"", "\"format_version\":\"2\"")),
                       "bank format version 2"));
  EXPECT_TRUE(contains(open_error(with_header("\"dtype\":\"I64\"", "\"dtype\":\"F64\"")), "corrupted header"));
  EXPECT_TRUE(contains(open_error(with_header("{", "[")), "corrupted header"));
  EXPECT_TRUE(contains(open_error(with_header("\"context_length\":\"16\"", "\"context_length\":\"1e3\"")), "not a count"));
  // Data that no longer matches data_sha256.
  std::string data = read_file(kBankDir / "bank-f32.safetensors");
  data[data.size() - 100] ^= 0x01;
  write_file(work_ / "flipped.safetensors", data);
  EXPECT_TRUE(contains(open_error(work_ / "flipped.safetensors"), "does not match data_sha256"));
}

TEST_F(Banks, RandomByteFlipsNeverCrash) {
  const std::string data = read_file(kBankDir / "bank-f16.safetensors");
  uint64_t length = 0;
  std::memcpy(&length, data.data(), 8);
  std::mt19937 rng(1234);
  const fs::path path = work_ / "fuzz.safetensors";
  int refused = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string mutated = data;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % (8 + length + 64);  // the length field, the header and the start of the data
      mutated[at] = static_cast<char>(mutated[at] ^ (1u << (rng() % 8)));
    }
    write_file(path, mutated);
    try {
      auto bank = Bank::open(path.string(), false);
      std::vector<float> memory(static_cast<size_t>(bank->context_length() * bank->output_dim()));
      for (int64_t e = 0; e < bank->entries(); ++e) bank->copy(e, nullptr, nullptr, memory.data());
    } catch (const Failure& e) {
      EXPECT_EQ(e.status(), EDGESEG_ERROR_BUNDLE);
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
}

TEST_F(Banks, BankOnlyBundleServesKnownPromptsOnly) {
  edgeseg_status status;
  edgeseg_runtime* rt = create(kBankDir / "bankonly", nullptr, false, &status);
  ASSERT_EQ(status, EDGESEG_OK) << edgeseg_last_error();
  EXPECT_STREQ(edgeseg_backend(rt), "bank");
  EXPECT_EQ(edgeseg_bank_entries(rt), 9);
  const char* prompts[] = {"forklift", "a dog", "A DOG  ", "pallet"};  // "A DOG  " is found by its token ids
  std::vector<int64_t> ids(4 * 16);
  std::vector<uint8_t> mask(4 * 16);
  std::vector<float> memory(4 * 16 * 256);
  ASSERT_EQ(edgeseg_encode(rt, prompts, 4, ids.data(), mask.data(), memory.data()), EDGESEG_OK) << edgeseg_last_error();
  EXPECT_EQ(std::memcmp(&memory[1 * 16 * 256], &memory[2 * 16 * 256], 16 * 256 * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(&memory[0], &memory[3 * 16 * 256], 16 * 256 * sizeof(float)), 0);
  const char* unknown[] = {"a dog", "forklfit"};
  EXPECT_EQ(edgeseg_encode(rt, unknown, 2, nullptr, nullptr, memory.data()), EDGESEG_ERROR_NOT_IN_BANK);
  EXPECT_TRUE(contains(edgeseg_last_error(), "prompt 1 ('forklfit') is not in the bank")) << edgeseg_last_error();
  EXPECT_TRUE(contains(edgeseg_last_error(), "closest known prompts: 'forklift'")) << edgeseg_last_error();
  std::vector<uint8_t> found(2);
  ASSERT_EQ(edgeseg_bank_lookup(rt, unknown, 2, ids.data(), nullptr, nullptr, found.data()), EDGESEG_OK);
  EXPECT_EQ(found, (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(ids[16], 49406);  // the unknown prompt's ids are still written
  edgeseg_destroy(rt);
}

TEST_F(Banks, BankWithTokenizerOnlyRuntime) {
  // What an app beside a Core ML package does: tokenizer + bank, no model in this library.
  edgeseg_status status;
  const std::string bank = (kBankDir / "bank-f16.safetensors").string();
  edgeseg_runtime* rt = create(EDGESEG_TEST_BUNDLE, bank.c_str(), true, &status);
  ASSERT_EQ(status, EDGESEG_OK) << edgeseg_last_error();
  const char* prompts[] = {"traffic light", "zebra crossing"};
  std::vector<int64_t> ids(2 * 16);
  std::vector<float> memory(2 * 16 * 256, -7.0f);
  std::vector<uint8_t> found(2);
  ASSERT_EQ(edgeseg_bank_lookup(rt, prompts, 2, ids.data(), nullptr, memory.data(), found.data()), EDGESEG_OK);
  EXPECT_EQ(found, (std::vector<uint8_t>{1, 0}));
  EXPECT_NE(memory[0], -7.0f);
  EXPECT_EQ(memory[16 * 256], -7.0f);  // a miss leaves its rows alone
  EXPECT_EQ(edgeseg_encode(rt, prompts, 2, nullptr, nullptr, memory.data()), EDGESEG_ERROR_NOT_IN_BANK);
  edgeseg_destroy(rt);
}

TEST_F(Banks, RefusesABankOfAnotherBundle) {
  edgeseg_status status;
  const std::string bank = (kBankDir / "bank-f32.safetensors").string();
  // Another vocabulary, another context length, another model: edited copies of the test bundle's manifest.
  // (the files entry whose sha256 changes, or the context length; the field the error must name)
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\"bpe_vocab.txt.gz\": {", "vocabulary"}, {"\"context_length\": 16", "context length"},
      {"\"model.onnx\": {", "model"}};
  for (const auto& [anchor, expected] : cases) {
    const fs::path dir = work_ / "bundle";
    fs::remove_all(dir);
    fs::copy(EDGESEG_TEST_BUNDLE, dir, fs::copy_options::recursive);
    std::string manifest = read_file(dir / "manifest.json");
    ASSERT_NE(manifest.find(anchor), std::string::npos) << anchor;
    if (expected == "context length") {  // consistently: the shapes follow the context length
      nlohmann::json m = nlohmann::json::parse(manifest);
      m["context_length"] = 8;
      for (nlohmann::json* shape : {&m["inputs"][0]["shape"], &m["outputs"][0]["shape"], &m["outputs"][1]["shape"]}) {
        (*shape)[1] = 8;
      }
      manifest = m.dump(2);
    } else {  // the first hex digit of the sha256 that follows the anchor
      size_t at = manifest.find("\"sha256\": \"", manifest.find(anchor)) + std::strlen("\"sha256\": \"");
      manifest[at] = manifest[at] == '0' ? '1' : '0';
    }
    write_file(dir / "manifest.json", manifest);
    edgeseg_runtime* rt = create(dir, bank.c_str(), true, &status, /*verify=*/false);
    EXPECT_EQ(status, EDGESEG_ERROR_BUNDLE) << expected;
    EXPECT_EQ(rt, nullptr);
    EXPECT_TRUE(contains(edgeseg_last_error(), "was built for another bundle: its " + expected)) << edgeseg_last_error();
  }
  // A bank-only bundle whose manifest claims another source model.
  const fs::path dir = work_ / "bankonly";
  fs::copy(kBankDir / "bankonly", dir, fs::copy_options::recursive);
  std::string manifest = read_file(dir / "manifest.json");
  size_t at = manifest.find("\"model_sha256\": \"") + std::strlen("\"model_sha256\": \"");
  manifest[at] = manifest[at] == '0' ? '1' : '0';
  write_file(dir / "manifest.json", manifest);
  EXPECT_EQ(create(dir, nullptr, false, &status), nullptr);
  EXPECT_TRUE(contains(edgeseg_last_error(), "was built for another bundle: its model")) << edgeseg_last_error();
  // A path that is a directory.
  EXPECT_EQ(create(EDGESEG_TEST_BUNDLE, (kBankDir / "bankonly").c_str(), true, &status), nullptr);
  EXPECT_TRUE(contains(edgeseg_last_error(), "is a directory")) << edgeseg_last_error();
}

TEST_F(Banks, CxxApi) {
  edgeseg::Options options;
  options.tokenizer_only = true;
  options.bank = (kBankDir / "bank-f32.safetensors").string();
  edgeseg::Runtime runtime(EDGESEG_TEST_BUNDLE, options);
  EXPECT_EQ(runtime.bank_entries(), 9);
  std::vector<uint8_t> found;
  edgeseg::Encoded out = runtime.lookup({"pallet", "zebra crossing"}, &found);
  EXPECT_EQ(found, (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(runtime.encode({"pallet"}).memory, std::vector<float>(out.memory.begin(), out.memory.begin() + 16 * 256));
  try {
    runtime.encode({"zebra crossing"});
    FAIL() << "a prompt outside the bank must throw without a model";
  } catch (const edgeseg::Error& e) {
    EXPECT_EQ(e.status(), EDGESEG_ERROR_NOT_IN_BANK);
  }
}
