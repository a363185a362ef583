#include "tools/json_schema_validator.h"

#include <cmath>
#include <map>
#include <regex>
#include <string>
#include <string_view>

namespace agentserve::tools {

bool is_schema_annotation(std::string_view k) {
  return k == "description" || k == "title" || k == "default" || k == "examples" || k == "format" ||
         k == "$schema" || k == "$id" || k == "$comment" || k == "strict";
}

namespace {

using json = nlohmann::json;

// libstdc++'s std::regex matches by recursion proportional to the subject's length, so a long string could
// overflow the stack; patterns apply only to strings up to this size (longer ones are rejected, clearly).
constexpr size_t kMaxPatternSubjectBytes = 1024;

std::string pointer_token(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

std::string child_path(const std::string& path, std::string_view key) {
  return path + "/" + pointer_token(key);
}
std::string child_path(const std::string& path, size_t index) {
  return path + "/" + std::to_string(index);
}

std::string where(const std::string& path) {
  return path.empty() ? std::string("(root)") : path;
}

Status schema_error(const std::string& path, std::string_view what) {
  return Status::invalid_argument("schema " + where(path) + ": " + std::string(what));
}

Status instance_error(const std::string& path, std::string_view what) {
  return Status::invalid_argument(where(path) + ": " + std::string(what));
}

bool is_known_type(std::string_view t) {
  return t == "object" || t == "array" || t == "string" || t == "number" || t == "integer" ||
         t == "boolean" || t == "null";
}

const json* resolve_ref(const json& root, std::string_view ref) {
  return resolve_schema_ref(root, ref);
}

// Left recursion: a $ref that leads back to itself through $refs and anyOf options only, without a type,
// enum or const in between (each of those starts its value with a character of its own). A decoder
// expanding such a schema would never reach a character, so check_schema refuses it, naming the cycle.
// One depth-first pass over those edges, from the root and every $defs entry: linear in the schema.
class LeftRecursionFinder {
 public:
  explicit LeftRecursionFinder(const json& root) : root_(root) {}

  // From a schema at `path` of the document (the root: ""), which names the start of the cycle's chain.
  Status start(const json& schema, const std::string& path) {
    chain_ = "#" + path;
    return visit(schema, path);
  }

 private:
  Status visit(const json& schema, const std::string& path) {
    if (!schema.is_object() || !state_.emplace(&schema, kOnPath).second) return Status::ok_status();
    if (auto ref = schema.find("$ref"); ref != schema.end() && ref->is_string()) {
      const std::string& name = ref->get_ref<const std::string&>();
      if (const json* target = resolve_ref(root_, name)) {
        const size_t before = chain_.size();
        chain_ += " -> " + name;
        if (auto seen = state_.find(target); seen != state_.end() && seen->second == kOnPath) {
          return schema_error(child_path(path, "$ref"),
                              "reaches itself without consuming a character (left recursion: " + chain_ + ")");
        }
        // The target's own place in the document: its path is the reference without the "#".
        AS_RETURN_IF_ERROR(visit(*target, name.substr(1)));
        chain_.resize(before);
      }
    }
    if (auto any = schema.find("anyOf"); any != schema.end() && any->is_array()) {
      for (size_t i = 0; i < any->size(); ++i)
        AS_RETURN_IF_ERROR(visit((*any)[i], child_path(child_path(path, "anyOf"), i)));
    }
    state_[&schema] = kDone;
    return Status::ok_status();
  }

  enum Mark { kOnPath, kDone };
  const json& root_;
  std::map<const json*, Mark> state_;
  std::string chain_;
};

bool is_non_negative_integer(const json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
}

class SchemaChecker {
 public:
  explicit SchemaChecker(const json& root) : root_(root) {}

  Status check(const json& schema, const std::string& path, int depth) {
    if (depth > kMaxSchemaDepth)
      return schema_error(path, "nested deeper than " + std::to_string(kMaxSchemaDepth));
    if (++nodes_ > kMaxSchemaNodes)
      return schema_error(path, "more than " + std::to_string(kMaxSchemaNodes) + " schemas");
    if (schema.is_boolean()) return Status::ok_status();
    if (!schema.is_object()) return schema_error(path, "a schema must be an object or a boolean");
    for (const auto& [key, value] : schema.items()) {
      AS_RETURN_IF_ERROR(check_keyword(key, value, child_path(path, key), depth));
    }
    if (schema.contains("$ref")) {
      for (const auto& [key, value] : schema.items()) {
        if (key != "$ref" && key != "$defs" && key != "definitions" && !is_schema_annotation(key)) {
          return schema_error(child_path(path, key), "a $ref stands alone: '" + key +
                                                         "' beside it is not supported (wrap both in a schema "
                                                         "of their own or move it into the referenced one)");
        }
      }
    }
    return Status::ok_status();
  }

 private:
  Status check_map_of_schemas(const json& value, const std::string& path, int depth) {
    if (!value.is_object()) return schema_error(path, "expected an object of schemas");
    for (const auto& [name, sub] : value.items())
      AS_RETURN_IF_ERROR(check(sub, child_path(path, name), depth + 1));
    return Status::ok_status();
  }

  Status check_keyword(const std::string& key, const json& value, const std::string& path, int depth) {
    if (is_schema_annotation(key)) return Status::ok_status();
    if (key == "type") {
      if (value.is_string()) {
        if (!is_known_type(value.get_ref<const std::string&>()))
          return schema_error(path, "unknown type " + value.dump());
        return Status::ok_status();
      }
      if (!value.is_array() || value.empty())
        return schema_error(path, "expected a type name or a non-empty list of them");
      for (const auto& t : value) {
        if (!t.is_string() || !is_known_type(t.get_ref<const std::string&>()))
          return schema_error(path, "unknown type " + t.dump());
      }
      return Status::ok_status();
    }
    if (key == "properties" || key == "$defs" || key == "definitions")
      return check_map_of_schemas(value, path, depth);
    if (key == "additionalProperties" || key == "items") {
      if (key == "items" && value.is_array()) return schema_error(path, "tuple-form items is not supported");
      return check(value, path, depth + 1);
    }
    if (key == "required") {
      if (!value.is_array()) return schema_error(path, "expected an array of property names");
      for (const auto& name : value) {
        if (!name.is_string()) return schema_error(path, "expected an array of property names");
      }
      return Status::ok_status();
    }
    if (key == "minItems" || key == "maxItems" || key == "minLength" || key == "maxLength") {
      if (!is_non_negative_integer(value)) return schema_error(path, "expected a non-negative integer");
      return Status::ok_status();
    }
    if (key == "minimum" || key == "maximum" || key == "exclusiveMinimum" || key == "exclusiveMaximum") {
      if (!value.is_number()) return schema_error(path, "expected a number");
      return Status::ok_status();
    }
    if (key == "multipleOf") {
      if (!value.is_number() || value.get<double>() <= 0)
        return schema_error(path, "expected a positive number");
      return Status::ok_status();
    }
    if (key == "enum") {
      if (!value.is_array() || value.empty()) return schema_error(path, "expected a non-empty array");
      return Status::ok_status();
    }
    if (key == "const") return Status::ok_status();
    if (key == "pattern") {
      if (!value.is_string()) return schema_error(path, "expected a string");
      try {
        std::regex re(value.get_ref<const std::string&>(), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return schema_error(path, std::string("pattern does not compile: ") + e.what());
      }
      return Status::ok_status();
    }
    if (key == "anyOf") {
      if (!value.is_array() || value.empty())
        return schema_error(path, "expected a non-empty array of schemas");
      for (size_t i = 0; i < value.size(); ++i)
        AS_RETURN_IF_ERROR(check(value[i], child_path(path, i), depth + 1));
      return Status::ok_status();
    }
    if (key == "$ref") {
      if (!value.is_string()) return schema_error(path, "expected a string");
      if (resolve_ref(root_, value.get_ref<const std::string&>()) == nullptr) {
        return schema_error(path,
                            "unresolved reference " + value.dump() + " (only \"#\" and \"#/$defs/<name>\")");
      }
      return Status::ok_status();
    }
    return schema_error(path, "unsupported keyword '" + key + "'");
  }

  const json& root_;
  size_t nodes_ = 0;
};

std::string type_of(const json& v) {
  switch (v.type()) {
    case json::value_t::object:
      return "object";
    case json::value_t::array:
      return "array";
    case json::value_t::string:
      return "string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::null:
      return "null";
    default:
      return "invalid";
  }
}

bool matches_type(const json& v, std::string_view type) {
  if (type == "integer") {
    if (v.is_number_integer()) return true;  // signed and unsigned
    if (!v.is_number_float()) return false;
    const double d = v.get<double>();
    return std::isfinite(d) && d == std::floor(d);
  }
  if (type == "number") return v.is_number();
  return type_of(v) == type;
}

size_t utf8_code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string short_dump(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

class InstanceValidator {
 public:
  explicit InstanceValidator(const json& root) : root_(root) {}

  Status validate(const json& schema, const json& v, const std::string& path, int depth, int ref_hops) {
    if (depth > kMaxInstanceDepth)
      return instance_error(path, "nested deeper than " + std::to_string(kMaxInstanceDepth));
    // anyOf over recursive references can branch exponentially; a budget keeps validation bounded.
    if (++steps_ > kMaxValidationSteps) return instance_error(path, "validation exceeded its step budget");
    if (schema.is_boolean()) {
      return schema.get<bool>() ? Status::ok_status() : instance_error(path, "no value is allowed here");
    }
    if (!schema.is_object()) return instance_error(path, "invalid schema");
    if (auto it = schema.find("$ref"); it != schema.end() && it->is_string()) {
      if (ref_hops >= kMaxRefExpansions) return instance_error(path, "schema references nest too deeply");
      const json* target = resolve_ref(root_, it->get_ref<const std::string&>());
      if (target == nullptr) return instance_error(path, "unresolved schema reference " + it->dump());
      AS_RETURN_IF_ERROR(validate(*target, v, path, depth, ref_hops + 1));
    }
    AS_RETURN_IF_ERROR(check_type_enum_const(schema, v, path));
    if (v.is_string()) AS_RETURN_IF_ERROR(check_string(schema, v.get_ref<const std::string&>(), path));
    if (v.is_number()) AS_RETURN_IF_ERROR(check_number(schema, v, path));
    if (v.is_object()) AS_RETURN_IF_ERROR(check_object(schema, v, path, depth));
    if (v.is_array()) AS_RETURN_IF_ERROR(check_array(schema, v, path, depth));
    if (auto it = schema.find("anyOf"); it != schema.end() && it->is_array()) {
      // Every option's reason, each cut short, so nested anyOfs cannot grow the message without bound.
      std::string reasons;
      for (size_t i = 0; i < it->size(); ++i) {
        Status s = validate((*it)[i], v, path, depth, ref_hops);
        if (s.ok()) return s;
        std::string reason = s.message().size() > 200 ? s.message().substr(0, 197) + "..." : s.message();
        reasons += (i == 0 ? "" : "; ") + ("[" + std::to_string(i) + "] ") + reason;
      }
      return instance_error(path, "matches none of anyOf: " + reasons);
    }
    return Status::ok_status();
  }

 private:
  Status check_type_enum_const(const json& schema, const json& v, const std::string& path) {
    if (auto it = schema.find("type"); it != schema.end()) {
      bool ok = false;
      std::string expected;
      if (it->is_string()) {
        ok = matches_type(v, it->get_ref<const std::string&>());
        expected = it->get<std::string>();
      } else if (it->is_array()) {
        for (const auto& t : *it) {
          if (!t.is_string()) continue;
          ok = ok || matches_type(v, t.get_ref<const std::string&>());
          expected += (expected.empty() ? "" : " or ") + t.get<std::string>();
        }
      }
      if (!ok) return instance_error(path, "expected " + expected + ", got " + type_of(v));
    }
    if (auto it = schema.find("enum"); it != schema.end() && it->is_array()) {
      bool found = false;
      for (const auto& e : *it) found = found || e == v;
      if (!found)
        return instance_error(path, "expected one of " + short_dump(*it) + ", got " + short_dump(v));
    }
    if (auto it = schema.find("const"); it != schema.end() && *it != v) {
      return instance_error(path, "expected " + short_dump(*it) + ", got " + short_dump(v));
    }
    return Status::ok_status();
  }

  Status check_string(const json& schema, const std::string& s, const std::string& path) {
    const size_t n = utf8_code_points(s);
    if (auto it = schema.find("minLength");
        it != schema.end() && is_non_negative_integer(*it) && n < it->get<uint64_t>()) {
      return instance_error(path,
                            "expected at least " + it->dump() + " characters, got " + std::to_string(n));
    }
    if (auto it = schema.find("maxLength");
        it != schema.end() && is_non_negative_integer(*it) && n > it->get<uint64_t>()) {
      return instance_error(path, "expected at most " + it->dump() + " characters, got " + std::to_string(n));
    }
    if (auto it = schema.find("pattern"); it != schema.end() && it->is_string()) {
      if (s.size() > kMaxPatternSubjectBytes) {
        return instance_error(path, "string of " + std::to_string(s.size()) +
                                        " bytes is too long to match a pattern (limit " +
                                        std::to_string(kMaxPatternSubjectBytes) + ")");
      }
      try {
        std::regex re(it->get_ref<const std::string&>(), std::regex::ECMAScript);
        if (!std::regex_search(s, re))
          return instance_error(path, "expected a string matching " + it->dump());
      } catch (const std::regex_error& e) {
        return instance_error(path, std::string("pattern failed: ") + e.what());
      }
    }
    return Status::ok_status();
  }

  Status check_number(const json& schema, const json& v, const std::string& path) {
    const double d = v.get<double>();
    auto bound = [&](const char* key, auto fails, const char* what) -> Status {
      auto it = schema.find(key);
      if (it == schema.end() || !it->is_number()) return Status::ok_status();
      if (fails(d, it->template get<double>()))
        return instance_error(
            path, std::string("expected a number ") + what + " " + it->dump() + ", got " + v.dump());
      return Status::ok_status();
    };
    AS_RETURN_IF_ERROR(bound(
        "minimum", [](double x, double b) { return x < b; }, ">="));
    AS_RETURN_IF_ERROR(bound(
        "maximum", [](double x, double b) { return x > b; }, "<="));
    AS_RETURN_IF_ERROR(bound(
        "exclusiveMinimum", [](double x, double b) { return x <= b; }, ">"));
    AS_RETURN_IF_ERROR(bound(
        "exclusiveMaximum", [](double x, double b) { return x >= b; }, "<"));
    if (auto it = schema.find("multipleOf"); it != schema.end() && it->is_number()) {
      const double m = it->get<double>();
      const double q = d / m;
      if (m > 0 && std::fabs(q - std::round(q)) > 1e-9 * std::max(1.0, std::fabs(q))) {
        return instance_error(path, "expected a multiple of " + it->dump() + ", got " + v.dump());
      }
    }
    return Status::ok_status();
  }

  Status check_object(const json& schema, const json& v, const std::string& path, int depth) {
    const json* properties = nullptr;
    if (auto it = schema.find("properties"); it != schema.end() && it->is_object()) properties = &*it;
    if (auto it = schema.find("required"); it != schema.end() && it->is_array()) {
      for (const auto& name : *it) {
        if (name.is_string() && !v.contains(name.get_ref<const std::string&>())) {
          return instance_error(path, "missing required property " + name.dump());
        }
      }
    }
    auto additional = schema.find("additionalProperties");
    for (const auto& [key, value] : v.items()) {
      const std::string sub_path = child_path(path, key);
      if (properties != nullptr) {
        if (auto p = properties->find(key); p != properties->end()) {
          AS_RETURN_IF_ERROR(validate(*p, value, sub_path, depth + 1, 0));
          continue;
        }
      }
      if (additional == schema.end()) continue;
      if (additional->is_boolean() && !additional->get<bool>()) {
        return instance_error(sub_path, "property is not allowed (additionalProperties is false)");
      }
      AS_RETURN_IF_ERROR(validate(*additional, value, sub_path, depth + 1, 0));
    }
    return Status::ok_status();
  }

  Status check_array(const json& schema, const json& v, const std::string& path, int depth) {
    if (auto it = schema.find("minItems");
        it != schema.end() && is_non_negative_integer(*it) && v.size() < it->get<uint64_t>()) {
      return instance_error(path,
                            "expected at least " + it->dump() + " items, got " + std::to_string(v.size()));
    }
    if (auto it = schema.find("maxItems");
        it != schema.end() && is_non_negative_integer(*it) && v.size() > it->get<uint64_t>()) {
      return instance_error(path,
                            "expected at most " + it->dump() + " items, got " + std::to_string(v.size()));
    }
    if (auto it = schema.find("items"); it != schema.end() && !it->is_array()) {
      for (size_t i = 0; i < v.size(); ++i)
        AS_RETURN_IF_ERROR(validate(*it, v[i], child_path(path, i), depth + 1, 0));
    }
    return Status::ok_status();
  }

  const json& root_;
  size_t steps_ = 0;
};

}  // namespace

Status check_schema(const nlohmann::json& schema) {
  SchemaChecker checker(schema);
  AS_RETURN_IF_ERROR(checker.check(schema, "", 0));
  LeftRecursionFinder finder(schema);
  AS_RETURN_IF_ERROR(finder.start(schema, ""));
  for (const char* container : {"$defs", "definitions"}) {
    if (auto defs = schema.find(container); defs != schema.end()) {
      for (const auto& [name, def] : defs->items())
        AS_RETURN_IF_ERROR(finder.start(def, child_path(child_path("", container), name)));
    }
  }
  return Status::ok_status();
}

Status validate_json(const nlohmann::json& schema, const nlohmann::json& instance) {
  InstanceValidator validator(schema);
  return validator.validate(schema, instance, "", 0, 0);
}

}  // namespace agentserve::tools
