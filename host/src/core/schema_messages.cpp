// valijson's descriptions, such as "Value type not permitted by 'type'
// constraint.", neither name the expected type nor read well to a client.
// Each is mapped to a short message by its wording and, where that does not
// say enough, by the part of the schema that applies at the offending value.
// A description that cannot be mapped is passed through.
#include "core/schema_messages.hpp"

#include "core/json_schema.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <set>

namespace gv::schema_messages {

using nlohmann::json;
using Tokens = std::vector<std::string>;

namespace {

constexpr size_t kMaxName = 64;    // longest field name put in a message
constexpr size_t kMaxToken = 128;  // longest token put in a pointer
constexpr size_t kMaxListed = 80;  // longest enum list put in a message

std::string clip(const std::string& s, size_t max) {
  return s.size() <= max ? s : s.substr(0, max) + "...";
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// ---------------------------------------------------- schema at a location

const json* child_value(const json* v, const std::string& token) {
  if (v == nullptr) return nullptr;
  if (v->is_object()) {
    auto it = v->find(token);
    return it == v->end() ? nullptr : &*it;
  }
  if (v->is_array() && !token.empty() &&
      token.find_first_not_of("0123456789") == std::string::npos) {
    size_t i = std::strtoull(token.c_str(), nullptr, 10);
    return i < v->size() ? &(*v)[i] : nullptr;
  }
  return nullptr;
}

// The subschemas that apply to one value: s itself plus what it reaches
// through $ref (local only), allOf/anyOf/oneOf and then/else.
class SchemaFinder {
 public:
  explicit SchemaFinder(const json& root) : root_(root) {}

  std::vector<const json*> at(const Tokens& tokens, const json& doc) const {
    std::vector<const json*> current;
    expand(root_, current, 0);
    const json* value = &doc;
    for (const auto& token : tokens) {
      std::vector<const json*> next;
      for (const json* s : current) step(*s, token, value, next);
      current.clear();
      for (const json* s : next) expand(*s, current, 0);
      value = child_value(value, token);
    }
    return current;
  }

 private:
  void expand(const json& s, std::vector<const json*>& out, int depth) const {
    if (!s.is_object() || depth > 16 || out.size() > 64) return;
    out.push_back(&s);
    if (auto ref = s.find("$ref"); ref != s.end() && ref->is_string())
      if (const json* target = resolve(ref->get<std::string>())) expand(*target, out, depth + 1);
    for (const char* k : {"allOf", "anyOf", "oneOf"})
      if (auto it = s.find(k); it != s.end() && it->is_array())
        for (const auto& sub : *it) expand(sub, out, depth + 1);
    for (const char* k : {"then", "else"})
      if (auto it = s.find(k); it != s.end()) expand(*it, out, depth + 1);
  }

  const json* resolve(const std::string& ref) const {
    if (ref.empty() || ref[0] != '#') return nullptr;
    try {
      const json::json_pointer p(ref.substr(1));
      return root_.contains(p) ? &root_.at(p) : nullptr;
    } catch (const std::exception&) {
      return nullptr;
    }
  }

  static void step(const json& s, const std::string& token, const json* value,
                   std::vector<const json*>& next) {
    if (value != nullptr && value->is_array()) {
      step_item(s, token, next);
      return;
    }
    bool matched = false;
    if (auto p = s.find("properties"); p != s.end() && p->is_object())
      if (auto it = p->find(token); it != p->end()) {
        next.push_back(&*it);
        matched = true;
      }
    if (auto pp = s.find("patternProperties"); pp != s.end() && pp->is_object())
      for (const auto& [pattern, sub] : pp->items())
        if (std::regex_search(token, std::regex(pattern))) {
          next.push_back(&sub);
          matched = true;
        }
    if (auto ap = s.find("additionalProperties"); !matched && ap != s.end()) next.push_back(&*ap);
  }

  static void step_item(const json& s, const std::string& token, std::vector<const json*>& next) {
    auto items = s.find("items");
    if (items == s.end()) return;
    if (items->is_object()) {
      next.push_back(&*items);
      return;
    }
    size_t i = std::strtoull(token.c_str(), nullptr, 10);
    if (items->is_array() && i < items->size())
      next.push_back(&(*items)[i]);
    else if (auto extra = s.find("additionalItems"); extra != s.end())
      next.push_back(&*extra);
  }

  const json& root_;
};

// ---------------------------------------------------------------- messages

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

// Mirrors valijson's strict typing: 1.0 is a number, not an integer.
bool type_accepts(const std::string& type, const json& v) {
  if (type == "number") return v.is_number();
  if (type == "integer") return v.is_number_integer();
  return type == type_name(v);
}

std::string join_or(const std::vector<std::string>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += i + 1 == words.size() ? " or " : ", ";
    out += words[i];
  }
  return out;
}

std::string format_number(double d) {
  if (std::nearbyint(d) == d && std::fabs(d) < 1e15)
    return std::to_string(static_cast<long long>(d));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", d);
  return buf;
}

// The number valijson wrote after phrase, e.g. "than or equal to 65535.0".
std::string number_after(const std::string& desc, const std::string& phrase) {
  size_t at = desc.find(phrase);
  if (at == std::string::npos) return "?";
  return format_number(std::strtod(desc.c_str() + at + phrase.size(), nullptr));
}

// The text between the first pair of single quotes in a description.
std::string quoted_name(const std::string& desc) {
  size_t open = desc.find('\'');
  size_t close = desc.rfind('\'');
  if (open == std::string::npos || close <= open) return "";
  return desc.substr(open + 1, close - open - 1);
}

std::string to_pointer(const Tokens& tokens) {
  std::string p;
  for (const auto& t : tokens) {
    p += '/';  // appended apart: GCC 12 -O3 warns falsely on "/" + string
    p += pointer_token(clip(t, kMaxToken));  // long keys shortened in messages
  }
  return p;
}

// valijson context {"<root>", "[server]", "[listen]"} -> {"server", "listen"}
Tokens to_tokens(const std::vector<std::string>& context) {
  Tokens out;
  for (size_t i = 1; i < context.size(); ++i) {
    const std::string& c = context[i];
    bool bracketed = c.size() >= 2 && c.front() == '[' && c.back() == ']';
    out.push_back(bracketed ? c.substr(1, c.size() - 2) : c);
  }
  return out;
}

// Turns valijson's errors into violations, dropping the ones that only
// say a child failed (the child's own error says why).
class Translator {
 public:
  Translator(const json& schema, const json& doc, size_t max)
      : finder_(schema), doc_(doc), max_(max) {}

