#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

namespace agentserve::engine {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------
// UTF-8

enum class Utf8Kind { kValid, kInvalid, kTruncated };
struct Utf8Step {
  Utf8Kind kind;
  std::size_t length;  // valid: the character; invalid: the maximal subpart; truncated: the bytes present
};

// One step of the Unicode "maximal subpart" decoder (Unicode 15, section 3.9, table 3-7).
Utf8Step utf8_step(const unsigned char* s, std::size_t n) {
  const unsigned char b = s[0];
  if (b < 0x80) return {Utf8Kind::kValid, 1};
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;  // no encoded surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3;
    if (b == 0xF0) lo = 0x90;  // no overlong forms
    if (b == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return {Utf8Kind::kInvalid, 1};
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (k >= n) return {Utf8Kind::kTruncated, k};
    if (s[k] < lo || s[k] > hi) return {Utf8Kind::kInvalid, k};
    lo = 0x80;
    hi = 0xBF;
  }
  return {Utf8Kind::kValid, need + 1};
}

bool is_valid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  while (i < text.size()) {
    uint64_t word;  // eight ASCII bytes at a time
    if (i + 8 <= text.size() && (std::memcpy(&word, s + i, 8), (word & 0x8080808080808080ull) == 0)) {
      i += 8;
      continue;
    }
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step step = utf8_step(s + i, text.size() - i);
    if (step.kind != Utf8Kind::kValid) return false;
    i += step.length;
  }
  return true;
}

// Code point of the UTF-8 character at s[i], advancing i; only for text known to be valid.
char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const std::size_t len = utf8_step(p, s.size() - i).length;
  char32_t cp = len == 1 ? p[0] : p[0] & (0x7F >> len);
  for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[k] & 0x3F);
  i += len;
  return cp;
}

// ---------------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode): printable bytes stand for themselves, the other 68
// bytes for U+0100.. in byte order, so every byte has a visible character in the vocabulary's strings.

constexpr bool byte_is_printable(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteAlphabet {
  std::array<std::string, 256> byte_to_char;  // UTF-8 of the character standing for each byte
  std::array<int16_t, 0x144> char_to_byte;    // by code point; -1 where no byte maps there

  ByteAlphabet() {
    char_to_byte.fill(-1);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t cp = byte_is_printable(b) ? static_cast<char32_t>(b) : 0x100 + next++;
      char_to_byte[cp] = static_cast<int16_t>(b);
      byte_to_char[b] =
          cp < 0x80 ? std::string(1, static_cast<char>(cp))
                    : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    }
  }

  // The bytes a vocabulary string stands for. Like Hugging Face's ByteLevel decoder, a string with a
  // character outside the alphabet stands for its own UTF-8 bytes.
  std::string to_bytes(std::string_view token) const {
    std::string bytes;
    std::size_t i = 0;
    while (i < token.size()) {
      const char32_t cp = next_code_point(token, i);
      if (cp >= char_to_byte.size() || char_to_byte[cp] < 0) return std::string(token);
      bytes.push_back(static_cast<char>(char_to_byte[cp]));
    }
    return bytes;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---------------------------------------------------------------------------------------------------
// Merge table: (left id, right id) -> (rank, merged id), open addressing. Built once, read-only after.

struct Merge {
  int32_t rank;
  int32_t new_id;
};

class MergeTable {
 public:
  void reserve(std::size_t n) {
    bits_ = 4;
    while ((std::size_t{1} << bits_) < 2 * n) ++bits_;
    keys_.assign(std::size_t{1} << bits_, kEmpty);
    values_.resize(keys_.size());
  }
  // A later entry for the same pair replaces the earlier one, as in Hugging Face's HashMap.
  void insert(int32_t left, int32_t right, Merge merge) {
    const uint64_t key = pack(left, right);
    std::size_t slot = home(key);
    while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & (keys_.size() - 1);
    keys_[slot] = key;
    values_[slot] = merge;
  }
  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    for (std::size_t slot = home(key);; slot = (slot + 1) & (keys_.size() - 1)) {
      if (keys_[slot] == key) return &values_[slot];
      if (keys_[slot] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  std::size_t home(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> (64 - bits_); }

  int bits_ = 4;
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
};

// ---------------------------------------------------------------------------------------------------
// Piece cache: BPE result per pre-tokenized piece. Text repeats its words, so most pieces hit.

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class PieceCache {
 public:
  static constexpr std::size_t kMaxPieceBytes = 64;  // longer pieces rarely repeat
  static constexpr std::size_t kCapacity = 1 << 16;

  bool append_cached(std::string_view piece, std::vector<int32_t>& ids) const {
    std::shared_lock lock(mutex_);
    const auto it = map_.find(piece);
    if (it == map_.end()) return false;
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return true;
  }
  void insert(std::string_view piece, std::span<const int32_t> ids) const {
    std::unique_lock lock(mutex_);
    // Clearing when full keeps memory bounded and lets the cache follow what the text is about now.
    if (map_.size() >= kCapacity) map_.clear();
    map_.try_emplace(std::string(piece), ids.begin(), ids.end());
  }

 private:
  mutable std::shared_mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map_;
};

// ---------------------------------------------------------------------------------------------------
// Pre-tokenizer regex (PCRE2, JIT-compiled once).

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct Pcre2MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

// Hugging Face tokenizers matches with Oniguruma, whose Unicode \s is [\t-\r\x85\p{Z}]. PCRE2 with UCP
// also counts U+180E (a format character since Unicode 6.3) as \s, so \s and \S are spelled out.
std::string to_oniguruma_space(std::string_view pattern) {
  static constexpr std::string_view kSpace = "\\t-\\r\\x{85}\\p{Z}";
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kSpace) : "[" + std::string(kSpace) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kSpace) + "]";
      } else {
        out += c;
        out += e;
      }
    } else if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const std::size_t end = pattern.find(":]", i + 2);  // a POSIX class such as [:alpha:]
      const std::size_t stop = end == std::string_view::npos ? pattern.size() : end + 2;
      out.append(pattern.substr(i, stop - i));
      i = stop - 1;
    } else if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a literal ]
    } else {
      if (c == ']') in_class = false;
      out += c;
    }
  }
  return out;
}

