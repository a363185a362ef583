#include "server/cli_args.h"

#include <charconv>
#include <cstdio>
#include <string>

namespace agentserve::cli {

Result<std::vector<int32_t>> parse_id_list(std::string_view text) {
  const auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) s.remove_suffix(1);
    return s;
  };
  text = trim(text);
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    text = trim(text.substr(1, text.size() - 2));
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string_view item =
        trim(text.substr(start, comma == std::string_view::npos ? comma : comma - start));
    int32_t id = 0;
    const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || error != std::errc() || end != item.data() + item.size()) {
      return Status::invalid_argument("--ids: \"" + std::string(item) +
                                      "\" is not a token id (want e.g. 1,2,3)");
    }
    ids.push_back(id);
    if (comma == std::string_view::npos) return ids;
    start = comma + 1;
  }
}

int report_error(const Status& status) {
  std::fprintf(stderr, "error: %s\n", status.to_string().c_str());
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kFailedPrecondition:
      return 2;
    default:
      return 1;
  }
}

}  // namespace agentserve::cli
