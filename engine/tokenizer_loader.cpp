// Tokenizer::load / from_json: reads tokenizer.json into Tokenizer::Impl's tables, refusing (with a Status
// naming the feature) any pipeline shape that encode() would not reproduce exactly.
#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/nfc.h"
#include "engine/tokenizer_impl.h"
#include "engine/utf8.h"

namespace agentserve::engine {
namespace {

using json = nlohmann::json;

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
// Loading helpers.

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
// Tables.

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
  if (nfc) warm_nfc_tables();  // built now rather than in the first encode

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

}  // namespace agentserve::engine
