#include "engine/tokenizer.h"

#include <doctest/doctest.h>
#include <utf8proc.h>

#include <unistd.h>
#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "engine/streaming_detokenizer.h"

namespace agentserve::engine {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string utf8(char32_t cp);

const Tokenizer& qwen3() {
  static const Tokenizer tokenizer = [] {
    auto loaded = Tokenizer::load(AGENTSERVE_TOKENIZER_DIR);
    if (!loaded.ok()) FAIL("cannot load Qwen3's tokenizer: " << loaded.status().to_string());
    return std::move(loaded).value();
  }();
  return tokenizer;
}

// Golden cases from tests/reference/make_tokenizer_golden.mjs (@lenml/tokenizers 3.7.2, an independent
// port of Hugging Face tokenizers). Its NFC is JavaScript's String.prototype.normalize, as in HF.
const json& golden() {
  static const json data =
      json::parse(read_text(fs::path(AGENTSERVE_SOURCE_DIR) / "tests/engine/data/tokenizer_golden.json"));
  return data;
}

std::vector<int32_t> ids_of(const json& j) {
  return j.get<std::vector<int32_t>>();
}

std::string nfc(std::string_view text) {
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                              static_cast<utf8proc_ssize_t>(text.size()), &out,
                              static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  REQUIRE(n >= 0);
  std::string result(reinterpret_cast<char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

// GPT-2's bytes_to_unicode, written out here so the tests do not lean on the code under test.
std::string byte_char(unsigned char b) {
  const auto printable = [](int c) {
    return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
  };
  if (printable(b)) return utf8(b);
  int n = 0;
  for (int c = 0; c < b; ++c) n += !printable(c);
  return utf8(0x100 + n);
}

bool valid_utf8(std::string_view text) {
  std::string repaired;
  append_valid_utf8(text, false, repaired);
  return repaired == text;
}

std::string stream(const Tokenizer& tokenizer, std::span<const int32_t> ids, bool skip_special = false) {
  StreamingDetokenizer detokenizer(tokenizer, skip_special);
  std::string text;
  for (const int32_t id : ids) {
    const std::string piece = detokenizer.push(id);
    CHECK(valid_utf8(piece));
    text += piece;
  }
  text += detokenizer.finish();
  CHECK_FALSE(detokenizer.has_pending());
  return text;
}

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Random valid text drawn from the kinds of characters the pre-tokenizer treats differently.
std::string random_text(std::mt19937& rng, int length) {
  static const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {'a', 'z'},       {'A', 'Z'},       {'0', '9'},       {' ', ' '},         {'\n', '\n'},
      {'\t', '\r'},     {'!', '/'},       {0xA0, 0xFF},     {0x300, 0x330},     {0x400, 0x4FF},
      {0x600, 0x6FF},   {0x900, 0x97F},   {0xE00, 0xE7F},   {0x1100, 0x11FF},   {0x3000, 0x3003},
      {0x4E00, 0x4F00}, {0xAC00, 0xAC80}, {0x200D, 0x200D}, {0x1F300, 0x1F64F}, {0x180E, 0x180E},
      {0x85, 0x85},     {0x2028, 0x2029}, {0xFE0F, 0xFE0F}, {0x2160, 0x2188}};
  static const std::vector<std::string> fragments = {"'s", "'LL", "<|im_end|>", "<think>", "<|", "|>", "  "};
  std::string text;
  for (int i = 0; i < length; ++i) {
    if (rng() % 16 == 0) {
      text += fragments[rng() % fragments.size()];
      continue;
    }
    const auto& [lo, hi] = ranges[rng() % ranges.size()];
    text += utf8(lo + static_cast<char32_t>(rng() % (hi - lo + 1)));
  }
  return text;
}

TEST_CASE("Qwen3's vocabulary facts: size, eos, added and special tokens") {
  const Tokenizer& tok = qwen3();
  CHECK(tok.vocab_size() == 151669);
  CHECK(tok.token_to_id("<|im_end|>") == 151645);
  CHECK(tok.token_to_id("<|endoftext|>") == 151643);
  CHECK(tok.token_to_id("<think>") == 151667);
  CHECK(tok.token_to_id("Hello") == 9707);
  CHECK(tok.token_to_id("Ġworld") == 1879);
  CHECK_FALSE(tok.token_to_id("no such token at all").has_value());
  CHECK(tok.id_to_token(1879) == "Ġworld");
  CHECK(tok.token_bytes(1879) == " world");
  CHECK(tok.id_to_token(151645) == "<|im_end|>");
  CHECK(tok.id_to_token(-1).empty());
  CHECK(tok.id_to_token(151669).empty());
  CHECK(tok.is_special(151645));
  CHECK(tok.is_added(151667));
  CHECK_FALSE(tok.is_special(151667));  // <think> has special=false
  CHECK_FALSE(tok.is_added(9707));
  CHECK(tok.added_tokens().size() == 26);
  CHECK(tok.encode("").empty());
}

TEST_CASE("every golden case encodes to exactly the reference ids") {
  const Tokenizer& tok = qwen3();
  const json& cases = golden()["encode"];
  REQUIRE(cases.size() >= 60);
  for (const json& c : cases) {
    INFO(c["name"].get<std::string>());
    CHECK(tok.encode(c["text"].get<std::string>()) == ids_of(c["ids"]));
  }
}

TEST_CASE("with parse_special false, special tokens are text and <think>-like added tokens still match") {
  const Tokenizer& tok = qwen3();
  int with_special = 0;
  for (const json& c : golden()["encode"]) {
    INFO(c["name"].get<std::string>());
    const json& expected = c.contains("ids_special_as_text") ? c["ids_special_as_text"] : c["ids"];
    with_special += c.contains("ids_special_as_text");
    CHECK(tok.encode(c["text"].get<std::string>(), /*parse_special=*/false) == ids_of(expected));
  }
  CHECK(with_special >= 14);
  const auto ids = tok.encode("<|im_start|>user<think>", false);
  CHECK(std::find(ids.begin(), ids.end(), 151644) == ids.end());
  CHECK(ids.back() == 151667);
}

TEST_CASE("decode of every golden case gives back the NFC text") {
  const Tokenizer& tok = qwen3();
  for (const json& c : golden()["encode"]) {
    INFO(c["name"].get<std::string>());
    const std::string text = c["nfc"].get<std::string>();
    CHECK(tok.decode(ids_of(c["ids"])) == text);
    CHECK(nfc(c["text"].get<std::string>()) == text);  // utf8proc agrees with JavaScript's NFC
  }
}

TEST_CASE("decoding bytes that are not valid UTF-8 gives U+FFFD per maximal subpart, as the reference") {
  const Tokenizer& tok = qwen3();
  for (const json& c : golden()["decode"]) {
    INFO(c["name"].get<std::string>());
    CHECK(tok.decode(ids_of(c["ids"])) == c["text"].get<std::string>());
  }
}

TEST_CASE("streaming detokenizer fed token by token equals decode for every golden case") {
  const Tokenizer& tok = qwen3();
  for (const char* section : {"encode", "decode"}) {
    for (const json& c : golden()[section]) {
      INFO(c["name"].get<std::string>());
      const auto ids = ids_of(c["ids"]);
      CHECK(stream(tok, ids) == tok.decode(ids));
      CHECK(stream(tok, ids, true) == tok.decode(ids, true));
    }
  }
}

TEST_CASE("streaming detokenizer holds back a split character and releases it when complete") {
  const Tokenizer& tok = qwen3();
  // U+1F355 (pizza) as four single-byte tokens: nothing comes out until the fourth.
  const json& cases = golden()["decode"];
  const auto it = std::find_if(cases.begin(), cases.end(),
                               [](const json& c) { return c["name"] == "4-byte emoji from single bytes"; });
  REQUIRE(it != cases.end());
  const std::vector<int32_t> pizza = ids_of((*it)["ids"]);
  REQUIRE(pizza.size() == 4);
  StreamingDetokenizer detokenizer(tok);
  CHECK(detokenizer.push(pizza[0]).empty());
  CHECK(detokenizer.push(pizza[1]).empty());
  CHECK(detokenizer.push(pizza[2]).empty());
  CHECK(detokenizer.has_pending());
  CHECK(detokenizer.push(pizza[3]) == "\xF0\x9F\x8D\x95");
  CHECK(detokenizer.finish().empty());
  // A truncated character at the end becomes one U+FFFD; the detokenizer is then ready for a new stream.
  CHECK(detokenizer.push(pizza[0]).empty());
  CHECK(detokenizer.push(pizza[1]).empty());
  CHECK(detokenizer.finish() == "\xEF\xBF\xBD");
  CHECK(detokenizer.push(9707) == "Hello");
  // Ids without a token add nothing, as in decode().
  CHECK(detokenizer.push(-5).empty());
  CHECK(detokenizer.push(151700).empty());
}

TEST_CASE("streaming detokenizer equals decode on random token streams, including broken UTF-8") {
  const Tokenizer& tok = qwen3();
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      const int kind = static_cast<int>(rng() % 4);
      // Single-byte tokens (ids 0..255 hold the byte alphabet) make split and invalid characters likely.
      ids.push_back(kind == 0   ? static_cast<int32_t>(rng() % 256)
                    : kind == 1 ? static_cast<int32_t>(151643 + rng() % 26)
                                : static_cast<int32_t>(rng() % tok.vocab_size()));
    }
    const std::string decoded = tok.decode(ids);
    CHECK(valid_utf8(decoded));
    CHECK(stream(tok, ids) == decoded);
    CHECK(stream(tok, ids, true) == tok.decode(ids, true));
  }
}