// GPT-2's pattern, which a ByteLevel pre-tokenizer with use_regex applies.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Result<std::unique_ptr<pcre2_code, Pcre2CodeDeleter>> compile_regex(std::string_view hf_pattern) {
  const std::string pattern = to_oniguruma_space(hf_pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<pcre2_code, Pcre2CodeDeleter> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                    &error, &offset, nullptr));
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return Status::invalid_argument("pre_tokenizer regex does not compile at offset " +
                                    std::to_string(offset) + ": " + reinterpret_cast<char*>(message));
  }
  // Without JIT support PCRE2 interprets the pattern: slower, same result.
  (void)pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
  return code;
}

// ---------------------------------------------------------------------------------------------------
// NFC. utf8proc's NFC costs as much as the rest of encoding, so it runs only on text that NFC might change.
// A character of combining class 0 that is neither a mark nor a conjoining Hangul jamo, and that NFC maps
// to itself, cannot compose with a neighbour (every second character of a canonical composition is a mark
// or a jamo) and comes back unchanged; text made only of such "inert" characters is already NFC.
class NfcInertTable {
 public:
  static constexpr char32_t kLimit = 0x30000;  // planes 0-2; characters above take the full path

  NfcInertTable() : bits_(kLimit / 64, 0) {
    for (char32_t cp = 0; cp < kLimit; ++cp) {
      const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
      // A precomposed letter (é, й) decomposes and composes back to itself; singletons and exclusions do not.
      const bool canonical_decomposition = p->decomp_type == 0 && p->decomp_seqindex != UINT16_MAX;
      const bool changes = canonical_decomposition && (p->comp_exclusion || !maps_to_itself(cp));
      const bool mark = p->category == UTF8PROC_CATEGORY_MN || p->category == UTF8PROC_CATEGORY_MC ||
                        p->category == UTF8PROC_CATEGORY_ME;
      const bool jamo =
          (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xA960 && cp <= 0xA97F) || (cp >= 0xD7B0 && cp <= 0xD7FF);
      const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
      if (p->combining_class == 0 && !changes && !mark && !jamo && !surrogate) {
        bits_[cp / 64] |= uint64_t{1} << (cp % 64);
      }
    }
  }
  bool inert(char32_t cp) const { return cp < kLimit && (bits_[cp / 64] >> (cp % 64) & 1); }

