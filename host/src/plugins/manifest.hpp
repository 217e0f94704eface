// A plugin's manifest, read from the ELF section GV_MANIFEST_SECTION of the
// file without loading it, so nothing of the plugin runs before its ABI is
// checked (the way modinfo reads a kernel module's .modinfo).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace gv::plugins {

struct Manifest {
  std::filesystem::path file;
  std::string name;
  std::string version;
  int abi_major = 0;
  int abi_minor = 0;
  std::vector<std::string> depends;
  nlohmann::json config_schema = nlohmann::json::object();
};

// Reads the manifest of a plugin file. On failure returns false and sets
// *error to one sentence saying what is wrong ("not an ELF file", "no
// Grapevine manifest: not a plugin", "manifest has no name", ...).
bool read_manifest(const std::filesystem::path& file, Manifest* out, std::string* error);

// Checks the manifest's ABI against this host's (GV_ABI_MAJOR/MINOR): the
// major must be equal and the minor not newer. On failure sets *error to one
// line naming the file, what the host expects, what it found, and the fix.
bool check_abi(const Manifest& m, std::string* error);

// Orders plugins so each comes after its dependencies. A dependency that is
// not in the list, or a cycle, is an error naming the plugins involved.
bool order_by_dependencies(std::vector<Manifest>& plugins, std::string* error);

}  // namespace gv::plugins