TEST_CASE("append_valid_utf8 replaces each maximal invalid subpart and can hold an incomplete tail") {
  const std::string fffd = "\xEF\xBF\xBD";
  const auto repair = [](std::string_view s) {
    std::string out;
    CHECK(append_valid_utf8(s, false, out) == 0);
    return out;
  };
  CHECK(repair("plain ascii") == "plain ascii");
  CHECK(repair("\xE4\xBD\xA0") == "\xE4\xBD\xA0");
  CHECK(repair("\xE4\xBD") == fffd);
  CHECK(repair("\xE4\xBD"
               "a") == fffd + "a");
  CHECK(repair("\xC0\x80") == fffd + fffd);
  CHECK(repair("\xED\xA0\x80") == fffd + fffd + fffd);
  CHECK(repair("\xF4\x90\x80\x80") == fffd + fffd + fffd + fffd);
  CHECK(repair("\xF0\x9F\x8D") == fffd);
  CHECK(repair("\xFF\xFE") == fffd + fffd);
  std::string out;
  CHECK(append_valid_utf8("ab\xF0\x9F\x8D", true, out) == 3);
  CHECK(out == "ab");
  out.clear();
  CHECK(append_valid_utf8("\xFF"
                          "ab\xE4",
                          true, out) == 1);
  CHECK(out == fffd + "ab");
}

