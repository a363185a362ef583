#include "tools/calculator_tool.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

namespace agentserve::tools {
namespace {

using json = nlohmann::json;

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Result<double> parse() {
    AS_ASSIGN_OR_RETURN(double value, expression());
    skip_space();
    if (pos_ < text_.size()) return syntax_error("unexpected '" + std::string(1, text_[pos_]) + "'");
    return value;
  }

 private:
  // expression := term (('+' | '-') term)*
  Result<double> expression() {
    AS_ASSIGN_OR_RETURN(double value, term());
    for (;;) {
      skip_space();
      if (eat('+')) {
        AS_ASSIGN_OR_RETURN(double rhs, term());
        AS_ASSIGN_OR_RETURN(value, finite(value + rhs, "overflow"));
      } else if (eat('-')) {
        AS_ASSIGN_OR_RETURN(double rhs, term());
        AS_ASSIGN_OR_RETURN(value, finite(value - rhs, "overflow"));
      } else {
        return value;
      }
    }
  }

  // term := unary (('*' | '/' | '%') unary)*
  Result<double> term() {
    AS_ASSIGN_OR_RETURN(double value, unary());
    for (;;) {
      skip_space();
      if (peek_is("**")) return value;  // a power operator, not a product
      if (eat('*')) {
        AS_ASSIGN_OR_RETURN(double rhs, unary());
        AS_ASSIGN_OR_RETURN(value, finite(value * rhs, "overflow"));
      } else if (eat('/')) {
        AS_ASSIGN_OR_RETURN(double rhs, unary());
        if (rhs == 0) return Status::out_of_range("division by zero");
        AS_ASSIGN_OR_RETURN(value, finite(value / rhs, "overflow"));
      } else if (eat('%')) {
        AS_ASSIGN_OR_RETURN(double rhs, unary());
        if (rhs == 0) return Status::out_of_range("modulo by zero");
        AS_ASSIGN_OR_RETURN(value, finite(std::fmod(value, rhs), "overflow"));
      } else {
        return value;
      }
    }
  }

  // unary := ('-' | '+') unary | power
  Result<double> unary() {
    DepthGuard guard(depth_);
    if (depth_ > kMaxCalculatorDepth) return Status::invalid_argument("expression nests too deeply");
    skip_space();
    if (eat('-')) {
      AS_ASSIGN_OR_RETURN(double value, unary());
      return -value;
    }
    if (eat('+')) return unary();
    return power();
  }

  // power := primary (('^' | '**') unary)?   -- right-associative through unary
  Result<double> power() {
    AS_ASSIGN_OR_RETURN(double base, primary());
    skip_space();
    bool is_power = eat('^');
    if (!is_power && peek_is("**")) {
      pos_ += 2;
      is_power = true;
    }
    if (!is_power) return base;
    AS_ASSIGN_OR_RETURN(double exponent, unary());
    if (base == 0 && exponent < 0) return Status::out_of_range("division by zero (0 to a negative power)");
    return finite(std::pow(base, exponent), "overflow or undefined power");
  }

  // primary := number | name | name '(' arguments ')' | '(' expression ')'
  Result<double> primary() {
    skip_space();
    if (pos_ >= text_.size()) return syntax_error("expected a number");
    const char c = text_[pos_];
    if (c == '(') {
      DepthGuard guard(depth_);
      if (depth_ > kMaxCalculatorDepth) return Status::invalid_argument("expression nests too deeply");
      ++pos_;
      AS_ASSIGN_OR_RETURN(double value, expression());
      skip_space();
      if (!eat(')')) return syntax_error("expected ')'");
      return value;
    }
    if ((c >= '0' && c <= '9') || c == '.') return number();
    if (std::isalpha(static_cast<unsigned char>(c))) return name();
    return syntax_error("unexpected '" + std::string(1, c) + "'");
  }

  Result<double> number() {
    double value = 0;
    const char* begin = text_.data() + pos_;
    auto [end, ec] = std::from_chars(begin, text_.data() + text_.size(), value);
    if (ec == std::errc::result_out_of_range) return Status::out_of_range("number too large");
    if (ec != std::errc()) return syntax_error("bad number");
    pos_ += static_cast<size_t>(end - begin);
    return value;
  }