 private:
  static bool maps_to_itself(char32_t cp) {
    utf8proc_uint8_t in[4];
    const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), in);
    utf8proc_uint8_t* out = nullptr;
    const auto m =
        utf8proc_map(in, n, &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    const bool same = m == n && std::equal(in, in + n, out);
    std::free(out);
    return same;
  }

  std::vector<uint64_t> bits_;
};

const NfcInertTable& nfc_inert_table() {
  static const NfcInertTable table;
  return table;
}

// Valid UTF-8 only.
bool may_change_under_nfc(std::string_view text) {
  const NfcInertTable& table = nfc_inert_table();
  std::size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0xCC) {  // below U+0300: all inert, the common case
      i += static_cast<unsigned char>(text[i]) < 0x80 ? 1 : 2;
      continue;
    }
    if (!table.inert(next_code_point(text, i))) return true;
  }
  return false;
}

bool to_nfc(std::string_view text, std::string& out) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return false;
  out.assign(reinterpret_cast<const char*>(mapped), static_cast<std::size_t>(n));
  std::free(mapped);
  return true;
}

// ---------------------------------------------------------------------------------------------------
// Loading helpers.

enum class TokenKind : uint8_t { kNone, kVocab, kAdded, kSpecial };

Result<std::string> read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return Status::not_found(path.string() + ": no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io_error(path.string() + ": cannot open");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::io_error(path.string() + ": read failed");
  return std::move(buffer).str();
}

// The member `key` of `object`, or a Corruption naming the path of what is missing.
Result<const json*> member(const json& object, std::string_view key, std::string_view where) {
  if (!object.is_object()) return Status::corruption(std::string(where) + " is not an object");
  const auto it = object.find(key);
  if (it == object.end()) {
    return Status::corruption("missing \"" + std::string(key) + "\" in " + std::string(where));
  }
  return &*it;
}

std::string type_of(const json& j) {
  const json* type = j.is_object() && j.contains("type") ? &j["type"] : nullptr;
  return type && type->is_string() ? type->get<std::string>() : "";
}

// Optional members: absent and null read as false / "".
bool flag(const json& j, const char* key) {
  const auto it = j.is_object() ? j.find(key) : j.end();
  return j.is_object() && it != j.end() && it->is_boolean() && it->get<bool>();
}
std::string text_member(const json& j, const char* key) {
  const auto it = j.is_object() ? j.find(key) : j.end();
  return j.is_object() && it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}
bool null_or_absent(const json& j, const char* key) {
  return !j.is_object() || !j.contains(key) || j[key].is_null();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::vector<std::string> token_strings;  // by id, as tokenizer.json spells them
  std::vector<std::string> token_bytes;    // by id, the bytes they stand for
  std::vector<TokenKind> kinds;            // by id
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids_by_string;
  std::vector<AddedToken> added;
  // Added tokens by first byte, longest first, so the first match at a position is the longest.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;
  std::array<int32_t, 256> byte_ids{};
  MergeTable merges;
  std::unique_ptr<pcre2_code, Pcre2CodeDeleter> split_regex;  // null: each text segment is one piece
  bool nfc = false;
  PieceCache cache;

  Status read_vocab(const json& model);
  Status read_merges(const json& model);
  Status read_added_tokens(const json& root);
  Status read_pipeline(const json& root);

  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void merge_bytes(std::string_view piece, std::vector<int32_t>& ids) const;
  // Length of the added token starting at text[pos] (longest match), and its id; 0 when none.
  std::size_t match_added(std::string_view text, std::size_t pos, int32_t& id) const;
};

Status Tokenizer::Impl::read_vocab(const json& model) {
  AS_ASSIGN_OR_RETURN(const json* vocab, member(model, "vocab", "\"model\""));
  if (!vocab->is_object()) return Status::corruption("\"model.vocab\" is not an object");
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 30)) {
      return Status::corruption("vocab entry \"" + token + "\" has no valid id");
    }
    max_id = std::max(max_id, id.get<int64_t>());
  }
  token_strings.resize(static_cast<std::size_t>(max_id + 1));
  token_bytes.resize(token_strings.size());
  kinds.assign(token_strings.size(), TokenKind::kNone);
  ids_by_string.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    const auto id = id_json.get<int32_t>();
    if (kinds[id] != TokenKind::kNone) {
      return Status::corruption("vocab ids repeat: " + std::to_string(id) + " is \"" + token_strings[id] +
                                "\" and \"" + token + "\"");
    }
    kinds[id] = TokenKind::kVocab;
    token_strings[id] = token;
    token_bytes[id] = byte_alphabet().to_bytes(token);
    ids_by_string.emplace(token, id);
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = ids_by_string.find(byte_alphabet().byte_to_char[b]);
    if (it == ids_by_string.end()) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", b);
      return Status::corruption(std::string("vocab lacks the byte-level token for byte ") + hex);
    }
    byte_ids[b] = it->second;
  }
  return Status::ok_status();
}

