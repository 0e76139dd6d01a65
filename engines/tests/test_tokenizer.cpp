// Tokenizer unit tests with independent expectations: Python's documented html.unescape / str.lower /
// regex \s behaviour written out by hand, the vocabulary file read back here, and structural
// properties (SOT/EOT/padding/truncation). Id-for-id parity with the Python tokenizer on every
// calibration prompt is tests/test_engines.py.
#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokenizer.hpp"

using namespace edgeseg::detail;

namespace {

std::string u8(const std::u32string& s) { return encode_utf8(s); }
std::string unescape(const std::string& s) { return u8(html_unescape(decode_utf8(s))); }

TokenizerSpec spec(int64_t context_length = 16) {
  TokenizerSpec s;
  s.vocab_path = EDGESEG_TEST_VOCAB;
  s.context_length = context_length;
  s.sot_id = 49406;
  s.eot_id = 49407;
  s.vocab_size = 49408;
  return s;
}

Tokenizer& shared() {
  static Tokenizer tokenizer(spec());
  return tokenizer;
}

// The merge lines of the vocabulary, read independently of the tokenizer.
std::vector<std::string> merge_lines(size_t limit) {
  gzFile f = gzopen(EDGESEG_TEST_VOCAB, "rb");
  std::string data;
  char buf[4096];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) data.append(buf, static_cast<size_t>(n));
  gzclose(f);
  std::vector<std::string> lines;
  size_t pos = data.find('\n') + 1;
  while (lines.size() < limit) {
    size_t end = data.find('\n', pos);
    lines.push_back(data.substr(pos, end - pos));
    pos = end + 1;
  }
  return lines;
}

}  // namespace