TEST_CASE("invalid UTF-8 in encode input is encoded as U+FFFD, never a crash") {
  const Tokenizer& tok = qwen3();
  CHECK(tok.encode("a\xFF"
                   "b") == tok.encode("a\xEF\xBF\xBD"
                                      "b"));
  CHECK(tok.encode("\xE4\xBD") == tok.encode("\xEF\xBF\xBD"));
  CHECK(tok.encode("x\xC0\x80y") == tok.encode("x\xEF\xBF\xBD\xEF\xBF\xBDy"));
  std::mt19937 rng(11);
  for (int round = 0; round < 200; ++round) {
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    const auto ids = tok.encode(bytes);
    CHECK(tok.validate_ids(ids).ok());
    std::string repaired;
    append_valid_utf8(bytes, false, repaired);
    CHECK(tok.decode(ids) == nfc(repaired));
  }
}

TEST_CASE("decode(encode(text)) is the NFC text for random mixed-script text") {
  const Tokenizer& tok = qwen3();
  std::mt19937 rng(3);
  for (int round = 0; round < 300; ++round) {
    const std::string text = random_text(rng, 1 + static_cast<int>(rng() % 60));
    INFO(text);
    const auto ids = tok.encode(text);
    CHECK(tok.validate_ids(ids).ok());
    CHECK(tok.decode(ids) == nfc(text));
    CHECK(tok.encode(text) == ids);  // the second time from the piece cache
  }
}

