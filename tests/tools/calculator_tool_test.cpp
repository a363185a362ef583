#include "tools/calculator_tool.h"

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>

#include "tests/tools/tool_waiter.h"

namespace agentserve::tools {
namespace {

using json = nlohmann::json;

double eval_ok(const std::string& expr) {
  auto r = evaluate_expression(expr);
  REQUIRE_MESSAGE(r.ok(), expr, " -> ", r.status().to_string());
  return *r;
}

Status eval_error(const std::string& expr) {
  auto r = evaluate_expression(expr);
  REQUIRE_MESSAGE(!r.ok(), expr, " should fail");
  return r.status();
}

TEST_CASE("precedence, associativity and unary minus follow the usual rules") {
  CHECK(eval_ok("1 + 2 * 3") == 7);
  CHECK(eval_ok("(1 + 2) * 3") == 9);
  CHECK(eval_ok("10 - 4 - 3") == 3);
  CHECK(eval_ok("100 / 10 / 5") == 2);
  CHECK(eval_ok("2 ^ 3 ^ 2") == 512);
  CHECK(eval_ok("2 ** 3 ** 2") == 512);
  CHECK(eval_ok("-2 ^ 2") == -4);
  CHECK(eval_ok("2 ^ -1") == 0.5);
  CHECK(eval_ok("--3") == 3);
  CHECK(eval_ok("-(3 - 5) * +2") == 4);
  CHECK(eval_ok("17 % 5") == 2);
  CHECK(eval_ok("-7 % 3") == -1);
  CHECK(eval_ok("1.5e3 + .5") == 1500.5);
  CHECK(eval_ok("  4\t*\n2 ") == 8);
}

TEST_CASE("constants and functions evaluate") {
  CHECK(eval_ok("pi") == doctest::Approx(M_PI));
  CHECK(eval_ok("e") == doctest::Approx(M_E));
  CHECK(eval_ok("sqrt(16) + abs(-3)") == 7);
  CHECK(eval_ok("ln(e) + log(e^2)") == doctest::Approx(3));
  CHECK(eval_ok("log10(1000) + log2(8)") == doctest::Approx(6));
  CHECK(eval_ok("sin(pi / 2) + cos(0) + tan(0)") == doctest::Approx(2));
  CHECK(eval_ok("floor(2.7) + ceil(2.1) + round(2.5)") == 8);
  CHECK(eval_ok("pow(2, 10)") == 1024);
  CHECK(eval_ok("min(3, 1, 2) + max(4, 9, -1)") == 10);
  CHECK(eval_ok("max(1)") == 1);
  CHECK(eval_ok("exp(0) + asin(0) + acos(1) + atan(0)") == 1);
}

TEST_CASE("division by zero, overflow and domain errors are OutOfRange errors") {
  CHECK(eval_error("1 / 0").message().find("division by zero") != std::string::npos);
  CHECK(eval_error("1 / (2 - 2)").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("5 % 0").message().find("modulo by zero") != std::string::npos);
  CHECK(eval_error("0 ^ -1").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("1e308 * 10").message().find("overflow") != std::string::npos);
  CHECK(eval_error("10 ^ 400").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("exp(1000)").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("sqrt(-1)").message().find("sqrt") != std::string::npos);
  CHECK(eval_error("ln(0)").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("(-8) ^ (1/3)").code() == StatusCode::kOutOfRange);
  CHECK(eval_error("1e999").code() == StatusCode::kOutOfRange);
}

TEST_CASE("syntax errors, unknown names, bad arity, long and deep input are InvalidArgument") {
  CHECK(eval_error("").code() == StatusCode::kInvalidArgument);
  CHECK(eval_error("1 +").message().find("position 3") != std::string::npos);
  CHECK(eval_error("2 3").message().find("unexpected '3' at position 2") != std::string::npos);
  CHECK(eval_error("(1 + 2").message().find("expected ')'") != std::string::npos);
  CHECK(eval_error("1 + $").code() == StatusCode::kInvalidArgument);
  CHECK(eval_error("x + 1").message().find("unknown name 'x'") != std::string::npos);
  CHECK(eval_error("system(1)").message().find("unknown function 'system'") != std::string::npos);
  CHECK(eval_error("sqrt(1, 2)").message().find("takes 1 argument") != std::string::npos);
  CHECK(eval_error("pow(2)").message().find("takes 2 arguments") != std::string::npos);
  CHECK(eval_error("min()").code() == StatusCode::kInvalidArgument);
  CHECK(eval_error("min(1,)").code() == StatusCode::kInvalidArgument);
  CHECK(eval_error(std::string(1001, '1')).message().find("over the limit") != std::string::npos);
  CHECK(eval_error(std::string(100, '(') + "1" + std::string(100, ')')).message().find("too deeply") !=
        std::string::npos);
  CHECK(eval_error(std::string(200, '-') + "1").message().find("too deeply") != std::string::npos);
  std::string power_chain;
  for (int i = 0; i < 100; ++i) power_chain += "1^";
  CHECK(eval_error(power_chain + "1").message().find("too deeply") != std::string::npos);
  CHECK(eval_ok(std::string(30, '(') + "1" + std::string(30, ')')) == 1);
}

// A random expression over small integers with + - * and parentheses, and its value computed directly.
struct Generated {
  std::string text;
  long long value;
};

// Built with += because GCC 12 warns falsely (-Wrestrict) on "literal" + std::string temporaries.
std::string parenthesised(const std::string& a, const char* op, const std::string& b) {
  std::string out = "(";
  out += a;
  out += op;
  out += b;
  out += ")";
  return out;
}

Generated generate(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> leaf(-9, 9), op(0, 2), coin(0, 2);
  if (depth == 0 || coin(rng) == 0) {
    const int v = leaf(rng);
    return {v < 0 ? parenthesised("", "", std::to_string(v)) : std::to_string(v), v};
  }
  Generated a = generate(rng, depth - 1), b = generate(rng, depth - 1);
  switch (op(rng)) {
    case 0:
      return {parenthesised(a.text, " + ", b.text), a.value + b.value};
    case 1:
      return {parenthesised(a.text, " - ", b.text), a.value - b.value};
    default:
      return {parenthesised(a.text, " * ", b.text), a.value * b.value};
  }
}

TEST_CASE("random integer expressions evaluate to the value computed directly") {
  std::mt19937 rng(1234);
  for (int i = 0; i < 500; ++i) {
    Generated g = generate(rng, 5);
    if (g.text.size() > kMaxExpressionBytes) continue;
    CHECK_MESSAGE(eval_ok(g.text) == static_cast<double>(g.value), g.text);
  }
}

TEST_CASE("the calculator tool answers JSON with an integer or a double, or an error result") {
  ToolRegistry registry;
  REQUIRE(register_calculator_tool(registry).ok());
  CHECK(testing::call_tool(registry, "calculator", {{"expression", "(2 + 3) * 4^2"}}).output ==
        R"({"result":80})");
  CHECK(json::parse(testing::call_tool(registry, "calculator", {{"expression", "1/4"}}).output)["result"] ==
        0.25);
  CHECK(json::parse(testing::call_tool(registry, "calculator", {{"expression", "2^60"}}).output)["result"]
            .is_number_float());
  ToolResult bad = testing::call_tool(registry, "calculator", {{"expression", "1/0"}});
  CHECK(bad.is_error);
  CHECK(bad.code == StatusCode::kOutOfRange);
  CHECK(testing::call_tool(registry, "calculator", {{"expr", "1"}}).code == StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace agentserve::tools
