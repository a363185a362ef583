#include "agent/vocabulary_index.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <utility>

#include "agent/json_string_lexer.h"

namespace agentserve::agent {
namespace {

struct TrieEntry {
  std::string_view bytes;
  int32_t id;
  uint16_t chars;
};

// A trie of `entries` (sorted here by bytes). Breadth first, so each node's children sit side by side; a node
// covers the sorted entries [lo, hi) that share its prefix of `depth` bytes (those ending exactly there sort
// first).
VocabularyIndex::OwnedTrie build_trie(std::vector<TrieEntry> entries) {
  std::sort(entries.begin(), entries.end(), [](const TrieEntry& x, const TrieEntry& y) {
    return x.bytes < y.bytes || (x.bytes == y.bytes && x.id < y.id);
  });
  VocabularyIndex::OwnedTrie t;
  for (const TrieEntry& e : entries) {
    t.ids.push_back(e.id);
    t.chars.push_back(e.chars);
  }
  struct Pending {
    uint32_t node, lo, hi;
    size_t depth;
  };
  t.nodes.push_back({});
  std::deque<Pending> queue{{0, 0, static_cast<uint32_t>(entries.size()), 0}};
  const auto byte_at = [&](uint32_t i, size_t depth) { return static_cast<uint8_t>(entries[i].bytes[depth]); };
  while (!queue.empty()) {
    const Pending p = queue.front();
    queue.pop_front();
    uint32_t i = p.lo;
    t.nodes[p.node].first_token = i;
    while (i < p.hi && entries[i].bytes.size() == p.depth) ++i;
    t.nodes[p.node].n_tokens = i - p.lo;
    t.nodes[p.node].first_child = static_cast<uint32_t>(t.nodes.size());
    while (i < p.hi) {
      const uint8_t byte = byte_at(i, p.depth);
      uint32_t j = i;
      while (j < p.hi && byte_at(j, p.depth) == byte) ++j;
      t.nodes.push_back({.byte = byte});
      queue.push_back({static_cast<uint32_t>(t.nodes.size() - 1), i, j, p.depth + 1});
      i = j;
    }
    t.nodes[p.node].n_children = static_cast<uint32_t>(t.nodes.size()) - t.nodes[p.node].first_child;
  }
  return t;
}

}  // namespace

VocabularyIndex::VocabularyIndex(const engine::Tokenizer& tokenizer, int mask_vocab_size)
    : vocab_size_(std::max(mask_vocab_size, tokenizer.vocab_size())) {
  bytes_.resize(static_cast<size_t>(tokenizer.vocab_size()));
  std::vector<TrieEntry> plain;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    std::string& bytes = bytes_[static_cast<size_t>(id)];
    if (tokenizer.is_added(id)) {
      // Added tokens decode to their content (token_bytes would hand back the same text).
      bytes = std::string(tokenizer.id_to_token(id));
      if (!bytes.empty()) added_.push_back({id, bytes});
      continue;
    }
    bytes = std::string(tokenizer.token_bytes(id));
    if (bytes.empty()) continue;
    plain.push_back({bytes, id, 0});
    max_bytes_ = std::max(max_bytes_, bytes.size());
  }

  string_scans_.resize(kLastBodyState + 1);
  std::vector<TrieEntry> closing[kLastBodyState + 1];
  std::vector<std::pair<uint16_t, int32_t>> inside[kLastBodyState + 1];
  for (const TrieEntry& e : plain) {
    for (int32_t state = kFirstBodyState; state <= kLastBodyState; ++state) {
      int32_t lexer = state;
      uint16_t chars = 0;
      size_t i = 0;
      bool refused = false;
      for (; i < e.bytes.size() && lexer >= 0; ++i) {
        const uint8_t c = static_cast<uint8_t>(e.bytes[i]);
        const bool starts = starts_char(lexer, c);
        if (!string_step(lexer, c)) {
          refused = true;
          break;
        }
        if (starts && chars < UINT16_MAX) ++chars;
      }
      if (refused) continue;
      if (lexer < 0) closing[state].push_back({e.bytes.substr(i), e.id, chars});
      else inside[state].push_back({chars, e.id});
    }
  }
  for (int32_t state = kFirstBodyState; state <= kLastBodyState; ++state) {
    StringScan& scan = string_scans_[static_cast<size_t>(state)];
    std::sort(inside[state].begin(), inside[state].end());
    scan.inside_bits.assign(mask_words(), 0u);
    for (const auto& [chars, id] : inside[state]) {
      scan.inside_ids.push_back(id);
      scan.inside_chars.push_back(chars);
      scan.inside_bits[static_cast<size_t>(id) / 32] |= 1u << (id % 32);
    }
    scan.closing = build_trie(std::move(closing[state]));
  }

  OwnedTrie trie = build_trie(std::move(plain));
  nodes_ = std::move(trie.nodes);
  token_ids_ = std::move(trie.ids);
}

std::string_view VocabularyIndex::bytes_of(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= bytes_.size()) return {};
  return bytes_[static_cast<size_t>(id)];
}

}  // namespace agentserve::agent
