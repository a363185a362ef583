#include "engine/pretokenizer_regex.h"

#include <string>

namespace agentserve::engine {
namespace {

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

}  // namespace

Result<Pcre2Code> compile_regex(std::string_view hf_pattern) {
  const std::string pattern = to_oniguruma_space(hf_pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  Pcre2Code code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                               PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr));
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

}  // namespace agentserve::engine
