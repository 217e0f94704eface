#include "plugins/manifest.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <map>
#include <string_view>
#include <utility>

#include <grapevine/abi.h>

namespace gv::plugins {
namespace {

// The ELF structures are copied straight out of the file, which is only
// right when the host's byte order is the file's.
static_assert(std::endian::native == std::endian::little,
              "the manifest reader assumes a little-endian host");

// A plugin file is untrusted input: every size read from it is capped so a
// corrupt or hostile file cannot make the host allocate without bound.
constexpr uint64_t kMaxManifestSize = 1 << 20;
constexpr uint64_t kMaxSectionNamesSize = 1 << 20;
constexpr int kMaxSchemaDepth = 64;
constexpr size_t kMaxVersionLength = 64;

constexpr std::string_view kMagic = GV_MANIFEST_MAGIC;
constexpr std::string_view kNotElf = "not an ELF file";
constexpr std::string_view kNotElf64Dyn = "not a 64-bit little-endian ELF shared library";
constexpr std::string_view kNotPlugin =
    "no Grapevine manifest (section " GV_MANIFEST_SECTION "): not a Grapevine plugin";

bool fail(std::string* error, std::string message) {
  *error = std::move(message);
  return false;
}

// Quotes text taken from the file for an error message: non-printable bytes
// become '?' and long text is cut, so a hostile manifest cannot flood or
// garble the log.
std::string excerpt(std::string_view text) {
  constexpr size_t kMax = 40;
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < kMax; ++i) {
    char c = text[i];
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  if (text.size() > kMax) out += "...";
  return out + "'";
}

// ---------------------------------------------------------------- the file

class File {
 public:
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }

  bool open(const std::filesystem::path& path, std::string* error) {
    // O_NONBLOCK: opening a FIFO for reading must not hang the host.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) return fail(error, "cannot open: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return fail(error, "cannot open: " + errno_text(errno));
    if (S_ISDIR(st.st_mode)) return fail(error, "cannot open: " + errno_text(EISDIR));
    if (!S_ISREG(st.st_mode)) return fail(error, "not a regular file");
    size_ = static_cast<uint64_t>(st.st_size);
    return true;
  }

  uint64_t size() const { return size_; }

