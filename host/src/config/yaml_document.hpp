// A YAML file turned into JSON, with the line and column of every value
// kept, so schema violations can be reported where they are in the file.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/diagnostic.hpp"
#include "core/json_schema.hpp"

namespace gv::config {

struct YamlDocument {
  std::string file;
  nlohmann::json value;
  std::map<std::string, Mark> marks;  // JSON pointer -> where it is

  // The mark of pointer or of its nearest ancestor that has one.
  Mark mark_of(const std::string& pointer) const;
  // "/plugins/hello/config" -> "plugins.hello.config"
  static std::string dotted(const std::string& pointer);
};

// Parses a YAML file. Scalars get JSON types the way YAML 1.2 core schema
// reads them (true/false, null/~, integers, floats; quoted is a string).
// A scalar tagged !env NAME takes the value of environment variable NAME
// (an error when unset). Returns false with errors on failure.
bool load_yaml(const std::filesystem::path& file, YamlDocument* out,
               std::vector<Diagnostic>* errors);

// Validates the value at pointer (the whole document for "") against
// schema, appending one Diagnostic per violation with its file position.
void validate_at(const YamlDocument& doc, const std::string& pointer, const JsonSchema& schema,
                 std::vector<Diagnostic>* errors);

}  // namespace gv::config
