// SHA-256 (FIPS 180-4), used to verify bundle files against their manifest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgeseg {
namespace detail {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::string hex_digest();  // finishes the hash; the object must not be updated afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

// Hex SHA-256 of a file's contents; throws Failure(EDGESEG_ERROR_BUNDLE) if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace detail
}  // namespace edgeseg
