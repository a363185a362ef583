// The calculator tool: calculator {expression} evaluates arithmetic with a small recursive-descent parser
// of its own: numbers (1, 2.5, 1e-3), + - * / % ^ (also **; right-associative, binding tighter than unary
// minus, so -2^2 = -4), parentheses, the constants pi and e, and the functions sqrt abs exp ln log (natural)
// log10 log2 sin cos tan asin acos atan floor ceil round, pow(x, y), min(...) and max(...).
//
// It never evaluates anything but this grammar (no eval, no variables, no loops), never recurses past
// kMaxCalculatorDepth, and never returns inf or NaN: division or modulo by zero, overflow and domain errors
// (sqrt(-1)) are errors naming the cause.
#pragma once

#include <cstddef>
#include <string_view>

#include "base/status.h"
#include "tools/tool_registry.h"

namespace agentserve::tools {

inline constexpr size_t kMaxExpressionBytes = 1000;
inline constexpr int kMaxCalculatorDepth = 64;  // nested parentheses, unary signs, powers and calls

// InvalidArgument for a syntax error (with the byte position), an unknown name, a wrong argument count,
// input past kMaxExpressionBytes or nesting past kMaxCalculatorDepth; OutOfRange for division or modulo
// by zero, overflow and domain errors.
Result<double> evaluate_expression(std::string_view expression);

// Registers "calculator". Its output is {"result": <number>} (an integer when the value is one and
// exactly representable).
Status register_calculator_tool(ToolRegistry& registry);

}  // namespace agentserve::tools
