// Helpers the subcommands share: parsing a token id list from the command line, and turning a Status into
// a message on stderr and a process exit code (2 = the caller's input, 1 = anything else).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace agentserve::cli {

// "1,2,3", also with spaces or wrapped in [ ] so `tokenize` output can be passed back as it is.
Result<std::vector<int32_t>> parse_id_list(std::string_view text);

// Prints "error: <status>" to stderr; returns 2 for errors the caller's input caused (invalid argument,
// out of range, failed precondition) and 1 otherwise.
int report_error(const Status& status);

}  // namespace agentserve::cli