  void add(const RawError& e) {
    if (full()) return;
    const Tokens tokens = to_tokens(e.context);
    const std::string& d = e.description;
    if (is_wrapper(d)) return;
    if (starts_with(d, "Failed to validate against any") ||
        starts_with(d, "Failed to validate against exactly one")) {
      combinator(tokens, d);
    } else if (starts_with(d, "Object contains a property")) {
      unknown_fields(tokens, quoted_name(d));
    } else if (starts_with(d, "Missing required property") ||
               starts_with(d, "Missing dependency")) {
      Tokens field = tokens;
      field.push_back(quoted_name(d));
      push(field, "missing required field '" + clip(field.back(), kMaxName) + "'");
    } else {
      push(tokens, message(tokens, d));
    }
  }

  bool full() const { return out_.size() >= max_; }
  std::vector<SchemaViolation> take() { return std::move(out_); }

 private:
  static bool is_wrapper(const std::string& d) {
    return starts_with(d, "Failed to validate item #") ||
           starts_with(d, "Failed to validate against schema associated") ||
           starts_with(d, "Failed to validate against additional") ||
           starts_with(d, "Failed to validate against child schema") ||
           starts_with(d, "Failed to validate against a conditional") ||
           starts_with(d, "Failed to validate against dependent");
  }

  void push(const Tokens& tokens, const std::string& message) {
    std::string pointer = to_pointer(tokens);
    if (full() || !seen_.insert(pointer + '\n' + message).second) return;
    out_.push_back({std::move(pointer), message});
  }

  // anyOf/oneOf: the branches' errors came just before and say more; the
  // summary is kept only when no branch said anything at or below it.
  void combinator(const Tokens& tokens, const std::string& d) {
    const std::string pointer = to_pointer(tokens);
    if (starts_with(d, "Failed to validate against exactly one")) {
      push(tokens, "matches more than one of the allowed forms");
      return;
    }
    for (const auto& v : out_)
      if (v.pointer == pointer || starts_with(v.pointer, (pointer + "/").c_str())) return;
    push(tokens, "does not match any of the allowed forms");
  }

  // valijson names only the first unknown field of an object; every one is
  // reported, from the schemas that forbid extra fields there.
  void unknown_fields(const Tokens& tokens, const std::string& first) {
    std::vector<std::string> names;
    const json* value = value_at(tokens);
    for (const json* s : finder_.at(tokens, doc_)) {
      auto ap = s->find("additionalProperties");
      if (ap == s->end() || *ap != false || value == nullptr || !value->is_object()) continue;
      for (const auto& [key, _] : value->items())
        if (!declared(*s, key)) names.push_back(key);
    }
    if (names.empty()) names.push_back(first);
    for (const auto& name : names) {
      Tokens field = tokens;
      field.push_back(name);
      push(field, "unknown field '" + clip(name, kMaxName) + "'");
    }
  }

  static bool declared(const json& s, const std::string& key) {
    if (auto p = s.find("properties"); p != s.end() && p->contains(key)) return true;
    if (auto pp = s.find("patternProperties"); pp != s.end() && pp->is_object())
      for (const auto& [pattern, _] : pp->items())
        if (std::regex_search(key, std::regex(pattern))) return true;
    return false;
  }

  const json* value_at(const Tokens& tokens) const {
    const json* v = &doc_;
    for (const auto& t : tokens) v = child_value(v, t);
    return v;
  }