Status Tokenizer::Impl::read_merges(const json& model) {
  AS_ASSIGN_OR_RETURN(const json* list, member(model, "merges", "\"model\""));
  if (!list->is_array()) return Status::corruption("\"model.merges\" is not an array");
  merges.reserve(list->size());
  std::string left, right;
  for (std::size_t rank = 0; rank < list->size(); ++rank) {
    const json& entry = (*list)[rank];
    if (entry.is_string()) {  // the format before tokenizers 0.20: "left right"
      const auto& text = entry.get_ref<const std::string&>();
      const std::size_t space = text.find(' ');
      if (space == std::string::npos)
        return Status::corruption("merge #" + std::to_string(rank) + " lacks a space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      return Status::corruption("merge #" + std::to_string(rank) + " is neither \"a b\" nor [a, b]");
    }
    const auto l = ids_by_string.find(left), r = ids_by_string.find(right);
    const auto m = ids_by_string.find(left + right);
    if (l == ids_by_string.end() || r == ids_by_string.end() || m == ids_by_string.end()) {
      return Status::corruption("merge #" + std::to_string(rank) + " (\"" + left + "\", \"" + right +
                                "\") uses a token that is not in the vocab");
    }
    merges.insert(l->second, r->second, Merge{static_cast<int32_t>(rank), m->second});
  }
  return Status::ok_status();
}

Status Tokenizer::Impl::read_added_tokens(const json& root) {
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return Status::ok_status();
  const json& list = root["added_tokens"];
  if (!list.is_array()) return Status::corruption("\"added_tokens\" is not an array");
  for (const json& entry : list) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
        !entry.contains("content") || !entry["content"].is_string()) {
      return Status::corruption("an added token lacks an integer \"id\" or a string \"content\"");
    }
    AddedToken token{entry["id"].get<int32_t>(), entry["content"].get<std::string>(), flag(entry, "special")};
    if (token.id < 0 || token.id >= (1 << 30) || token.content.empty()) {
      return Status::corruption("added token \"" + token.content + "\" has a bad id or is empty");
    }
    for (const char* unsupported : {"lstrip", "rstrip", "single_word", "normalized"}) {
      if (flag(entry, unsupported)) {
        return Status::invalid_argument("added token \"" + token.content + "\" sets " + unsupported +
                                        ", which this tokenizer does not support");
      }
    }
    if (static_cast<std::size_t>(token.id) >= token_strings.size()) {
      token_strings.resize(token.id + 1);
      token_bytes.resize(token.id + 1);
      kinds.resize(token.id + 1, TokenKind::kNone);
    }
    if (kinds[token.id] == TokenKind::kVocab && token_strings[token.id] != token.content) {
      return Status::corruption("added token \"" + token.content + "\" reuses id " +
                                std::to_string(token.id) + " of \"" + token_strings[token.id] + "\"");
    }
    if (kinds[token.id] == TokenKind::kAdded || kinds[token.id] == TokenKind::kSpecial) {
      return Status::corruption("added token id " + std::to_string(token.id) + " repeats");
    }
    kinds[token.id] = token.special ? TokenKind::kSpecial : TokenKind::kAdded;
    token_strings[token.id] = token.content;
    token_bytes[token.id] = token.content;
    ids_by_string.insert_or_assign(token.content, token.id);
    added_by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(token.id);
    added.push_back(std::move(token));
  }
  for (auto& ids : added_by_first_byte) {
    std::stable_sort(ids.begin(), ids.end(), [this](int32_t a, int32_t b) {
      return token_strings[a].size() > token_strings[b].size();
    });
  }
  return Status::ok_status();
}