TEST_CASE("NFC is applied whenever it changes something: every code point of planes 0-2, and compositions") {
  // encode() skips utf8proc for text of characters it deems NFC-inert; a wrong guess shows up here as a
  // round trip that differs from utf8proc's NFC.
  const Tokenizer& tok = qwen3();
  int mismatches = 0;
  for (char32_t cp = 1; cp < 0x30000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string text = utf8(cp) + utf8(cp) + " " + utf8(cp);
    if (tok.decode(tok.encode(text)) != nfc(text)) {
      if (++mismatches < 5) FAIL_CHECK("code point " << static_cast<uint32_t>(cp));
    }
  }
  CHECK(mismatches == 0);
  // Starters followed by the second characters of compositions that have combining class 0.
  for (const char* text :
       {"\u0B47\u0B3E", "\u0BC6\u0BBE", "\u0CC6\u0CC2", "\u1025\u102E", "\u1100\u1161\u11A8", "\uAC00\u11A8",
        "A\u030A", "\u212B", "\u0419", "\u0418\u0306", "\U0001D15E", "\u2ADC"}) {
    INFO(text);
    CHECK(tok.decode(tok.encode(text)) == nfc(text));
  }
}

TEST_CASE("validate_ids names the first bad id; decode skips ids without a token") {
  const Tokenizer& tok = qwen3();
  CHECK(tok.validate_ids(std::vector<int32_t>{0, 9707, 151668}).ok());
  for (const int32_t bad : {-1, 151669, 200000}) {
    const std::vector<int32_t> ids = {9707, bad, 1879};
    const Status status = tok.validate_ids(ids);
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK(status.message().find(std::to_string(bad)) != std::string::npos);
    CHECK(tok.decode(ids) == "Hello world");
  }
}

TEST_CASE("decode with skip_special drops special tokens and keeps <think> and <tool_call>") {
  const Tokenizer& tok = qwen3();
  const auto ids =
      tok.encode("<|im_start|>assistant\n<think>\nhm\n</think>\n<tool_call>{}</tool_call><|im_end|>");
  CHECK(tok.decode(ids, true) == "assistant\n<think>\nhm\n</think>\n<tool_call>{}</tool_call>");
}

// A plain BPE reference: merge the adjacent pair of lowest rank, leftmost on ties, one merge at a time.
class ReferenceBpe {
 public:
  explicit ReferenceBpe(const fs::path& file) {
    const json root = json::parse(read_text(file));
    for (const auto& [token, id] : root["model"]["vocab"].items()) vocab_[token] = id.get<int32_t>();
    const json& merges = root["model"]["merges"];
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      ranks_.emplace(std::make_pair(merges[rank][0].get<std::string>(), merges[rank][1].get<std::string>()),
                     static_cast<int>(rank));
    }
  }
  std::vector<int32_t> encode(const std::vector<std::string>& byte_chars) const {
    std::vector<std::string> symbols = byte_chars;
    while (symbols.size() > 1) {
      int best_rank = -1;
      std::size_t best = 0;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto it = ranks_.find({symbols[i], symbols[i + 1]});
        if (it != ranks_.end() && (best_rank < 0 || it->second < best_rank)) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best_rank < 0) break;
      symbols[best] += symbols[best + 1];
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& s : symbols) ids.push_back(vocab_.at(s));
    return ids;
  }

 private:
  std::map<std::string, int32_t> vocab_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
};

