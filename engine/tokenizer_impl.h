// Tokenizer::Impl (internal to engine/): the tables a loaded tokenizer holds — vocabulary by id and by
// string, added tokens, byte ids, the merge table, the pre-tokenizer regex — shared by the loader
// (tokenizer_loader.cpp, which fills them) and encode/decode (tokenizer.cpp, which only reads them). After
// loading nothing changes them except the piece cache, which is internally locked; that is what makes a
// Tokenizer safe to share between threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "engine/pretokenizer_regex.h"
#include "engine/tokenizer.h"

namespace agentserve::engine {

enum class TokenKind : uint8_t { kNone, kVocab, kAdded, kSpecial };

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
  Pcre2Code split_regex;  // null: each text segment is one piece
  bool nfc = false;
  PieceCache cache;

  Status read_vocab(const nlohmann::json& model);
  Status read_merges(const nlohmann::json& model);
  Status read_added_tokens(const nlohmann::json& root);
  Status read_pipeline(const nlohmann::json& root);

  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void merge_bytes(std::string_view piece, std::vector<int32_t>& ids) const;
  // Length of the added token starting at text[pos] (longest match), and its id; 0 when none.
  std::size_t match_added(std::string_view text, std::size_t pos, int32_t& id) const;
};

}  // namespace agentserve::engine
