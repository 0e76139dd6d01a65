// Minimal NumPy .npy / .npz (uncompressed zip) writers for edgeseg-encode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edgeseg_tools {

struct Array {
  std::string name;            // entry name in the .npz, without ".npy"
  std::string descr;           // NumPy dtype string: "<i8", "|b1", "<f4"
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};

std::string npy_bytes(const Array& array);  // header + data
// Writes to a temporary sibling and renames it onto path; throws std::runtime_error on failure.
void write_file_atomic(const std::string& path, const std::string& content);
std::string npz_bytes(const std::vector<Array>& arrays);

}  // namespace edgeseg_tools