Status Tokenizer::Impl::read_pipeline(const json& root) {
  AS_ASSIGN_OR_RETURN(const json* model, member(root, "model", "the file"));
  const std::string model_type = type_of(*model);
  if (!model_type.empty() && model_type != "BPE") {
    return Status::invalid_argument("model type \"" + model_type + "\" is not supported (only BPE)");
  }
  if (!null_or_absent(*model, "dropout") || !null_or_absent(*model, "unk_token") ||
      flag(*model, "byte_fallback") || !text_member(*model, "continuing_subword_prefix").empty() ||
      !text_member(*model, "end_of_word_suffix").empty() || flag(*model, "ignore_merges")) {
    return Status::invalid_argument(
        "BPE options dropout/unk_token/byte_fallback/subword affixes/ignore_merges are not supported");
  }
  AS_RETURN_IF_ERROR(read_vocab(*model));
  AS_RETURN_IF_ERROR(read_merges(*model));
  AS_RETURN_IF_ERROR(read_added_tokens(root));

  const json normalizer = root.value("normalizer", json());
  if (!normalizer.is_null() && type_of(normalizer) != "NFC") {
    return Status::invalid_argument("normalizer \"" + type_of(normalizer) +
                                    "\" is not supported (NFC or null)");
  }
  nfc = !normalizer.is_null();
  if (nfc) nfc_inert_table();  // built now rather than in the first encode

  const json decoder = root.value("decoder", json());
  if (!decoder.is_null() && type_of(decoder) != "ByteLevel") {
    return Status::invalid_argument("decoder \"" + type_of(decoder) + "\" is not supported (ByteLevel)");
  }

  // The pre-tokenizer: [Split(Regex, Isolated)] then ByteLevel, alone or in a Sequence.
  AS_ASSIGN_OR_RETURN(const json* pre, member(root, "pre_tokenizer", "the file"));
  std::vector<json> steps;
  if (type_of(*pre) == "Sequence" && pre->contains("pretokenizers") && (*pre)["pretokenizers"].is_array()) {
    steps.assign((*pre)["pretokenizers"].begin(), (*pre)["pretokenizers"].end());
  } else {
    steps.push_back(*pre);
  }
  const bool shape_ok = !steps.empty() && steps.size() <= 2 && type_of(steps.back()) == "ByteLevel" &&
                        (steps.size() == 1 || type_of(steps.front()) == "Split");
  if (!shape_ok) {
    return Status::invalid_argument("pre_tokenizer is not supported (want [Split(Regex)], ByteLevel)");
  }
  const json& byte_level = steps.back();
  if (flag(byte_level, "add_prefix_space")) {
    return Status::invalid_argument("ByteLevel add_prefix_space is not supported");
  }
  std::string pattern;
  if (steps.size() == 2) {
    const json& split = steps.front();
    const json pattern_json = split.value("pattern", json());
    if (!pattern_json.is_object() || !pattern_json.contains("Regex") || !pattern_json["Regex"].is_string() ||
        text_member(split, "behavior") != "Isolated" || flag(split, "invert")) {
      return Status::invalid_argument(
          "Split pre_tokenizer is not supported (want a Regex, Isolated, no invert)");
    }
    pattern = pattern_json["Regex"].get<std::string>();
    if (!byte_level.contains("use_regex") || flag(byte_level, "use_regex")) {
      return Status::invalid_argument("a Split followed by ByteLevel with use_regex is not supported");
    }
  } else if (!byte_level.contains("use_regex") || flag(byte_level, "use_regex")) {
    pattern = kGpt2Pattern;
  }
  if (!pattern.empty()) {
    AS_ASSIGN_OR_RETURN(split_regex, compile_regex(pattern));
  }
  return Status::ok_status();
}

Result<Tokenizer> Tokenizer::load(const std::filesystem::path& dir_or_file) {
  std::error_code ec;
  const std::filesystem::path path =
      std::filesystem::is_directory(dir_or_file, ec) ? dir_or_file / "tokenizer.json" : dir_or_file;
  AS_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return from_json(text, path.string());
}

Result<Tokenizer> Tokenizer::from_json(std::string_view json_text, std::string_view origin) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    return Status::corruption(std::string(origin) + ": not valid JSON (" + e.what() + ")");
  }
  auto impl = std::make_shared<Impl>();
  try {
    AS_RETURN_IF_ERROR(impl->read_pipeline(root).with_context(origin));
  } catch (const json::exception& e) {  // a value of an unexpected type deep in the file
    return Status::corruption(std::string(origin) + ": " + e.what());
  }
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------------
// Encoding.