  std::string message(const Tokens& tokens, const std::string& d) const {
    if (starts_with(d, "Value type not permitted")) return type_message(tokens);
    if (starts_with(d, "Failed to match against any enum")) return enum_message(tokens);
    if (starts_with(d, "Failed to match regex")) return pattern_message(tokens);
    if (starts_with(d, "Failed to match expected value") ||
        starts_with(d, "Target value and comparison"))
      return "does not have the required value";
    return bound_message(d);
  }

  std::string bound_message(const std::string& d) const {
    struct Rule {
      const char* prefix;
      const char* phrase;
      const char* before;
      const char* after;
    };
    static const Rule rules[] = {
        {"Expected number less than or equal", "equal to ", "must be at most ", ""},
        {"Expected number less than", "than ", "must be less than ", ""},
        {"Expected number greater than or equal", "equal to ", "must be at least ", ""},
        {"Expected number greater than", "than ", "must be greater than ", ""},
        {"String should be no more than", "than ", "must be at most ", " characters long"},
        {"String should be no fewer than", "than ", "must be at least ", " characters long"},
        {"Array should contain no more than", "than ", "must have at most ", " items"},
        {"Array should contain no fewer than", "than ", "must have at least ", " items"},
        {"Object should have no more than", "than ", "must have at most ", " fields"},
        {"Object should have no fewer than", "than ", "must have at least ", " fields"},
        {"Value should be a multiple of", "of ", "must be a multiple of ", ""},
    };
    for (const Rule& r : rules)
      if (starts_with(d, r.prefix)) return counted(r.before, number_after(d, r.phrase), r.after);
    if (starts_with(d, "String should be a valid ")) return "must be a valid " + d.substr(25);
    if (d.find("uniqueness") != std::string::npos) return "items must be unique";
    if (d.find("more items than allowed") != std::string::npos ||
        starts_with(d, "Cannot validate item #"))
      return "has more items than allowed";
    if (d.find("'contains' constraint") != std::string::npos)
      return "has no item of the required kind";
    if (d.find("'not' constraint") != std::string::npos)
      return "is a value that is not allowed here";
    return d;
  }

  // "must be at least 1 characters long" -> "must not be empty"
  static std::string counted(const std::string& before, const std::string& n, std::string unit) {
    if (n == "1" && !unit.empty()) {
      if (before.find("at least") != std::string::npos) return "must not be empty";
      size_t end = unit.find(' ', 1);  // " characters long": drop the plural s
      if (end == std::string::npos) end = unit.size();
      if (unit[end - 1] == 's') unit.erase(end - 1, 1);
    }
    return before + n + unit;
  }

  std::string type_message(const Tokens& tokens) const {
    const json* value = value_at(tokens);
    if (value == nullptr) return "wrong type";
    std::vector<std::string> expected;
    auto add = [&](const json& t) {
      if (!t.is_string() || type_accepts(t.get<std::string>(), *value)) return;
      std::string name = t.get<std::string>();
      if (std::find(expected.begin(), expected.end(), name) == expected.end())
        expected.push_back(name);
    };
    for (const json* s : finder_.at(tokens, doc_)) {
      auto t = s->find("type");
      if (t == s->end()) continue;
      if (t->is_array()) {
        bool any = false;
        for (const auto& e : *t)
          any = any || (e.is_string() && type_accepts(e.get<std::string>(), *value));
        if (!any)
          for (const auto& e : *t) add(e);
      } else {
        add(*t);
      }
    }
    const std::string found = "found " + type_name(*value);
    return expected.empty() ? "wrong type, " + found
                            : "expected " + join_or(expected) + ", " + found;
  }

  std::string enum_message(const Tokens& tokens) const {
    for (const json* s : finder_.at(tokens, doc_)) {
      auto e = s->find("enum");
      if (e == s->end() || !e->is_array()) continue;
      std::vector<std::string> words;
      for (const auto& v : *e) words.push_back(v.is_string() ? v.get<std::string>() : v.dump());
      std::string list = join_or(words);
      if (list.size() > kMaxListed) break;
      return (words.size() == 1 ? "must be " : "must be one of ") + list;
    }
    return "is not one of the allowed values";
  }

  std::string pattern_message(const Tokens& tokens) const {
    for (const json* s : finder_.at(tokens, doc_)) {
      auto p = s->find("pattern");
      if (p != s->end() && p->is_string() && p->get<std::string>().size() <= kMaxName)
        return "does not match the pattern " + p->get<std::string>();
    }
    return "does not match the required pattern";
  }

  SchemaFinder finder_;
  const json& doc_;
  size_t max_;
  std::vector<SchemaViolation> out_;
  std::set<std::string> seen_;
};

}  // namespace

std::vector<SchemaViolation> translate(const json& schema, const json& value,
                                       const std::vector<RawError>& errors, size_t max) {
  Translator translator(schema, value, max);
  for (const auto& e : errors) translator.add(e);
  return translator.take();
}

}  // namespace gv::schema_messages
