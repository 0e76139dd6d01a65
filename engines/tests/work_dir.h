// A scratch folder per test for the gtest fixtures (pid + test name, so parallel ctest runs never share
// one), created empty in SetUp and removed in TearDown.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace edgeseg_test {

class WorkDirTest : public ::testing::Test {
 protected:
  // Call from SetUp (after any GTEST_SKIP): a fresh, empty <tmp>/edgeseg-<tag>-<pid>-<test name>.
  void make_work(const std::string& tag) {
    work_ = std::filesystem::temp_directory_path() /
            ("edgeseg-" + tag + "-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(work_);
    std::filesystem::create_directories(work_);
  }
  void TearDown() override {
    if (!work_.empty()) std::filesystem::remove_all(work_);
  }
  std::filesystem::path work_;
};

}  // namespace edgeseg_test
