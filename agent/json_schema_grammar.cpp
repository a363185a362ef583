#include "agent/json_schema_grammar.h"

#include <algorithm>
#include <map>
#include <set>

#include "tools/json_schema_validator.h"

namespace agentserve::agent {
namespace {

using json = nlohmann::ordered_json;

const std::set<std::string>& unenforced_keywords() {
  static const std::set<std::string> keys = {"minLength",        "minimum", "maximum",    "exclusiveMinimum",
                                             "exclusiveMaximum", "pattern", "multipleOf"};
  return keys;
}

class SchemaCompiler {
 public:
  SchemaCompiler(Grammar& grammar, const json& root, const JsonSchemaGrammarOptions& options)
      : g_(grammar), root_(root), options_(options) {}

  // The root, through the "#" reference, so a "$ref": "#" inside names this very node.
  Result<int> compile_root() { return compile_ref(json("#"), "#"); }

  Result<int> compile(const json& schema, const std::string& path) {
    if (++depth_ > 64) return Status::invalid_argument("schema nests deeper than 64 levels at " + path);
    auto result = compile_inner(schema, path);
    --depth_;
    return result;
  }

 private:
  Result<int> compile_inner(const json& schema, const std::string& path) {
    if (schema.is_boolean()) {
      return Status::invalid_argument("boolean schema at " + path + " is not supported; give a type");
    }
    if (!schema.is_object()) return Status::invalid_argument("schema at " + path + " is not an object");
    if (auto it = schema.find("$ref"); it != schema.end()) {
      // The tools validator's rule too (tools::check_schema): a reference is the whole schema at its place.
      for (auto key = schema.begin(); key != schema.end(); ++key) {
        if (key.key() != "$ref" && key.key() != "$defs" && key.key() != "definitions" &&
            !tools::is_schema_annotation(key.key())) {
          return Status::invalid_argument("unsupported keyword \"" + key.key() + "\" beside $ref at " + path +
                                          " (a $ref stands alone)");
        }
      }
      return compile_ref(*it, path);
    }
    if (auto it = schema.find("const"); it != schema.end()) {
      AS_RETURN_IF_ERROR(check_keys(schema, path, {"const", "type", "enum"}));
      return scalar_literal(*it, path + "/const");
    }
    if (auto it = schema.find("enum"); it != schema.end()) {
      AS_RETURN_IF_ERROR(check_keys(schema, path, {"enum", "type"}));
      if (!it->is_array() || it->empty())
        return Status::invalid_argument("enum at " + path + " must be a non-empty array");
      GrammarNode any;
      any.kind = GrammarNodeKind::kAnyOf;
      for (size_t i = 0; i < it->size(); ++i) {
        AS_ASSIGN_OR_RETURN(int lit, scalar_literal((*it)[i], path + "/enum/" + std::to_string(i)));
        any.children.push_back(lit);
      }
      return g_.add(std::move(any));
    }
    if (auto it = schema.find("anyOf"); it != schema.end()) {
      AS_RETURN_IF_ERROR(check_keys(schema, path, {"anyOf", "$defs", "definitions"}));
      if (!it->is_array() || it->empty())
        return Status::invalid_argument("anyOf at " + path + " must be a non-empty array");
      GrammarNode any;
      any.kind = GrammarNodeKind::kAnyOf;
      for (size_t i = 0; i < it->size(); ++i) {
        AS_ASSIGN_OR_RETURN(int option, compile((*it)[i], path + "/anyOf/" + std::to_string(i)));
        any.children.push_back(option);
      }
      return g_.add(std::move(any));
    }
    auto type = schema.find("type");
    if (type == schema.end()) {
      AS_RETURN_IF_ERROR(check_keys(schema, path, {}, true));
      return Status::invalid_argument("schema at " + path + " has no type");
    }
    if (type->is_string()) return compile_type(schema, type->get<std::string>(), path);
    if (!type->is_array() || type->empty())
      return Status::invalid_argument("type at " + path + " must be a string or a non-empty array");
    GrammarNode any;
    any.kind = GrammarNodeKind::kAnyOf;
    for (const json& t : *type) {
      if (!t.is_string()) return Status::invalid_argument("type at " + path + " lists a non-string");
      AS_ASSIGN_OR_RETURN(int option, compile_type(schema, t.get<std::string>(), path));
      any.children.push_back(option);
    }
    return g_.add(std::move(any));
  }

  Result<int> compile_type(const json& schema, const std::string& type, const std::string& path) {
    if (type == "object") return compile_object(schema, path);
    if (type == "array") return compile_array(schema, path);
    AS_RETURN_IF_ERROR(check_keys(schema, path, {"type", type == "string" ? "maxLength" : "type"}, true));
    GrammarNode n;
    if (type == "string") {
      n.kind = GrammarNodeKind::kString;
      if (auto it = schema.find("maxLength"); it != schema.end()) {
        if (!it->is_number_unsigned() || it->get<uint64_t>() > 1'000'000)
          return Status::invalid_argument("maxLength at " + path + " must be an integer in [0, 1e6]");
        n.max_length = it->get<int>();
      }
    } else if (type == "number") {
      n.kind = GrammarNodeKind::kNumber;
    } else if (type == "integer") {
      n.kind = GrammarNodeKind::kInteger;
    } else if (type == "boolean") {
      n.kind = GrammarNodeKind::kAnyOf;
      n.children = {g_.add_literal("true"), g_.add_literal("false")};
    } else if (type == "null") {
      return g_.add_literal("null");
    } else {
      return Status::invalid_argument("unknown type \"" + type + "\" at " + path);
    }
    return g_.add(std::move(n));
  }