TEST(HtmlUnescape, MatchesPythonRules) {
  EXPECT_EQ(unescape("Tom &amp;amp; Jerry"), "Tom &amp; Jerry");  // one pass; the tokenizer runs two
  EXPECT_EQ(unescape("&lt;3 &gt; &quot;x&quot;"), "<3 > \"x\"");
  EXPECT_EQ(unescape("&ampfoo"), "&foo");          // legacy name without ';' followed by text
  EXPECT_EQ(unescape("&notit;"), "\xC2\xACit;");   // longest prefix that is a name: &not
  EXPECT_EQ(unescape("&nosuch; & &;"), "&nosuch; & &;");
  EXPECT_EQ(unescape("&#65;&#x42;&#X43"), "ABC");
  EXPECT_EQ(unescape("&#128;"), "\xE2\x82\xAC");    // remapped per HTML5: U+20AC
  EXPECT_EQ(unescape("&#0;"), "\xEF\xBF\xBD");
  EXPECT_EQ(unescape("&#xD800;&#99999999999999999999;"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unescape("a&#1;b"), "ab");               // invalid code point: dropped
  EXPECT_EQ(unescape("&#xzz; &#;"), "&#xzz; &#;");
  EXPECT_EQ(unescape("caf&eacute; &NotNestedGreaterGreater;"), "caf\xC3\xA9 \xE2\xAA\xA2\xCC\xB8");
}

TEST(Lowercase, FollowsPythonStrLower) {
  EXPECT_EQ(u8(python_lower(U"ABC\u00C9")), u8(U"abc\u00E9"));
  EXPECT_EQ(u8(python_lower(U"\u0130x")), u8(U"i\u0307x"));          // İ -> i + combining dot
  EXPECT_EQ(u8(python_lower(U"\u039F\u03A3")), u8(U"\u03BF\u03C2"));  // final sigma
  EXPECT_EQ(u8(python_lower(U"\u03A3\u039F")), u8(U"\u03C3\u03BF"));  // not final
  EXPECT_EQ(u8(python_lower(U"\u03A3")), u8(U"\u03C3"));              // alone: not final
  EXPECT_EQ(u8(python_lower(U"\u039F\u03A3 x")), u8(U"\u03BF\u03C2 x"));
}

TEST(Whitespace, RegexAndPythonSets) {
  for (char32_t c : {0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}) {
    EXPECT_TRUE(is_regex_space(c)) << std::hex << c;
    EXPECT_TRUE(is_python_space(c)) << std::hex << c;
  }
  for (char32_t c : {0x1C, 0x1D, 0x1E, 0x1F}) {
    EXPECT_FALSE(is_regex_space(c)) << std::hex << c;
    EXPECT_TRUE(is_python_space(c)) << std::hex << c;
  }
  for (char32_t c : {0x200B, 0xFEFF, 0x180E, 0x41}) EXPECT_FALSE(is_python_space(c)) << std::hex << c;
}

TEST(Tokenizer, CleaningPipeline) {
  Tokenizer& t = shared();
  EXPECT_EQ(t.clean("  Tom &amp;amp;\t\n Jerry  "), "tom & jerry");
  EXPECT_EQ(t.clean("\x1c\x1d" "foo\tbar\r\nbaz"), "foo bar baz");
  EXPECT_EQ(t.clean("a\xe2\x80\x83\xe3\x80\x80" "b"), "a b");  // em space + ideographic space collapse
}

TEST(Tokenizer, VocabularyLayout) {
  Tokenizer& t = shared();
  EXPECT_EQ(t.vocab_size(), 49408);
  EXPECT_EQ(t.sot_id(), 49406);
  EXPECT_EQ(t.eot_id(), 49407);
  EXPECT_EQ(t.token(0), "!");               // byte 33 comes first
  EXPECT_EQ(t.token(256), "!</w>");
  EXPECT_EQ(t.token(49406), "<start_of_text>");
  std::vector<std::string> lines = merge_lines(3);
  for (size_t r = 0; r < lines.size(); ++r) {
    std::string joined = lines[r];
    joined.erase(joined.find(' '), 1);
    EXPECT_EQ(t.token(512 + static_cast<int64_t>(r)), joined);
  }
}

TEST(Tokenizer, SingleWordsUseTheirVocabularyEntry) {
  // A frequent word is one token whose string is "word</w>"; check by looking the id's string up.
  Tokenizer& t = shared();
  for (const char* word : {"dog", "the", "player", "white"}) {
    auto ids = t.encode(word);
    ASSERT_EQ(ids.size(), 1u) << word;
    EXPECT_EQ(t.token(ids[0]), std::string(word) + "</w>");
  }
  auto ids = t.encode("Dog's dog");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(t.token(ids[1]), "'s</w>");
  EXPECT_EQ(ids[0], ids[2]);
}

TEST(Tokenizer, PreTokenizerPieces) {
  Tokenizer& t = shared();
  auto strings = [&](const std::string& text) {
    std::string joined;
    for (int32_t id : t.encode(text)) joined += t.token(id) + "|";
    return joined;
  };
  EXPECT_EQ(strings("2024"), "2</w>|0</w>|2</w>|4</w>|");  // \p{N}: one digit per piece
  EXPECT_EQ(strings("x<end_of_text>y"), "x</w>|<end_of_text>|y</w>|");
  EXPECT_EQ(strings("<START_OF_TEXT>"), "<start_of_text>|");
  EXPECT_EQ(strings("wow!!"), strings("wow") + strings("!!"));
}

TEST(Tokenizer, PackingAndTruncation) {
  Tokenizer& t = shared();
  std::vector<int64_t> row(16, -1);
  int64_t n = t.pack("a dog", row.data());
  EXPECT_EQ(n, 4);
  EXPECT_EQ(row[0], 49406);
  EXPECT_EQ(row[3], 49407);
  for (int i = 4; i < 16; ++i) EXPECT_EQ(row[static_cast<size_t>(i)], 0);
  std::string long_prompt;
  for (int i = 0; i < 30; ++i) long_prompt += "dog ";
  n = t.pack(long_prompt, row.data());
  EXPECT_EQ(n, 32);
  EXPECT_EQ(row[0], 49406);
  EXPECT_EQ(row[15], 49407);
  for (int i = 1; i < 15; ++i) EXPECT_EQ(row[static_cast<size_t>(i)], t.encode("dog")[0]);
  n = t.pack("", row.data());
  EXPECT_EQ(n, 2);
  EXPECT_EQ(row[1], 49407);
}

TEST(Tokenizer, PadsWithTheManifestPadId) {
  // transformers semantics: CLIP's tokenizer pads with <|endoftext|> (49407, the EOT id)
  TokenizerSpec s = spec();
  s.pad_id = 49407;
  Tokenizer t(s);
  EXPECT_EQ(t.pad_id(), 49407);
  std::vector<int64_t> row(16, -1);
  EXPECT_EQ(t.pack("a dog", row.data()), 4);
  std::vector<int64_t> zero_padded(16, -1);
  shared().pack("a dog", zero_padded.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(row[static_cast<size_t>(i)], zero_padded[static_cast<size_t>(i)]);
  for (int i = 4; i < 16; ++i) EXPECT_EQ(row[static_cast<size_t>(i)], 49407);
}

TEST(Tokenizer, CacheDoesNotChangeResults) {
  Tokenizer fresh(spec());
  const std::string text = "the leftmost child wearing blue vest, caf\xc3\xa9 \xe7\x8c\xab";
  auto first = fresh.encode(text);
  EXPECT_EQ(fresh.encode(text), first);
  EXPECT_EQ(shared().encode(text), first);
}

TEST(Tokenizer, PrunedVocabularyUsesNumMerges) {
  TokenizerSpec s = spec();
  s.num_merges = 1000;
  s.sot_id = 512 + 1000;
  s.eot_id = 512 + 1001;
  s.vocab_size = 512 + 1000 + 2;
  Tokenizer small(s);
  EXPECT_EQ(small.vocab_size(), 1514);
  EXPECT_EQ(small.sot_id(), 1512);
  std::vector<int64_t> row(16);
  small.pack("a photograph of a dog", row.data());
  EXPECT_EQ(row[0], 1512);
  for (int64_t id : row) EXPECT_LT(id, 1514);
  s.vocab_size = 49408;  // inconsistent with num_merges
  EXPECT_THROW(Tokenizer{s}, Failure);
}

TEST(Tokenizer, RejectsInvalidUtf8) {
  EXPECT_THROW(shared().encode("ab\xff"), Failure);
  EXPECT_THROW(shared().encode("\xed\xa0\x80"), Failure);  // a surrogate
  EXPECT_THROW(shared().encode("\xc0\xaf"), Failure);      // overlong
}

TEST(Tokenizer, RejectsBadVocabulary) {
  TokenizerSpec s = spec();
  s.vocab_path = "/nonexistent/vocab.txt.gz";
  EXPECT_THROW(Tokenizer{s}, Failure);
  s = spec();
  s.num_merges = 300000;  // more merge lines than the file holds (262,144 + a header)
  s.vocab_size = -1;
  s.sot_id = s.eot_id = -1;
  EXPECT_THROW(Tokenizer{s}, Failure);
}
