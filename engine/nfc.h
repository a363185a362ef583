// NFC normalization for the tokenizer (internal to engine/), with a fast check that skips utf8proc on text
// NFC cannot change. utf8proc's NFC costs as much as the rest of encoding, so it must run only where a
// character might compose or decompose; the check may say "might change" too often, never too rarely.
#pragma once

#include <string>
#include <string_view>

namespace agentserve::engine {

// Builds the inert-character table now rather than on the first check (about 200k utf8proc lookups).
void warm_nfc_tables();

// False only when NFC(text) == text for sure. Valid UTF-8 only.
bool may_change_under_nfc(std::string_view text);

// NFC of valid UTF-8 text into `out`; false (out untouched) when utf8proc refuses the text.
bool to_nfc(std::string_view text, std::string& out);

}  // namespace agentserve::engine