  Result<double> name() {
    const size_t start = pos_;
    while (pos_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_'))
      ++pos_;
    const std::string id(text_.substr(start, pos_ - start));
    skip_space();
    if (!eat('(')) {
      if (id == "pi") return std::numbers::pi;
      if (id == "e") return std::numbers::e;
      return Status::invalid_argument("unknown name '" + id + "' at position " + std::to_string(start));
    }
    DepthGuard guard(depth_);
    if (depth_ > kMaxCalculatorDepth) return Status::invalid_argument("expression nests too deeply");
    std::vector<double> args;
    skip_space();
    if (!eat(')')) {
      for (;;) {
        AS_ASSIGN_OR_RETURN(double arg, expression());
        args.push_back(arg);
        skip_space();
        if (eat(')')) break;
        if (!eat(',')) return syntax_error("expected ',' or ')'");
      }
    }
    return call(id, args, start);
  }

  Result<double> call(const std::string& id, const std::vector<double>& args, size_t at) {
    auto arity = [&](size_t n) -> Status {
      if (args.size() == n) return Status::ok_status();
      return Status::invalid_argument(id + "() takes " + std::to_string(n) + " argument" +
                                      (n == 1 ? "" : "s") + ", got " + std::to_string(args.size()));
    };
    using Fn = double (*)(double);
    static const std::pair<const char*, Fn> kUnary[] = {
        {"sqrt", [](double x) { return std::sqrt(x); }}, {"abs", [](double x) { return std::fabs(x); }},
        {"exp", [](double x) { return std::exp(x); }},   {"ln", [](double x) { return std::log(x); }},
        {"log", [](double x) { return std::log(x); }},   {"log10", [](double x) { return std::log10(x); }},
        {"log2", [](double x) { return std::log2(x); }}, {"sin", [](double x) { return std::sin(x); }},
        {"cos", [](double x) { return std::cos(x); }},   {"tan", [](double x) { return std::tan(x); }},
        {"asin", [](double x) { return std::asin(x); }}, {"acos", [](double x) { return std::acos(x); }},
        {"atan", [](double x) { return std::atan(x); }}, {"floor", [](double x) { return std::floor(x); }},
        {"ceil", [](double x) { return std::ceil(x); }}, {"round", [](double x) { return std::round(x); }},
    };
    for (const auto& [fn_name, fn] : kUnary) {
      if (id != fn_name) continue;
      AS_RETURN_IF_ERROR(arity(1));
      return finite(fn(args[0]), "domain error or overflow in " + id + "()");
    }
    if (id == "pow") {
      AS_RETURN_IF_ERROR(arity(2));
      if (args[0] == 0 && args[1] < 0)
        return Status::out_of_range("division by zero (0 to a negative power)");
      return finite(std::pow(args[0], args[1]), "overflow or undefined power");
    }
    if (id == "min" || id == "max") {
      if (args.empty()) return Status::invalid_argument(id + "() needs at least one argument");
      return id == "min" ? *std::min_element(args.begin(), args.end())
                         : *std::max_element(args.begin(), args.end());
    }
    return Status::invalid_argument("unknown function '" + id + "' at position " + std::to_string(at));
  }

  struct DepthGuard {
    int& depth;
    explicit DepthGuard(int& d) : depth(d) { ++depth; }
    ~DepthGuard() { --depth; }
  };

  static Result<double> finite(double value, const std::string& what) {
    if (!std::isfinite(value)) return Status::out_of_range(what);
    return value;
  }

  Status syntax_error(const std::string& what) const {
    return Status::invalid_argument(what + " at position " + std::to_string(pos_));
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n')) ++pos_;
  }
  bool eat(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool peek_is(std::string_view s) const { return text_.substr(pos_, s.size()) == s; }

  std::string_view text_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Result<double> evaluate_expression(std::string_view expression) {
  if (expression.size() > kMaxExpressionBytes) {
    return Status::invalid_argument("expression of " + std::to_string(expression.size()) +
                                    " bytes is over the limit of " + std::to_string(kMaxExpressionBytes));
  }
  Parser parser(expression);
  return parser.parse();
}

Status register_calculator_tool(ToolRegistry& registry) {
  ToolSpec spec;
  spec.name = "calculator";
  spec.description =
      "Evaluate an arithmetic expression: + - * / % ^, parentheses, pi, e, sqrt, abs, exp, ln, log10, log2, "
      "sin, cos, tan, asin, acos, atan, floor, ceil, round, pow, min, max.";
  spec.parameters = {
      {"type", "object"},
      {"properties", {{"expression", {{"type", "string"}, {"description", "e.g. \"(2 + 3) * 4^2\""}}}}},
      {"required", {"expression"}},
      {"additionalProperties", false}};
  spec.strict = true;
  spec.execution = ToolExecution::kServer;
  spec.timeout = std::chrono::milliseconds(1000);
  spec.run = [](const json& args, const ToolContext&) {
    auto value = evaluate_expression(args.at("expression").get<std::string>());
    if (!value.ok()) return ToolResult::error(value.status().code(), value.status().message());
    const double v = *value;
    // 2^53: past it not every integer is a double, so print those as doubles.
    if (v == std::floor(v) && std::fabs(v) <= 9007199254740992.0) {
      return ToolResult::success(json{{"result", static_cast<int64_t>(v)}}.dump());
    }
    return ToolResult::success(json{{"result", v}}.dump());
  };
  return registry.add(std::move(spec));
}

}  // namespace agentserve::tools