  // Reads `length` bytes at `offset`; `what` names them in the error when
  // they are not all inside the file.
  bool read(uint64_t offset, uint64_t length, std::string_view what, std::string* out,
            std::string* error) const {
    // Written so that no sum can overflow, whatever the file claims.
    if (offset > size_ || length > size_ - offset)
      return fail(error, "corrupt ELF file: " + std::string(what) + " lies outside the file");
    out->resize(length);
    uint64_t done = 0;
    while (done < length) {
      ssize_t n =
          ::pread(fd_, out->data() + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(error, "cannot read: " + errno_text(errno));
      if (n == 0)  // the file shrank since fstat
        return fail(error, "corrupt ELF file: " + std::string(what) + " lies outside the file");
      done += static_cast<uint64_t>(n);
    }
    return true;
  }

 private:
  static std::string errno_text(int e) { return std::strerror(e); }

  int fd_ = -1;
  uint64_t size_ = 0;
};

template <class T>
bool read_struct(const File& file, uint64_t offset, std::string_view what, T* out,
                 std::string* error) {
  std::string bytes;
  if (!file.read(offset, sizeof(T), what, &bytes, error)) return false;
  std::memcpy(out, bytes.data(), sizeof(T));
  return true;
}

// ----------------------------------------------------------------- the ELF

bool read_elf_header(const File& file, Elf64_Ehdr* header, std::string* error) {
  std::string ident;
  if (file.size() < EI_NIDENT || !file.read(0, EI_NIDENT, "ELF identification", &ident, error) ||
      std::memcmp(ident.data(), ELFMAG, SELFMAG) != 0)
    return fail(error, std::string(kNotElf));
  if (ident[EI_CLASS] != ELFCLASS64 || ident[EI_DATA] != ELFDATA2LSB)
    return fail(error, std::string(kNotElf64Dyn));
  if (!read_struct(file, 0, "the ELF header", header, error)) return false;
  if (header->e_type != ET_DYN) return fail(error, std::string(kNotElf64Dyn));
  return true;
}

// Reads the section header table, following the ELF extended numbering
// (section count and name-table index kept in section 0 when they do not
// fit the ELF header). *names_index receives the name table's index.
bool read_section_headers(const File& file, const Elf64_Ehdr& header,
                          std::vector<Elf64_Shdr>* sections, uint32_t* names_index,
                          std::string* error) {
  if (header.e_shoff == 0) return fail(error, std::string(kNotPlugin));
  if (header.e_shentsize != sizeof(Elf64_Shdr))
    return fail(error, "corrupt ELF file: unexpected section header size");
  Elf64_Shdr first{};
  if (!read_struct(file, header.e_shoff, "the section header table", &first, error)) return false;
  uint64_t count = header.e_shnum != 0 ? header.e_shnum : first.sh_size;
  *names_index = header.e_shstrndx != SHN_XINDEX ? header.e_shstrndx : first.sh_link;
  // Checked before multiplying, so count * entry size cannot overflow.
  if (count == 0 || count > file.size() / sizeof(Elf64_Shdr))
    return fail(error,
                "corrupt ELF file: the section header table lies outside the "
                "file");
  std::string bytes;
  if (!file.read(header.e_shoff, count * sizeof(Elf64_Shdr), "the section header table", &bytes,
                 error))
    return false;
  sections->resize(count);
  std::memcpy(sections->data(), bytes.data(), bytes.size());
  return true;
}

bool read_section_names(const File& file, const std::vector<Elf64_Shdr>& sections,
                        uint32_t names_index, std::string* names, std::string* error) {
  if (names_index == SHN_UNDEF || names_index >= sections.size())
    return fail(error, "corrupt ELF file: it has no section name table");
  const Elf64_Shdr& table = sections[names_index];
  if (table.sh_type != SHT_STRTAB)
    return fail(error,
                "corrupt ELF file: the section name table is not a string "
                "table");
  if (table.sh_size > kMaxSectionNamesSize)
    return fail(error,
                "corrupt ELF file: the section name table is larger than "
                "1 MiB");
  return file.read(table.sh_offset, table.sh_size, "the section name table", names, error);
}

// The manifest section's header, or nullptr when the file has none.
const Elf64_Shdr* find_manifest_section(const std::vector<Elf64_Shdr>& sections,
                                        std::string_view names) {
  // Compared with its terminating NUL, so ".grapevine_pluginX" differs.
  constexpr std::string_view wanted(GV_MANIFEST_SECTION, sizeof(GV_MANIFEST_SECTION));
  for (const Elf64_Shdr& section : sections) {
    if (section.sh_name < names.size() && names.substr(section.sh_name).starts_with(wanted))
      return &section;
  }
  return nullptr;
}

bool read_manifest_bytes(const File& file, std::string* content, std::string* error) {
  Elf64_Ehdr header{};
  std::vector<Elf64_Shdr> sections;
  uint32_t names_index = 0;
  std::string names;
  if (!read_elf_header(file, &header, error) ||
      !read_section_headers(file, header, &sections, &names_index, error) ||
      !read_section_names(file, sections, names_index, &names, error))
    return false;
  const Elf64_Shdr* section = find_manifest_section(sections, names);
  if (section == nullptr) return fail(error, std::string(kNotPlugin));
  if (section->sh_type == SHT_NOBITS)
    return fail(error, "manifest is corrupt: its section has no content");
  if (section->sh_size > kMaxManifestSize)
    return fail(error, "manifest is corrupt: it is larger than 1 MiB");
  return file.read(section->sh_offset, section->sh_size, "the manifest", content, error);
}

// ------------------------------------------------------------ the manifest

using Fields = std::map<std::string, std::string, std::less<>>;

// Splits "grapevine-plugin\0key=value\0..." into its fields. Empty entries
// are padding (the linker may align the section) and are skipped.
bool split_fields(std::string_view content, Fields* fields, std::string* error) {
  size_t end = content.find('\0');
  if (content.substr(0, end) != kMagic)
    return fail(error,
                "manifest is corrupt: it does not start with \"" + std::string(kMagic) + "\"");
  while (end != std::string_view::npos) {
    size_t start = end + 1;
    end = content.find('\0', start);
    std::string_view entry = content.substr(start, end - start);
    if (entry.empty()) continue;
    if (entry == kMagic)
      return fail(error,
                  "manifest is corrupt: the file holds more than one "
                  "manifest");
    size_t eq = entry.find('=');
    if (eq == 0 || eq == std::string_view::npos)
      return fail(error, "manifest is corrupt: entry " + excerpt(entry) + " is not key=value");
    std::string key(entry.substr(0, eq));
    if (fields->count(key) != 0)
      return fail(error, "manifest is corrupt: " + excerpt(key) + " appears twice");
    fields->emplace(std::move(key), std::string(entry.substr(eq + 1)));
  }
  return true;
}

const std::string* field(const Fields& fields, std::string_view key) {
  auto it = fields.find(key);
  return it == fields.end() ? nullptr : &it->second;
}

bool is_valid_name(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  if (name[0] < 'a' || name[0] > 'z') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

constexpr std::string_view kNameRule =
    "a plugin name is a lowercase letter followed by up to 62 lowercase "
    "letters, digits or underscores";

// Parses a non-negative decimal integer that fits the ABI's uint16_t.
bool parse_abi_number(std::string_view text, int* out) {
  if (text.empty() || text.size() > 5 ||
      text.find_first_not_of("0123456789") != std::string_view::npos)
    return false;
  std::from_chars(text.data(), text.data() + text.size(), *out);
  return *out <= 0xffff;
}

bool parse_abi(const Fields& fields, Manifest* m, std::string* error) {
  const std::string* abi = field(fields, "abi");
  if (abi == nullptr) return fail(error, "manifest is corrupt: it has no abi entry");
  size_t dot = abi->find('.');
  std::string_view text = *abi;
  if (dot == std::string::npos || !parse_abi_number(text.substr(0, dot), &m->abi_major) ||
      !parse_abi_number(text.substr(dot + 1), &m->abi_minor))
    return fail(error, "manifest is corrupt: abi " + excerpt(text) + " is not MAJOR.MINOR");
  return true;
}

bool parse_name(const Fields& fields, Manifest* m, std::string* error) {
  const std::string* name = field(fields, "name");
  if (name == nullptr || name->empty()) return fail(error, "manifest has no name");
  if (!is_valid_name(*name))
    return fail(error,
                "manifest has an invalid name " + excerpt(*name) + ": " + std::string(kNameRule));
  m->name = *name;
  return true;
}

bool parse_version(const Fields& fields, Manifest* m, std::string* error) {
  const std::string* version = field(fields, "version");
  if (version == nullptr || version->empty()) return fail(error, "manifest has no version");
  bool printable = version->size() <= kMaxVersionLength;
  for (char c : *version) printable = printable && c > 0x20 && c < 0x7f;
  if (!printable)
    return fail(error, "manifest has an invalid version " + excerpt(*version) +
                           ": use up to 64 printable characters without "
                           "spaces, such as 1.2.0");
  m->version = *version;
  return true;
}

std::string_view trim_spaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

// "users, auth" -> {"users", "auth"}; "" means no dependencies. Spaces are
// allowed around names since people write the list by hand.
bool parse_depends(const Fields& fields, Manifest* m, std::string* error) {
  const std::string* list = field(fields, "depends");
  if (list == nullptr || trim_spaces(*list).empty()) return true;
  std::string_view rest = *list;
  while (true) {
    size_t comma = rest.find(',');
    std::string_view name = trim_spaces(rest.substr(0, comma));
    if (!is_valid_name(name))
      return fail(error, "manifest has an invalid dependency " + excerpt(name) +
                             " in depends=" + excerpt(*list) + ": " + std::string(kNameRule));
    bool seen = false;  // a repeated name is harmless: keep one
    for (const std::string& d : m->depends) seen = seen || d == name;
    if (!seen) m->depends.emplace_back(name);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return true;
}

// nlohmann's messages start with "[json.exception.parse_error.101] ",
// which says nothing to a plugin author.
std::string json_message(const std::exception& e) {
  std::string_view what = e.what();
  size_t close = what.find("] ");
  if (what.starts_with("[json.exception.") && close != std::string_view::npos)
    what.remove_prefix(close + 2);
  return std::string(what);
}

bool parse_config_schema(const Fields& fields, Manifest* m, std::string* error) {
  const std::string* text = field(fields, "config_schema");
  // No schema: the plugin takes any config object.
  if (text == nullptr || trim_spaces(*text).empty()) {
    m->config_schema = nlohmann::json{{"type", "object"}};
    return true;
  }
  // A deeply nested document would overflow the stack of the recursive
  // code (dump, schema compilation) that later walks it.
  bool too_deep = false;
  auto limit_depth = [&too_deep](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxSchemaDepth) too_deep = true;
    return !too_deep;
  };
  nlohmann::json schema;
  try {
    schema = nlohmann::json::parse(*text, limit_depth);
  } catch (const nlohmann::json::exception& e) {
    return fail(error, "config_schema is not valid JSON: " + json_message(e));
  }
  if (too_deep)
    return fail(error,
                "config_schema is not valid JSON: it nests deeper "
                "than 64 levels");
  if (!schema.is_object()) return fail(error, "config_schema is not a JSON object");
  m->config_schema = std::move(schema);
  return true;
}

bool parse_manifest(std::string_view content, Manifest* m, std::string* error) {
  Fields fields;
  if (!split_fields(content, &fields, error) || !parse_abi(fields, m, error)) return false;
  // Another ABI major may have other rules for the other entries. Read no
  // more than the name then, so that check_abi, not a stray parse error,
  // tells the user what is wrong.
  if (m->abi_major != GV_ABI_MAJOR) {
    std::string ignored;
    parse_name(fields, m, &ignored);
    return true;
  }
  return parse_name(fields, m, error) && parse_version(fields, m, error) &&
         parse_depends(fields, m, error) && parse_config_schema(fields, m, error);
}

// -------------------------------------------------------------- ordering

bool check_unique_names(const std::vector<Manifest>& plugins, std::string* error) {
  std::map<std::string_view, const Manifest*> by_name;
  for (const Manifest& p : plugins) {
    auto [it, added] = by_name.emplace(p.name, &p);
    if (!added)
      return fail(error, "two plugins are named '" + p.name + "': " + it->second->file.string() +
                             " and " + p.file.string());
  }
  return true;
}

bool check_dependencies_present(const std::vector<Manifest>& plugins,
                                const std::map<std::string_view, size_t>& index,
                                std::string* error) {
  for (const Manifest& p : plugins) {
    for (const std::string& d : p.depends) {
      if (d == p.name) return fail(error, "plugin '" + p.name + "' depends on itself");
      if (index.count(d) == 0)
        return fail(error, "plugin '" + p.name + "' depends on '" + d +
                               "', which is not enabled or not installed");
    }
  }
  return true;
}

// Called when no unplaced plugin has all its dependencies placed: every one
// of them then waits on another, so following the first unplaced dependency
// must come back to a plugin already visited. Names that cycle, starting
// from its member listed first.
std::string describe_cycle(const std::vector<Manifest>& plugins,
                           const std::map<std::string_view, size_t>& index,
                           const std::vector<bool>& placed) {
  size_t at = 0;
  while (placed[at]) ++at;
  std::vector<size_t> path;
  std::vector<size_t> position(plugins.size(), SIZE_MAX);
  while (position[at] == SIZE_MAX) {
    position[at] = path.size();
    path.push_back(at);
    for (const std::string& d : plugins[at].depends) {
      size_t next = index.at(d);
      if (!placed[next]) {
        at = next;
        break;
      }
    }
  }
  std::vector<size_t> cycle(path.begin() + position[at], path.end());
  auto first = std::min_element(cycle.begin(), cycle.end());
  std::rotate(cycle.begin(), first, cycle.end());
  std::string text;
  for (size_t i : cycle) text += plugins[i].name + " -> ";
  return text + plugins[cycle.front()].name;
}

bool all_placed(const Manifest& p, const std::map<std::string_view, size_t>& index,
                const std::vector<bool>& placed) {
  for (const std::string& d : p.depends)
    if (!placed[index.at(d)]) return false;
  return true;
}

// Stable topological sort: each round places the first plugin, in the
// given order, whose dependencies are all placed. O(n^2) rounds over a
// list of a few dozen plugins at most.
bool order_plugins(std::vector<Manifest>& plugins, std::string* error) {
  if (!check_unique_names(plugins, error)) return false;
  std::map<std::string_view, size_t> index;
  for (size_t i = 0; i < plugins.size(); ++i) index[plugins[i].name] = i;
  if (!check_dependencies_present(plugins, index, error)) return false;

  std::vector<bool> placed(plugins.size(), false);
  std::vector<size_t> order;
  while (order.size() < plugins.size()) {
    size_t next = 0;
    while (next < plugins.size() && (placed[next] || !all_placed(plugins[next], index, placed)))
      ++next;
    if (next == plugins.size())
      return fail(error, "plugins depend on each other in a cycle: " +
                             describe_cycle(plugins, index, placed));
    placed[next] = true;
    order.push_back(next);
  }
  std::vector<Manifest> sorted;
  sorted.reserve(plugins.size());
  for (size_t i : order) sorted.push_back(std::move(plugins[i]));
  plugins = std::move(sorted);
  return true;
}

// Runs one of the public functions so that no exception (bad_alloc, in
// practice) escapes it and *error may be null.
template <class Body>
bool guarded(std::string* error, Body body) {
  std::string message;
  bool ok = false;
  try {
    ok = body(&message);
  } catch (const std::exception& e) {
    message = std::string("internal error: ") + e.what();
    ok = false;
  }
  if (!ok && error != nullptr) *error = std::move(message);
  return ok;
}

}  // namespace

bool read_manifest(const std::filesystem::path& file, Manifest* out, std::string* error) {
  return guarded(error, [&](std::string* why) {
    File f;
    std::string content;
    Manifest m;
    if (!f.open(file, why) || !read_manifest_bytes(f, &content, why) ||
        !parse_manifest(content, &m, why))
      return false;
    m.file = file;
    *out = std::move(m);
    return true;
  });
}

bool check_abi(const Manifest& m, std::string* error) {
  return guarded(error, [&](std::string* why) {
    if (m.abi_major == GV_ABI_MAJOR && m.abi_minor <= GV_ABI_MINOR) return true;
    std::string host_major = std::to_string(GV_ABI_MAJOR);
    std::string text = (m.file.empty() ? "plugin '" + m.name + "'" : m.file.string()) +
                       ": built for plugin ABI " + std::to_string(m.abi_major) + "." +
                       std::to_string(m.abi_minor) + ", this host supports " + host_major +
                       ".0 to " + host_major + "." + std::to_string(GV_ABI_MINOR) + "; ";
    if (m.abi_major == GV_ABI_MAJOR)
      text +=
          "the plugin needs a newer host: upgrade grapevine or rebuild "
          "the plugin against this host's Grapevine " +
          host_major + ".x SDK";
    else
      text += "rebuild the plugin against the Grapevine " + host_major + ".x SDK";
    return fail(why, std::move(text));
  });
}

bool order_by_dependencies(std::vector<Manifest>& plugins, std::string* error) {
  return guarded(error, [&](std::string* why) { return order_plugins(plugins, why); });
}

}  // namespace gv::plugins