TEST_CASE("heap BPE equals the plain one-merge-at-a-time reference on random words of odd lengths") {
  const Tokenizer& tok = qwen3();
  const ReferenceBpe reference(fs::path(AGENTSERVE_TOKENIZER_DIR) / "tokenizer.json");
  // Each word is one pre-tokenizer piece: an optional space, then letters only.
  const std::vector<std::string> letters = {"a", "e", "i", "n", "r",  "s", "t",
                                            "l", "o", "é", "ж", "中", "文"};
  std::mt19937 rng(5);
  for (const int length : {1, 2, 3, 5, 17, 31, 64, 65, 100, 257, 1000}) {
    for (int round = 0; round < 6; ++round) {
      std::string word = round % 2 ? " " : "";
      for (int i = 0; i < length; ++i) word += letters[rng() % (round < 3 ? 5 : letters.size())];
      std::vector<std::string> byte_chars;
      for (const char c : word) byte_chars.push_back(byte_char(static_cast<unsigned char>(c)));
      INFO("length " << length << ": " << word);
      CHECK(tok.encode(word) == reference.encode(byte_chars));
    }
  }
}

TEST_CASE("encode from many threads at once gives the same ids as one thread") {
  const Tokenizer& tok = qwen3();
  std::mt19937 rng(9);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back(random_text(rng, 200));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const Tokenizer copy = tok;  // copies share the tables and the piece cache
      for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < texts.size(); ++i) mismatches[t] += copy.encode(texts[i]) != expected[i];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}

TEST_CASE("huge single pieces (spaces, letters, digits, newlines, CJK) encode and round-trip") {
  const Tokenizer& tok = qwen3();
  std::string cjk;
  for (int i = 0; i < 30000; ++i) cjk += "\xE4\xBD\xA0";
  const std::vector<std::string> inputs = {std::string(200000, ' '),     std::string(200000, 'a'),
                                           std::string(100000, '7'),     std::string(100000, '\n'),
                                           std::string(100000, '!'),     cjk,
                                           std::string(50000, ' ') + "x"};
  for (const auto& text : inputs) {
    const auto ids = tok.encode(text);
    CHECK(tok.decode(ids) == text);
  }
  CHECK(tok.encode(std::string(100000, '7')).size() == 100000);  // every digit its own token
}

// A small byte-level tokenizer.json: the 256 byte tokens (ids 0..255), then `extra` tokens built by
// `merges` (pairs of vocabulary strings), with Qwen3's pre-tokenizer.
json synthetic(const std::vector<std::pair<std::string, std::string>>& merges,
               const json& added = json::array()) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(static_cast<unsigned char>(b))] = b;
  json merge_list = json::array();
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = static_cast<int>(vocab.size());
    merge_list.push_back({l, r});
  }
  static const json qwen3_root =
      json::parse(read_text(fs::path(AGENTSERVE_TOKENIZER_DIR) / "tokenizer.json"));
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer", qwen3_root["pre_tokenizer"]},
          {"decoder", qwen3_root["decoder"]},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
}

Tokenizer load_json(const json& j) {
  auto loaded = Tokenizer::from_json(j.dump());
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
  return std::move(loaded).value();
}

TEST_CASE("U+180E is not whitespace to the pre-tokenizer, as in Oniguruma (HF), unlike PCRE2's \\s") {
  // U+180E is E1 A0 8E; merges build it (id 257) and a pair of it (id 258).
  const std::string e1 = byte_char(0xE1), a0 = byte_char(0xA0), x8e = byte_char(0x8E);
  const Tokenizer tok = load_json(synthetic({{e1, a0}, {e1 + a0, x8e}, {e1 + a0 + x8e, e1 + a0 + x8e}}));
  // Oniguruma: "x" | U+180E U+180E (punctuation run) | "y". PCRE2's \s would give "x" | U+180E | U+180E "y".
  CHECK(tok.encode("x\u180E\u180Ey") == std::vector<int32_t>{'x', 258, 'y'});
}