  Result<int> compile_object(const json& schema, const std::string& path) {
    AS_RETURN_IF_ERROR(check_keys(
        schema, path, {"type", "properties", "required", "additionalProperties", "$defs", "definitions"}, true));
    // Whatever it allows, only the listed properties are ever produced (as when it is absent): every such
    // document is valid, so a tool the registry accepts with extra keys allowed can still be constrained.
    if (auto it = schema.find("additionalProperties"); it != schema.end() && !it->is_boolean() && !it->is_object()) {
      return Status::invalid_argument("additionalProperties at " + path + " must be a boolean or a schema");
    }
    std::set<std::string> required;
    if (auto it = schema.find("required"); it != schema.end()) {
      if (!it->is_array()) return Status::invalid_argument("required at " + path + " must be an array");
      for (const json& r : *it) {
        if (!r.is_string()) return Status::invalid_argument("required at " + path + " lists a non-string");
        required.insert(r.get<std::string>());
      }
    }
    GrammarNode n;
    n.kind = GrammarNodeKind::kObject;
    ConsumedScope consumed(unconsumed_refs_);
    if (auto it = schema.find("properties"); it != schema.end()) {
      if (!it->is_object()) return Status::invalid_argument("properties at " + path + " must be an object");
      for (auto prop = it->begin(); prop != it->end(); ++prop) {
        AS_ASSIGN_OR_RETURN(int value, compile(prop.value(), path + "/properties/" + prop.key()));
        n.properties.push_back({.key = json(prop.key()).dump(-1, ' ', false, json::error_handler_t::replace),
                                .value = value,
                                .required = required.count(prop.key()) > 0});
        required.erase(prop.key());
      }
    }
    if (!required.empty()) {
      return Status::invalid_argument("required at " + path + " names \"" + *required.begin() +
                                      "\", which is not in properties");
    }
    return g_.add(std::move(n));
  }

  Result<int> compile_array(const json& schema, const std::string& path) {
    AS_RETURN_IF_ERROR(check_keys(schema, path, {"type", "items", "minItems", "maxItems"}, true));
    auto items = schema.find("items");
    if (items == schema.end()) return Status::invalid_argument("array at " + path + " needs items");
    GrammarNode n;
    n.kind = GrammarNodeKind::kArray;
    for (const char* key : {"minItems", "maxItems"}) {
      if (auto it = schema.find(key); it != schema.end()) {
        if (!it->is_number_unsigned() || it->get<uint64_t>() > 1'000'000)
          return Status::invalid_argument(std::string(key) + " at " + path + " must be an integer in [0, 1e6]");
        (std::string(key) == "minItems" ? n.min_items : n.max_items) = it->get<int>();
      }
    }
    if (n.min_items > n.max_items) return Status::invalid_argument("minItems > maxItems at " + path);
    ConsumedScope consumed(unconsumed_refs_);
    AS_ASSIGN_OR_RETURN(int item, compile(*items, path + "/items"));
    n.children = {item};
    return g_.add(std::move(n));
  }

  // A $ref compiles once, into a one-option anyOf that every use (recursive ones included) points to. The
  // target is found by the tools validator's resolver, so both read the same references.
  Result<int> compile_ref(const json& ref, const std::string& path) {
    if (!ref.is_string()) return Status::invalid_argument("$ref at " + path + " must be a string");
    const std::string target = ref.get<std::string>();
    if (auto it = refs_.find(target); it != refs_.end()) {
      // Reached again before any character: expanding it would never end (left recursion).
      if (std::find(unconsumed_refs_.begin(), unconsumed_refs_.end(), target) != unconsumed_refs_.end()) {
        std::string chain;
        for (const std::string& r : unconsumed_refs_) chain += r + " -> ";
        return Status::invalid_argument("$ref \"" + target + "\" at " + path +
                                        " reaches itself without consuming a character (left recursion: " +
                                        chain + target + ")");
      }
      return it->second;
    }
    const json* body = tools::resolve_schema_ref(root_, target);
    if (body == nullptr) {
      return Status::invalid_argument("$ref \"" + target + "\" at " + path +
                                      " does not resolve (only \"#\" and \"#/$defs/<name>\" or "
                                      "\"#/definitions/<name>\")");
    }
    // A placeholder first, so a recursive definition refers to itself: it becomes a one-option anyOf.
    GrammarNode wrapper;
    wrapper.kind = GrammarNodeKind::kAnyOf;
    const int index = g_.add(std::move(wrapper));
    refs_[target] = index;
    unconsumed_refs_.push_back(target);
    auto compiled = compile(*body, target);
    unconsumed_refs_.pop_back();
    AS_RETURN_IF_ERROR(compiled.status());
    g_.nodes[static_cast<size_t>(index)].children = {*compiled};
    return index;
  }

