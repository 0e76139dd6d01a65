// The C++ API (edgeseg.hpp) over the shared library: RAII, exceptions carry the C API's status and message.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "edgeseg/edgeseg.hpp"

TEST(CxxApi, EncodesAndThrows) {
  if (!std::filesystem::is_regular_file(std::filesystem::path(EDGESEG_TEST_BUNDLE) / "manifest.json")) {
    GTEST_SKIP() << "test bundle missing";
  }
  edgeseg::Runtime runtime(EDGESEG_TEST_BUNDLE);
  EXPECT_EQ(runtime.context_length(), 16);
  EXPECT_EQ(runtime.backend(), "onnxruntime");
  std::vector<int64_t> lengths;
  auto ids = runtime.tokenize({"a dog", "a"}, &lengths);
  ASSERT_EQ(ids.size(), 32u);
  EXPECT_EQ(lengths, (std::vector<int64_t>{4, 3}));
  edgeseg::Encoded out = runtime.encode({"a dog", "a"});
  EXPECT_EQ(out.batch, 2u);
  EXPECT_EQ(out.memory.size(), 2u * 16 * 256);
  EXPECT_EQ(out.ids, ids);
  edgeseg::Runtime moved = std::move(runtime);
  EXPECT_EQ(moved.encode({"a dog"}).memory[0], out.memory[0]);
  try {
    moved.encode({});
    FAIL() << "an empty prompt list must throw";
  } catch (const edgeseg::Error& e) {
    EXPECT_EQ(e.status(), EDGESEG_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("empty prompt list"), std::string::npos);
  }
  EXPECT_THROW(edgeseg::Runtime("/nonexistent/bundle"), edgeseg::Error);
}