std::size_t Tokenizer::Impl::match_added(std::string_view text, std::size_t pos, int32_t& id) const {
  for (const int32_t candidate : added_by_first_byte[static_cast<unsigned char>(text[pos])]) {
    const std::string& content = token_strings[candidate];
    if (text.compare(pos, content.size(), content) == 0) {
      id = candidate;
      return content.size();
    }
  }
  return 0;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::string repaired;
  if (!is_valid_utf8(text)) {
    append_valid_utf8(text, false, repaired);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  // Added tokens are found in the raw text first (leftmost, then longest), so neither NFC nor the regex
  // can break them apart. A special token kept as text stays in the segment around it.
  std::size_t segment_start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (impl_->added_by_first_byte[static_cast<unsigned char>(text[pos])].empty()) {
      ++pos;
      continue;
    }
    int32_t id = 0;
    const std::size_t length = impl_->match_added(text, pos, id);
    if (length == 0) {
      ++pos;
      continue;
    }
    if (!parse_special && impl_->kinds[id] == TokenKind::kSpecial) {
      pos += length;
      continue;
    }
    impl_->encode_text(text.substr(segment_start, pos - segment_start), ids);
    ids.push_back(id);
    pos += length;
    segment_start = pos;
  }
  impl_->encode_text(text.substr(segment_start), ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_with_literals(std::string_view text,
                                                     std::span<const ByteRange> literal_ranges) const {
  // Sorted, merged, clamped ranges, walked alongside the text with one cursor.
  std::vector<ByteRange> literals;
  for (const ByteRange& r : literal_ranges) {
    const std::size_t end = std::min(r.end, text.size());
    if (r.begin < end) literals.push_back({r.begin, end});
  }
  std::sort(literals.begin(), literals.end(),
            [](const ByteRange& a, const ByteRange& b) { return a.begin < b.begin; });
  std::vector<ByteRange> merged;
  for (const ByteRange& r : literals) {
    if (!merged.empty() && r.begin <= merged.back().end) {
      merged.back().end = std::max(merged.back().end, r.end);
    } else {
      merged.push_back(r);
    }
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  // Chunks are cut only at ASCII bytes (every added token starts with '<' in Qwen3, and in general a
  // match starts a character), so repairing invalid UTF-8 per chunk equals repairing the whole text.
  std::string repaired;
  const auto encode_chunk = [&](std::string_view chunk) {
    if (!is_valid_utf8(chunk)) {
      repaired.clear();
      append_valid_utf8(chunk, false, repaired);
      chunk = repaired;
    }
    impl_->encode_text(chunk, ids);
  };
  std::size_t next_literal = 0;  // first merged range that ends after pos
  std::size_t segment_start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    while (next_literal < merged.size() && merged[next_literal].end <= pos) ++next_literal;
    if (next_literal < merged.size() && merged[next_literal].begin <= pos) {
      pos = merged[next_literal].end;  // inside a literal: nothing here can start a token
      continue;
    }
    const std::size_t room = next_literal < merged.size() ? merged[next_literal].begin - pos : text.size() - pos;
    int32_t id = -1;
    std::size_t length = 0;
    for (const int32_t candidate : impl_->added_by_first_byte[static_cast<unsigned char>(text[pos])]) {
      const std::string& content = impl_->token_strings[candidate];  // longest first
      if (content.size() <= room && text.compare(pos, content.size(), content) == 0) {
        id = candidate;
        length = content.size();
        break;
      }
    }
    if (id < 0) {
      ++pos;
      continue;
    }
    encode_chunk(text.substr(segment_start, pos - segment_start));
    ids.push_back(id);
    pos += length;
    segment_start = pos;
  }
  encode_chunk(text.substr(segment_start));
  return ids;
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::string normalized;
  if (nfc && may_change_under_nfc(text) && to_nfc(text, normalized)) text = normalized;
  if (!split_regex) {
    encode_piece(text, ids);
    return;
  }
  // One match-data block per thread: ovector pair 0 is all we read.
  thread_local std::unique_ptr<pcre2_match_data, Pcre2MatchDataDeleter> match_data(
      pcre2_match_data_create(1, nullptr));
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t piece_start = 0;  // the Isolated split keeps unmatched gaps as pieces too
  std::size_t offset = 0;
  while (offset < text.size()) {
    int rc = pcre2_match(split_regex.get(), subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                         match_data.get(), nullptr);
    if (rc < PCRE2_ERROR_NOMATCH) {  // the JIT's stack ran out: the interpreter keeps its state on the heap
      rc = pcre2_match(split_regex.get(), subject, text.size(), offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       match_data.get(), nullptr);
    }
    if (rc < 0) break;  // no further match (or a matcher limit even so): the rest is one gap piece
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
    const std::size_t begin = ovector[0], end = ovector[1];
    if (end == begin) {  // an empty match splits nothing; step over one character
      offset = begin + utf8_step(subject + begin, text.size() - begin).length;
      continue;
    }
    if (begin > piece_start) encode_piece(text.substr(piece_start, begin - piece_start), ids);
    encode_piece(text.substr(begin, end - begin), ids);
    piece_start = offset = end;
  }
  if (piece_start < text.size()) encode_piece(text.substr(piece_start), ids);
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (piece.size() == 1) {
    ids.push_back(byte_ids[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= PieceCache::kMaxPieceBytes;
  if (cacheable && cache.append_cached(piece, ids)) return;
  const std::size_t first = ids.size();
  merge_bytes(piece, ids);
  if (cacheable) cache.insert(piece, std::span<const int32_t>(ids).subspan(first));
}

// BPE over the piece's bytes: repeatedly merge the adjacent pair of lowest rank (leftmost on ties), with
// a heap of candidate merges and a linked list of symbols, O(n log n). Stale heap entries are skipped by
// checking that the pair still merges into the same token, exactly as Hugging Face's Word::merge_all.
void Tokenizer::Impl::merge_bytes(std::string_view piece, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  const auto n = static_cast<int32_t>(piece.size());
  symbols.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  const auto push_candidate = [&](int32_t pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    if (const Merge* m = merges.find(symbols[pos].id, symbols[symbols[pos].next].id)) {
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_candidate(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* m = merges.find(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;
    left.id = top.new_id;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    push_candidate(left.prev);
    push_candidate(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

// ---------------------------------------------------------------------------------------------------
// Decoding and lookups.

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= impl_->kinds.size()) continue;
    const TokenKind kind = impl_->kinds[id];
    if (kind == TokenKind::kNone || (skip_special && kind == TokenKind::kSpecial)) continue;
    bytes += impl_->token_bytes[id];
  }
  if (is_valid_utf8(bytes)) return bytes;
  std::string text;
  append_valid_utf8(bytes, false, text);
  return text;
}

Status Tokenizer::validate_ids(std::span<const int32_t> ids) const {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || impl_->kinds[id] == TokenKind::kNone) {
      return Status::invalid_argument("token id " + std::to_string(id) + " (at position " +
                                      std::to_string(i) + ") is not in the vocabulary of " +
                                      std::to_string(vocab_size()) + " ids");
    }
  }
  return Status::ok_status();
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->kinds.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const auto it = impl_->ids_by_string.find(token);
  if (it == impl_->ids_by_string.end()) return std::nullopt;
  return it->second;
}

std::string_view Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return impl_->token_strings[id];
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return impl_->token_bytes[id];
}

bool Tokenizer::is_added(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  return impl_->kinds[id] == TokenKind::kAdded || impl_->kinds[id] == TokenKind::kSpecial;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->kinds[id] == TokenKind::kSpecial;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}

std::size_t append_valid_utf8(std::string_view bytes, bool hold_incomplete_tail, std::string& out) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  while (i < bytes.size()) {
    const std::size_t run_start = i;  // copy runs of valid characters in one append
    Utf8Step step{Utf8Kind::kValid, 0};
    while (i < bytes.size()) {
      step = utf8_step(s + i, bytes.size() - i);
      if (step.kind != Utf8Kind::kValid) break;
      i += step.length;
    }
    out.append(bytes.substr(run_start, i - run_start));
    if (i == bytes.size()) break;
    if (step.kind == Utf8Kind::kTruncated && hold_incomplete_tail) return step.length;
    out.append(kReplacement);
    i += step.length;
  }
  return 0;
}

}  // namespace agentserve::engine
