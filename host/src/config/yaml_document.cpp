// YAML -> JSON with positions. yaml-cpp keeps every scalar as text, so the
// typing of plain scalars (true, 12, 1.5, null) is done here.
#include "config/yaml_document.hpp"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <regex>

namespace gv::config {

using nlohmann::json;

namespace {

// Bounds against alias bombs and pathological nesting: a config file is
// small, so these are far above anything real.
constexpr int kMaxDepth = 64;
constexpr size_t kMaxNodes = 200000;

Mark to_mark(const YAML::Mark& m) {
  if (m.line < 0 || m.column < 0) return {};
  return {m.line + 1, m.column + 1};
}

std::string unescape_token(std::string t) {
  for (size_t i = 0; (i = t.find("~1", i)) != std::string::npos; ++i) t.replace(i, 2, "/");
  for (size_t i = 0; (i = t.find("~0", i)) != std::string::npos; ++i) t.replace(i, 2, "~");
  return t;
}

bool is_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// A decimal integer: int64, else uint64, else (too large) a double.
json parse_integer(const std::string& s) {
  const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
  const char* end = s.data() + s.size();
  int64_t i = 0;
  if (std::from_chars(begin, end, i).ec == std::errc()) return i;
  uint64_t u = 0;
  if (std::from_chars(begin, end, u).ec == std::errc()) return u;
  double d = 0;
  std::from_chars(begin, end, d);
  return d;
}

// YAML 1.2 core schema for untagged plain scalars.
json plain_scalar(const std::string& s) {
  static const std::regex integer("[-+]?[0-9]+");
  static const std::regex number("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (std::regex_match(s, integer)) return parse_integer(s);
  if (std::regex_match(s, number)) {
    double d = 0;
    const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
    std::from_chars(begin, s.data() + s.size(), d);
    return d;
  }
  return s;
}

class Converter {
 public:
  Converter(YamlDocument* doc, std::vector<Diagnostic>* errors) : doc_(doc), errors_(errors) {}

  // Converts n, found at pointer; returns false once a limit is hit.
  bool convert(const YAML::Node& n, const std::string& pointer, int depth, json* out) {
    if (++nodes_ > kMaxNodes || depth > kMaxDepth) {
      error(pointer, to_mark(n.Mark()), "document too large or too deeply nested");
      return false;
    }
    switch (n.Type()) {
      case YAML::NodeType::Map:
        return map(n, pointer, depth, out);
      case YAML::NodeType::Sequence:
        return sequence(n, pointer, depth, out);
      case YAML::NodeType::Scalar:
        *out = scalar(n, pointer);
        return true;
      default:
        *out = nullptr;
        return true;
    }
  }

  bool ok() const { return failed_ == 0; }

 private:
  bool map(const YAML::Node& n, const std::string& pointer, int depth, json* out) {
    *out = json::object();
    for (auto it = n.begin(); it != n.end(); ++it) {
      const YAML::Node& key = it->first;
      const YAML::Node& value = it->second;
      const Mark key_mark = to_mark(key.Mark());
      if (!key.IsScalar()) {
        error(pointer, key_mark, "a key must be plain text");
        continue;
      }
      const std::string name = key.Scalar();
      const std::string child = pointer + "/" + pointer_token(name);
      if (out->contains(name)) {
        error(child, key_mark, "duplicate key '" + name + "'");
        continue;
      }
      // A scalar's error points at the value; a section's at its key.
      doc_->marks[child] = value.IsScalar() ? to_mark(value.Mark()) : key_mark;
      if (!convert(value, child, depth + 1, &(*out)[name])) return false;
    }
    return true;
  }

  bool sequence(const YAML::Node& n, const std::string& pointer, int depth, json* out) {
    *out = json::array();
    size_t index = 0;
    for (auto it = n.begin(); it != n.end(); ++it, ++index) {
      const std::string child = pointer + "/" + std::to_string(index);
      Mark mark = to_mark(it->Mark());
      doc_->marks[child] = mark.line > 0 ? mark : to_mark(n.Mark());
      out->push_back(nullptr);
      if (!convert(*it, child, depth + 1, &out->back())) return false;
    }
    return true;
  }

  json scalar(const YAML::Node& n, const std::string& pointer) {
    const std::string& tag = n.Tag();
    if (tag == "?" || tag.empty()) return plain_scalar(n.Scalar());
    if (tag == "!" || tag == "tag:yaml.org,2002:str") return n.Scalar();
    if (tag == "!env") return env(n, pointer);
    if (tag.rfind("tag:yaml.org,2002:", 0) == 0) return plain_scalar(n.Scalar());
    error(pointer, to_mark(n.Mark()), "unknown tag '" + tag + "'");
    return nullptr;
  }

  json env(const YAML::Node& n, const std::string& pointer) {
    const std::string& name = n.Scalar();
    if (name.empty()) {
      error(pointer, to_mark(n.Mark()), "!env needs a variable name");
      return nullptr;
    }
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      error(pointer, to_mark(n.Mark()), "environment variable " + name + " is not set");
      return nullptr;
    }
    return std::string(value);
  }

  void error(const std::string& pointer, Mark mark, std::string message) {
    ++failed_;
    errors_->push_back({doc_->file, mark, YamlDocument::dotted(pointer), std::move(message)});
  }

  YamlDocument* doc_;
  std::vector<Diagnostic>* errors_;
  size_t nodes_ = 0;
  size_t failed_ = 0;
};

// Reads and parses the file; a missing file or a syntax error is one
// diagnostic.
bool parse_file(const std::filesystem::path& file, YAML::Node* root,
                std::vector<Diagnostic>* errors) {
  const std::string name = file.string();
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    errors->push_back({name, {}, "", "file not found"});
    return false;
  }
  std::ifstream in(file);
  if (!in) {
    errors->push_back({name, {}, "", "cannot read the file"});
    return false;
  }
  try {
    *root = YAML::Load(in);
    return true;
  } catch (const YAML::Exception& e) {
    errors->push_back({name, to_mark(e.mark), "", "invalid YAML: " + e.msg});
  } catch (const std::exception& e) {
    errors->push_back({name, {}, "", std::string("invalid YAML: ") + e.what()});
  }
  return false;
}

}  // namespace