  Result<int> scalar_literal(const json& value, const std::string& path) {
    if (value.is_object() || value.is_array()) {
      return Status::invalid_argument("enum/const value at " + path + " must be a string, number, bool or null");
    }
    return g_.add_literal(value.dump(-1, ' ', false, json::error_handler_t::replace));
  }

  Status check_keys(const json& schema, const std::string& path, const std::set<std::string>& allowed,
                    bool allow_defs = false) const {
    for (auto it = schema.begin(); it != schema.end(); ++it) {
      if (allowed.count(it.key()) || tools::is_schema_annotation(it.key())) continue;
      if (options_.skip_unenforced_keywords && unenforced_keywords().count(it.key())) continue;
      if (allow_defs && (it.key() == "$defs" || it.key() == "definitions")) continue;
      return Status::invalid_argument("unsupported keyword \"" + it.key() + "\" at " + path);
    }
    return {};
  }

  // An object's or array's opening character comes before its children: refs entered above it have
  // consumed one by the time the children start.
  class ConsumedScope {
   public:
    explicit ConsumedScope(std::vector<std::string>& refs) : refs_(refs), saved_(std::move(refs)) {
      refs_.clear();
    }
    ~ConsumedScope() { refs_ = std::move(saved_); }
    ConsumedScope(const ConsumedScope&) = delete;
    ConsumedScope& operator=(const ConsumedScope&) = delete;

   private:
    std::vector<std::string>& refs_;
    std::vector<std::string> saved_;
  };

  Grammar& g_;
  const json& root_;
  JsonSchemaGrammarOptions options_;
  std::map<std::string, int> refs_;
  std::vector<std::string> unconsumed_refs_;  // refs entered since the last character-consuming node
  int depth_ = 0;
};

}  // namespace

Result<int> add_json_schema(Grammar& grammar, const nlohmann::ordered_json& schema,
                            const JsonSchemaGrammarOptions& options) {
  SchemaCompiler compiler(grammar, schema, options);
  return compiler.compile_root();
}

Result<Grammar> compile_json_schema(const nlohmann::ordered_json& schema, const JsonSchemaGrammarOptions& options) {
  Grammar grammar;
  AS_ASSIGN_OR_RETURN(grammar.root, add_json_schema(grammar, schema, options));
  index_first_bytes(grammar);
  return grammar;
}

void index_first_bytes(Grammar& grammar) {
  using Bytes = std::array<uint64_t, 4>;
  const auto with = [](Bytes b, uint8_t c) {
    b[c / 64] |= uint64_t{1} << (c % 64);
    return b;
  };
  std::vector<Bytes> first(grammar.nodes.size(), Bytes{});
  // Nodes that start with their own byte are set once; anyOf, sequence and repeat start with a child's
  // byte, so they are ORed to a fixed point (recursive $refs make cycles; the sets only grow, at most 256
  // bits a node, so it ends).
  for (size_t i = 0; i < grammar.nodes.size(); ++i) {
    const GrammarNode& n = grammar.nodes[i];
    switch (n.kind) {
      case GrammarNodeKind::kLiteral:
        // An empty literal would start with whatever follows it: allow every byte.
        first[i] = n.literal.empty() ? Bytes{~0ull, ~0ull, ~0ull, ~0ull}
                                     : with({}, static_cast<uint8_t>(n.literal[0]));
        break;
      case GrammarNodeKind::kString:
        first[i] = with({}, '"');
        break;
      case GrammarNodeKind::kNumber:
      case GrammarNodeKind::kInteger:
        first[i] = with({}, '-');
        for (uint8_t c = '0'; c <= '9'; ++c) first[i] = with(first[i], c);
        break;
      case GrammarNodeKind::kObject:
        first[i] = with({}, '{');
        break;
      case GrammarNodeKind::kArray:
        first[i] = with({}, '[');
        break;
      default:
        break;
    }
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < grammar.nodes.size(); ++i) {
      const GrammarNode& n = grammar.nodes[i];
      if (n.children.empty()) continue;
      const bool all = n.kind == GrammarNodeKind::kAnyOf;
      if (!all && n.kind != GrammarNodeKind::kSequence && n.kind != GrammarNodeKind::kRepeat) continue;
      for (size_t c = 0; c < (all ? n.children.size() : 1); ++c) {
        const Bytes& child = first[static_cast<size_t>(n.children[c])];
        for (size_t w = 0; w < 4; ++w) {
          if ((first[i][w] | child[w]) != first[i][w]) {
            first[i][w] |= child[w];
            changed = true;
          }
        }
      }
    }
  }
  grammar.first_bytes = std::move(first);
}

}  // namespace agentserve::agent
