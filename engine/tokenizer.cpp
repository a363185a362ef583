#include "engine/tokenizer.h"

#include <algorithm>
#include <memory>

#include "engine/nfc.h"
#include "engine/pretokenizer_regex.h"
#include "engine/tokenizer_impl.h"
#include "engine/utf8.h"

namespace agentserve::engine {

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

}  // namespace agentserve::engine
