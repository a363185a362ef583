// The vocabulary index of grammar-constrained decoding: a tokenizer's vocabulary as a trie of byte strings,
// which MaskBuilder (agent/token_mask.h) walks so that tokens sharing a prefix share the matcher work for it,
// plus what every token does inside a JSON string body from each lexer state (stay inside, break the string,
// or close it and go on with the bytes after the quote), precomputed once so that a mask there is a copy of a
// bitset and a walk over the few suffixes after a quote. Built once per tokenizer and shared read-only by
// every constraint; it knows no grammar. A tokenizer's added tokens (<tool_call>, <|im_end|>) are kept apart,
// never in the trie: only a literal marked added_tokens may let them through.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"

namespace agentserve::agent {

// The tokenizer's vocabulary as a trie of byte strings (added tokens apart), with its string-body scans.
class VocabularyIndex {
 public:
  struct Node {
    uint32_t first_child = 0;
    uint32_t n_children = 0;
    uint32_t first_token = 0;  // tokens whose bytes end here: token_ids_[first_token, first_token + n_tokens)
    uint32_t n_tokens = 0;
    uint8_t byte = 0;
  };
  struct Added {
    int32_t id;
    std::string content;
  };
  // A trie that owns its arrays: nodes[0] is the root, a node's tokens are ids[first_token, + n_tokens), and
  // chars[i] is the characters ids[i] adds to a string.
  struct OwnedTrie {
    std::vector<Node> nodes;
    std::vector<int32_t> ids;
    std::vector<uint16_t> chars;
  };
  // For one lexer state of a string body, every plain token that the lexer takes whole from there: `inside`
  // ones end still in the string, `closing` ones hold its closing quote (their trie is of the bytes after it).
  // `chars` counts the characters the token adds to the string (what a maxLength limits).
  struct StringScan {
    std::vector<uint32_t> inside_bits;
    std::vector<int32_t> inside_ids;     // ascending by chars
    std::vector<uint16_t> inside_chars;  // parallel to inside_ids
    OwnedTrie closing;
  };

  explicit VocabularyIndex(const engine::Tokenizer& tokenizer, int mask_vocab_size = 0);

  // Mask words: (mask_vocab_size + 31) / 32 (mask_vocab_size defaults to the tokenizer's vocab size).
  size_t mask_words() const { return static_cast<size_t>((vocab_size_ + 31) / 32); }
  int vocab_size() const { return vocab_size_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  std::span<const int32_t> tokens_at(const Node& n) const {
    return {token_ids_.data() + n.first_token, n.n_tokens};
  }
  // Every trie token, in trie order (a node's tokens are [first_token, first_token + n_tokens) of it).
  std::span<const int32_t> trie_token_ids() const { return token_ids_; }
  const std::vector<Added>& added() const { return added_; }
  size_t max_token_bytes() const { return max_bytes_; }
  // The bytes of any id (added tokens: their content); empty for an id without a token.
  std::string_view bytes_of(int32_t id) const;

 private:
  friend class MaskBuilder;
  // The scan of a string body's lexer state, kFirstBodyState..kLastBodyState (agent/json_string_lexer.h).
  const StringScan& string_scan(int32_t lexer_state) const {
    return string_scans_[static_cast<size_t>(lexer_state)];
  }

  int vocab_size_;
  std::vector<Node> nodes_;  // nodes_[0] is the root
  std::vector<int32_t> token_ids_;
  std::vector<Added> added_;
  std::vector<std::string> bytes_;  // by id
  size_t max_bytes_ = 0;
  std::vector<StringScan> string_scans_;  // by lexer state; kStrOpen's stays empty (it never rests on a stack)
};

}  // namespace agentserve::agent