Mark YamlDocument::mark_of(const std::string& pointer) const {
  std::string p = pointer;
  while (true) {
    if (auto it = marks.find(p); it != marks.end() && it->second.line > 0) return it->second;
    if (p.empty()) return {};
    p.erase(p.rfind('/'));
  }
}

std::string YamlDocument::dotted(const std::string& pointer) {
  std::string out;
  size_t start = 1;
  while (start <= pointer.size()) {
    size_t end = pointer.find('/', start);
    if (end == std::string::npos) end = pointer.size();
    std::string token = unescape_token(pointer.substr(start, end - start));
    if (is_digits(token))
      out += "[" + token + "]";  // an array index: auth.keys[0].alg
    else
      out += (out.empty() ? "" : ".") + token;
    start = end + 1;
  }
  return out;
}

bool load_yaml(const std::filesystem::path& file, YamlDocument* out,
               std::vector<Diagnostic>* errors) {
  out->file = file.string();
  out->value = nullptr;
  out->marks.clear();
  YAML::Node root;
  if (!parse_file(file, &root, errors)) return false;
  Mark root_mark = to_mark(root.Mark());
  if (root_mark.line > 0) out->marks[""] = root_mark;
  Converter converter(out, errors);
  try {
    converter.convert(root, "", 0, &out->value);
  } catch (const std::exception& e) {
    errors->push_back({out->file, {}, "", std::string("invalid YAML: ") + e.what()});
    return false;
  }
  return converter.ok();
}

void validate_at(const YamlDocument& doc, const std::string& pointer, const JsonSchema& schema,
                 std::vector<Diagnostic>* errors) {
  // An absent section is validated as an empty object, which is what the
  // loader uses in its place.
  static const json empty = json::object();
  const json* value = &empty;
  try {
    const json::json_pointer p(pointer);
    if (doc.value.contains(p)) value = &doc.value.at(p);
  } catch (const std::exception&) {
    // A malformed pointer names nothing: validate the default.
  }
  for (const auto& v : schema.validate(*value, 1000)) {
    const std::string full = pointer + v.pointer;
    errors->push_back({doc.file, doc.mark_of(full), YamlDocument::dotted(full), v.message});
  }
}

}  // namespace gv::config
