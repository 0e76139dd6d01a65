// SHA-256 against the FIPS 180-4 / NIST CAVP example vectors.
#include <gtest/gtest.h>

#include <string>

#include "sha256.hpp"

using edgeseg::detail::Sha256;

static std::string hash(const std::string& data, size_t chunk = 0) {
  Sha256 h;
  if (chunk == 0) {
    h.update(data.data(), data.size());
  } else {
    for (size_t i = 0; i < data.size(); i += chunk) h.update(data.data() + i, std::min(chunk, data.size() - i));
  }
  return h.hex_digest();
}

TEST(Sha256, NistVectors) {
  EXPECT_EQ(hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hash(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, ChunkingDoesNotMatter) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data += static_cast<char>(i * 7 + 3);
  const std::string whole = hash(data);
  for (size_t chunk : {1, 3, 63, 64, 65, 127}) EXPECT_EQ(hash(data, chunk), whole) << chunk;
}