TEST_CASE("BPE merges the leftmost pair first when ranks tie, and added tokens match leftmost-longest") {
  const json added = json::array({{{"id", 300}, {"content", "ab"}, {"special", false}},
                                  {{"id", 301}, {"content", "abc"}, {"special", true}}});
  const Tokenizer tok = load_json(synthetic({{"a", "a"}}, added));
  CHECK(tok.encode("aaa") == std::vector<int32_t>{256, 'a'});
  CHECK(tok.encode("aaaa") == std::vector<int32_t>{256, 256});
  CHECK(tok.encode("xabcab") == std::vector<int32_t>{'x', 301, 300});
  // With special tokens as text, "abc" is skipped as a whole and matching resumes after it.
  CHECK(tok.encode("xabcab", false) == std::vector<int32_t>{'x', 'a', 'b', 'c', 300});
  CHECK(tok.vocab_size() == 302);
  CHECK(tok.validate_ids(std::vector<int32_t>{299}).code() == StatusCode::kInvalidArgument);  // a gap
}

TEST_CASE("loading reports a missing, truncated or incomplete tokenizer.json clearly") {
  const fs::path dir =
      fs::temp_directory_path() / ("agentserve_tokenizer_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto write = [&](const std::string& text) {
    std::ofstream(dir / "tokenizer.json", std::ios::binary) << text;
  };
  const auto error_of = [](const Result<Tokenizer>& r) {
    return r.ok() ? std::string("ok") : r.status().to_string();
  };

  auto missing = Tokenizer::load(dir);
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(error_of(missing).find("tokenizer.json") != std::string::npos);
  CHECK(Tokenizer::load(dir / "nope.json").status().code() == StatusCode::kNotFound);

  write(read_text(fs::path(AGENTSERVE_TOKENIZER_DIR) / "tokenizer.json").substr(0, 5000));
  auto truncated = Tokenizer::load(dir);
  CHECK(truncated.status().code() == StatusCode::kCorruption);
  CHECK(error_of(truncated).find("not valid JSON") != std::string::npos);

  json no_model = synthetic({});
  no_model.erase("model");
  write(no_model.dump());
  auto lacking = Tokenizer::load(dir / "tokenizer.json");
  CHECK(lacking.status().code() == StatusCode::kCorruption);
  CHECK(error_of(lacking).find("missing \"model\"") != std::string::npos);
  fs::remove_all(dir);

  json no_merges = synthetic({});
  no_merges["model"].erase("merges");
  CHECK(error_of(Tokenizer::from_json(no_merges.dump())).find("missing \"merges\"") != std::string::npos);

  json bad_merge = synthetic({});
  bad_merge["model"]["merges"] = json::array({json::array({"a", "zz"})});
  CHECK(error_of(Tokenizer::from_json(bad_merge.dump())).find("not in the vocab") != std::string::npos);

  json no_byte = synthetic({});
  no_byte["model"]["vocab"].erase("a");
  CHECK(error_of(Tokenizer::from_json(no_byte.dump())).find("byte 0x61") != std::string::npos);

  json bad_vocab = synthetic({});
  bad_vocab["model"]["vocab"]["a"] = "one";
  CHECK(Tokenizer::from_json(bad_vocab.dump()).status().code() == StatusCode::kCorruption);

  json not_nfc = synthetic({});
  not_nfc["normalizer"] = {{"type", "Lowercase"}};
  CHECK(Tokenizer::from_json(not_nfc.dump()).status().code() == StatusCode::kInvalidArgument);

  json bad_regex = synthetic({});
  bad_regex["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  CHECK(error_of(Tokenizer::from_json(bad_regex.dump())).find("does not compile") != std::string::npos);

  json stripped = synthetic({}, json::array({{{"id", 300}, {"content", "<x>"}, {"lstrip", true}}}));
  CHECK(error_of(Tokenizer::from_json(stripped.dump())).find("lstrip") != std::string::npos);

  CHECK(Tokenizer::from_json("[1, 2]").status().code() == StatusCode::kCorruption);
  CHECK(Tokenizer::from_json("").status().code() == StatusCode::kCorruption);
}

}  // namespace
}  // namespace agentserve::engine
