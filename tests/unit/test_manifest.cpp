// Tests of the plugin manifest reader, the ABI check and dependency order.
//
// The reader handles untrusted files, so besides well-formed plugins it is
// fed truncated and corrupted ones; run this file under ASan/UBSan or
// valgrind to prove no read goes out of bounds.
#include <elf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <grapevine/abi.h>

#include "plugins/manifest.hpp"

namespace fs = std::filesystem;
using gv::plugins::Manifest;

namespace {

// This test executable carries a manifest, so the reader is also tested on
// what a real compiler and linker write.
[[gnu::section(GV_MANIFEST_SECTION), gnu::used]] const char self_manifest[] =
    GV_MANIFEST("selftest", "1.2.3", "a, b", "{\"type\":\"object\",\"properties\":{}}");

const std::string kNotElf64Dyn = "not a 64-bit little-endian ELF shared library";
const std::string kNotPlugin =
    "no Grapevine manifest (section .grapevine_plugin): not a Grapevine plugin";

// ------------------------------------------------------------------ helpers

// A file in the temp directory, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& bytes = "") {
    static int counter = 0;
    path_ = fs::temp_directory_path() / ("gv_test_manifest_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter++) + ".so");
    write(bytes);
  }
  ~TempFile() {
    std::error_code ignored;
    fs::remove(path_, ignored);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const std::string& bytes) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // Overwrites bytes in place: cheaper than rewriting a large file.
  void overwrite(uint64_t offset, const std::string& bytes) const {
    std::fstream out(path_, std::ios::binary | std::ios::in | std::ios::out);
    out.seekp(static_cast<std::streamoff>(offset));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct ReadResult {
  bool ok = false;
  Manifest manifest;
  std::string error;
};

ReadResult read_path(const fs::path& path) {
  ReadResult r;
  r.ok = gv::plugins::read_manifest(path, &r.manifest, &r.error);
  return r;
}

ReadResult read_bytes(const std::string& bytes) {
  TempFile file(bytes);
  return read_path(file.path());
}

// Reads a file that may hold anything: the reader must fail cleanly or
// succeed, never crash. Returns whether it succeeded.
bool survives(const TempFile& file) {
  ReadResult r = read_path(file.path());
  if (!r.ok) CHECK_FALSE(r.error.empty());
  return r.ok;
}

bool survives(const TempFile& file, const std::string& bytes) {
  file.write(bytes);
  return survives(file);
}

template <class T>
void patch(std::string& bytes, uint64_t offset, T value) {
  REQUIRE(offset + sizeof(T) <= bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

template <class T>
T peek(const std::string& bytes, uint64_t offset) {
  T value;
  REQUIRE(offset + sizeof(T) <= bytes.size());
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Offset of member `member` of the section header at `index`.
#define SHDR_AT(shoff, index, member) \
  ((shoff) + (index) * sizeof(Elf64_Shdr) + offsetof(Elf64_Shdr, member))

// A minimal ELF64 shared-library file: the header, the section name table,
// the manifest, and three section headers [null, .shstrtab, manifest].
struct FakeElf {
  static constexpr uint64_t kNamesIndex = 1;
  static constexpr uint64_t kManifestIndex = 2;
  std::string bytes;
  uint64_t shoff = 0;
};

FakeElf make_elf(const std::string& manifest,
                 const std::string& section_name = GV_MANIFEST_SECTION) {
  const std::string names = std::string("\0.shstrtab\0", 11) + section_name + std::string("\0", 1);
  FakeElf elf;
  std::string& b = elf.bytes;
  b.assign(sizeof(Elf64_Ehdr), '\0');
  const uint64_t names_offset = b.size();
  b += names;
  const uint64_t manifest_offset = b.size();
  b += manifest;
  b.resize((b.size() + 7) / 8 * 8, '\0');
  elf.shoff = b.size();

  Elf64_Ehdr h{};
  std::memcpy(h.e_ident, ELFMAG, SELFMAG);
  h.e_ident[EI_CLASS] = ELFCLASS64;
  h.e_ident[EI_DATA] = ELFDATA2LSB;
  h.e_ident[EI_VERSION] = EV_CURRENT;
  h.e_type = ET_DYN;
  h.e_machine = EM_X86_64;
  h.e_version = EV_CURRENT;
  h.e_ehsize = sizeof(Elf64_Ehdr);
  h.e_shoff = elf.shoff;
  h.e_shentsize = sizeof(Elf64_Shdr);
  h.e_shnum = 3;
  h.e_shstrndx = FakeElf::kNamesIndex;
  std::memcpy(b.data(), &h, sizeof h);

  Elf64_Shdr sections[3]{};
  sections[1].sh_name = 1;
  sections[1].sh_type = SHT_STRTAB;
  sections[1].sh_offset = names_offset;
  sections[1].sh_size = names.size();
  sections[2].sh_name = 11;
  sections[2].sh_type = SHT_PROGBITS;
  sections[2].sh_offset = manifest_offset;
  sections[2].sh_size = manifest.size();
  b.append(reinterpret_cast<const char*>(sections), sizeof sections);
  return elf;
}

std::string manifest_text(const std::string& entries) {
  return std::string("grapevine-plugin\0", 17) + entries;
}

// Entries are given with '|' for NUL, for readability.
std::string manifest_of(std::string entries) {
  for (char& c : entries)
    if (c == '|') c = '\0';
  return manifest_text(entries);
}

ReadResult read_manifest_of(const std::string& entries) {
  return read_bytes(make_elf(manifest_of(entries)).bytes);
}

std::string error_of(const std::string& entries) {
  ReadResult r = read_manifest_of(entries);
  CHECK_FALSE(r.ok);
  return r.error;
}

// A copy of this test executable, typed ET_DYN like a plugin (it is unless
// the toolchain builds non-PIE executables).
std::string self_exe_bytes() {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > sizeof(Elf64_Ehdr));
  patch<Elf64_Half>(bytes, offsetof(Elf64_Ehdr, e_type), ET_DYN);
  return bytes;
}

// The index of the named section in a well-formed ELF file (trusted input).
uint64_t section_index(const std::string& bytes, const std::string& name) {
  auto shoff = peek<Elf64_Off>(bytes, offsetof(Elf64_Ehdr, e_shoff));
  auto count = peek<Elf64_Half>(bytes, offsetof(Elf64_Ehdr, e_shnum));
  auto names_index = peek<Elf64_Half>(bytes, offsetof(Elf64_Ehdr, e_shstrndx));
  auto names = peek<Elf64_Off>(bytes, SHDR_AT(shoff, names_index, sh_offset));
  for (uint64_t i = 0; i < count; ++i) {
    auto at = peek<Elf64_Word>(bytes, SHDR_AT(shoff, i, sh_name));
    if (std::strcmp(bytes.c_str() + names + at, name.c_str()) == 0) return i;
  }
  FAIL("no section " << name);
  return 0;
}

Manifest plugin(const std::string& name, std::vector<std::string> depends = {},
                const std::string& dir = "/p") {
  Manifest m;
  m.name = name;
  m.file = dir + "/lib" + name + ".so";
  m.depends = std::move(depends);
  return m;
}

std::vector<std::string> names_of(const std::vector<Manifest>& plugins) {
  std::vector<std::string> names;
  for (const Manifest& m : plugins) names.push_back(m.name);
  return names;
}

std::string order_error(std::vector<Manifest> plugins) {
  std::string error;
  CHECK_FALSE(gv::plugins::order_by_dependencies(plugins, &error));
  return error;
}

using Names = std::vector<std::string>;

}  // namespace

// ------------------------------------------------------------ read_manifest

TEST_CASE("read_manifest reads the manifest a real linker wrote", "[manifest]") {
  TempFile file(self_exe_bytes());
  ReadResult r = read_path(file.path());
  REQUIRE(r.error == "");
  REQUIRE(r.ok);
  CHECK(r.manifest.file == file.path());
  CHECK(r.manifest.name == "selftest");
  CHECK(r.manifest.version == "1.2.3");
  CHECK(r.manifest.abi_major == GV_ABI_MAJOR);
  CHECK(r.manifest.abi_minor == GV_ABI_MINOR);
  CHECK(r.manifest.depends == Names{"a", "b"});
  CHECK(r.manifest.config_schema == nlohmann::json::parse(R"({"type":"object","properties":{}})"));
}

TEST_CASE("read_manifest reads every key, in any order", "[manifest]") {
  ReadResult r = read_manifest_of(
      "config_schema={\"type\":\"object\"}|depends=users,auth|version=2.0.1|"
      "name=posts|abi=1.0");
  REQUIRE(r.error == "");
  CHECK(r.manifest.name == "posts");
  CHECK(r.manifest.version == "2.0.1");
  CHECK(r.manifest.abi_major == 1);
  CHECK(r.manifest.abi_minor == 0);
  CHECK(r.manifest.depends == Names{"users", "auth"});
  CHECK(r.manifest.config_schema == nlohmann::json{{"type", "object"}});
}

TEST_CASE("read_manifest ignores unknown keys and NUL padding", "[manifest]") {
  std::string padded = manifest_of("abi=1.0|future_key=whatever=it is|name=hello|version=1.0.0|");
  padded += std::string(13, '\0');
  ReadResult r = read_bytes(make_elf(padded).bytes);
  REQUIRE(r.error == "");
  CHECK(r.manifest.name == "hello");
}

TEST_CASE("read_manifest defaults and normalizes optional entries", "[manifest]") {
  const nlohmann::json any_object{{"type", "object"}};
  SECTION("no config_schema or depends") {
    ReadResult r = read_manifest_of("abi=1.0|name=hello|version=1");
    REQUIRE(r.ok);
    CHECK(r.manifest.depends.empty());
    CHECK(r.manifest.config_schema == any_object);
  }
  SECTION("empty config_schema and depends") {
    ReadResult r = read_manifest_of("abi=1.0|name=hello|version=1|depends=|config_schema=");
    REQUIRE(r.ok);
    CHECK(r.manifest.depends.empty());
    CHECK(r.manifest.config_schema == any_object);
  }
  SECTION("spaces around dependencies, a repeated dependency") {
    ReadResult r = read_manifest_of("abi=1.0|name=hello|version=1|depends= users , auth,users");
    REQUIRE(r.ok);
    CHECK(r.manifest.depends == Names{"users", "auth"});
  }
}

TEST_CASE("read_manifest checks names", "[manifest]") {
  const std::string base = "abi=1.0|version=1|";
  CHECK(error_of(base) == "manifest has no name");
  CHECK(error_of(base + "name=") == "manifest has no name");
  for (std::string bad : {"Hello", "1abc", "_abc", "a-b", "a b", "a.b"}) {
    INFO(bad);
    CHECK(error_of(base + "name=" + bad)
              .starts_with("manifest has an invalid name '" + bad +
                           "': a plugin name is a lowercase letter"));
  }
  CHECK(read_manifest_of(base + "name=a").ok);
  CHECK(read_manifest_of(base + "name=a_9" + std::string(60, 'z')).ok);
  CHECK_FALSE(read_manifest_of(base + "name=a" + std::string(63, 'z')).ok);
}

TEST_CASE("read_manifest checks dependencies", "[manifest]") {
  const std::string base = "abi=1.0|version=1|name=hello|depends=";
  for (std::string bad : {"a,,b", "a,", ",a", "Users", "a;b", " , "}) {
    INFO(bad);
    CHECK(error_of(base + bad).starts_with("manifest has an invalid dependency "));
  }
}

TEST_CASE("read_manifest checks version and abi", "[manifest]") {
  CHECK(error_of("abi=1.0|name=hello") == "manifest has no version");
  CHECK(error_of("abi=1.0|name=hello|version=1 0")
            .starts_with("manifest has an invalid version '1 0'"));
  CHECK(error_of("name=hello|version=1") == "manifest is corrupt: it has no abi entry");
  for (std::string bad : {"", "1", "1.", ".0", "1.x", "-1.0", "+1.0", "1.-0", "1.0.0", " 1.0",
                          "1.0 ", "65536.0", "99999999999999999999.0"}) {
    INFO(bad);
    CHECK(error_of("name=hello|version=1|abi=" + bad) ==
          "manifest is corrupt: abi '" + bad.substr(0, 40) + (bad.size() > 40 ? "..." : "") +
              "' is not MAJOR.MINOR");
  }
  ReadResult r = read_manifest_of("name=hello|version=1|abi=1.65535");
  REQUIRE(r.ok);
  CHECK(r.manifest.abi_minor == 65535);
}

TEST_CASE("read_manifest checks config_schema", "[manifest]") {
  const std::string base = "abi=1.0|version=1|name=hello|config_schema=";
  CHECK(error_of(base + "{\"type\":")
            .starts_with("config_schema is not valid JSON: parse error at line 1, column 9"));
  CHECK(error_of(base + "[1]") == "config_schema is not a JSON object");
  CHECK(error_of(base + std::string(20000, '[') + std::string(20000, ']')) ==
        "config_schema is not valid JSON: it nests deeper than 64 levels");
  std::string nested = "{\"type\":\"object\"}";
  for (int i = 0; i < 30; ++i) nested = "{\"not\":" + nested + "}";
  CHECK(read_manifest_of(base + nested).ok);
}

TEST_CASE("read_manifest refuses a malformed manifest", "[manifest]") {
  CHECK(read_bytes(make_elf("hello").bytes).error ==
        "manifest is corrupt: it does not start with \"grapevine-plugin\"");
  CHECK(read_bytes(make_elf("").bytes).error ==
        "manifest is corrupt: it does not start with \"grapevine-plugin\"");
  CHECK(error_of("abi=1.0|name=hello|version=1|oops") ==
        "manifest is corrupt: entry 'oops' is not key=value");
  CHECK(error_of("abi=1.0|name=hello|version=1|=x") ==
        "manifest is corrupt: entry '=x' is not key=value");
  CHECK(error_of("abi=1.0|name=hello|version=1|name=other") ==
        "manifest is corrupt: 'name' appears twice");
  CHECK(error_of("abi=1.0|name=a|version=1||grapevine-plugin|abi=1.0") ==
        "manifest is corrupt: the file holds more than one manifest");
  // Unknown keys are ignored whatever their value.
  CHECK(read_manifest_of("abi=1.0|name=hello|version=1|x=\x01\x7f" + std::string(100, 'y')).ok);
  CHECK(error_of("abi=1.0|name=hello|version=1|\x01\xff") ==
        "manifest is corrupt: entry '?"
        "?' is not key=value");
}

TEST_CASE("read_manifest caps the manifest size", "[manifest]") {
  std::string huge = manifest_of("abi=1.0|name=hello|version=1|pad=");
  huge.resize((1 << 20) + 1, 'x');
  CHECK(read_bytes(make_elf(huge).bytes).error == "manifest is corrupt: it is larger than 1 MiB");
}

TEST_CASE("read_manifest reads another ABI major's manifest for check_abi", "[manifest]") {
  // A future ABI may change the other entries; the user must still learn
  // that the ABI is the problem.
  ReadResult r = read_manifest_of("abi=" + std::to_string(GV_ABI_MAJOR + 1) +
                                  ".0|name=hello|version=a new scheme|depends=!!|config_schema=[");
  REQUIRE(r.ok);
  CHECK(r.manifest.name == "hello");
  std::string error;
  CHECK_FALSE(gv::plugins::check_abi(r.manifest, &error));
  CHECK(error.find("built for plugin ABI") != std::string::npos);
}

TEST_CASE("read_manifest refuses what is not a plugin file", "[manifest]") {
  SECTION("missing file") {
    CHECK(read_path("/nonexistent/libnothing.so").error ==
          "cannot open: No such file or directory");
  }
  SECTION("directory") {
    CHECK(read_path(fs::temp_directory_path()).error == "cannot open: Is a directory");
  }
  SECTION("FIFO: refused without blocking") {
    TempFile file;
    fs::remove(file.path());
    REQUIRE(::mkfifo(file.path().c_str(), 0600) == 0);
    CHECK(read_path(file.path()).error == "not a regular file");
  }
  SECTION("empty, short and text files") {
    CHECK(read_bytes("").error == "not an ELF file");
    CHECK(read_bytes("\x7f"
                     "ELF")
              .error == "not an ELF file");
    CHECK(read_bytes("name: hello\nversion: 1.0\n").error == "not an ELF file");
    CHECK(read_bytes(std::string(4096, 'x')).error == "not an ELF file");
  }
  SECTION("ELF32, big-endian, executable, truncated header") {
    FakeElf elf = make_elf(manifest_of("abi=1.0|name=a|version=1"));
    std::string bytes = elf.bytes;
    bytes[EI_CLASS] = ELFCLASS32;
    CHECK(read_bytes(bytes).error == kNotElf64Dyn);
    bytes = elf.bytes;
    bytes[EI_DATA] = ELFDATA2MSB;
    CHECK(read_bytes(bytes).error == kNotElf64Dyn);
    bytes = elf.bytes;
    patch<Elf64_Half>(bytes, offsetof(Elf64_Ehdr, e_type), ET_EXEC);
    CHECK(read_bytes(bytes).error == kNotElf64Dyn);
    patch<Elf64_Half>(bytes, offsetof(Elf64_Ehdr, e_type), ET_REL);
    CHECK(read_bytes(bytes).error == kNotElf64Dyn);
    CHECK(read_bytes(elf.bytes.substr(0, 40)).error ==
          "corrupt ELF file: the ELF header lies outside the file");
  }
  SECTION("an ELF file without a manifest") {
    CHECK(read_bytes(make_elf("x", ".data").bytes).error == kNotPlugin);
    // Names are compared whole, not as prefixes.
    CHECK(read_bytes(make_elf("x", ".grapevine_pluginx").bytes).error == kNotPlugin);
    CHECK(read_bytes(make_elf("x", ".grapevine_plugi").bytes).error == kNotPlugin);
    std::string bytes = make_elf("x").bytes;
    patch<Elf64_Off>(bytes, offsetof(Elf64_Ehdr, e_shoff), 0);
    CHECK(read_bytes(bytes).error == kNotPlugin);
  }
}

TEST_CASE("read_manifest checks every offset and size against the file", "[manifest]") {
  const FakeElf elf = make_elf(manifest_of("abi=1.0|name=a|version=1"));
  REQUIRE(read_bytes(elf.bytes).ok);
  const uint64_t shoff = elf.shoff;
  const uint64_t names = FakeElf::kNamesIndex;
  const uint64_t manifest = FakeElf::kManifestIndex;
  const uint64_t size = elf.bytes.size();
  std::string b;
  auto reset = [&] { b = elf.bytes; };
  auto error = [&] { return read_bytes(b).error; };
  const std::string outside = " lies outside the file";

  for (uint64_t bad : {size, size - 1, uint64_t{1} << 63, UINT64_MAX, UINT64_MAX - 63}) {
    INFO(bad);
    reset();
    patch<Elf64_Off>(b, offsetof(Elf64_Ehdr, e_shoff), bad);
    CHECK(error() == "corrupt ELF file: the section header table" + outside);
  }
  reset();
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shnum), 0xfeff);
  CHECK(error() == "corrupt ELF file: the section header table" + outside);
  reset();
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shentsize), 32);
  CHECK(error() == "corrupt ELF file: unexpected section header size");
  reset();
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shstrndx), 3);
  CHECK(error() == "corrupt ELF file: it has no section name table");
  reset();
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shstrndx), SHN_UNDEF);
  CHECK(error() == "corrupt ELF file: it has no section name table");
  reset();
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shstrndx), FakeElf::kManifestIndex);
  CHECK(error() == "corrupt ELF file: the section name table is not a string table");

  for (uint64_t bad : {size, UINT64_MAX, UINT64_MAX - 4}) {
    INFO(bad);
    reset();
    patch<Elf64_Off>(b, SHDR_AT(shoff, names, sh_offset), bad);
    CHECK(error() == "corrupt ELF file: the section name table" + outside);
    reset();
    patch<Elf64_Off>(b, SHDR_AT(shoff, manifest, sh_offset), bad);
    CHECK(error() == "corrupt ELF file: the manifest" + outside);
  }
  reset();
  patch<Elf64_Xword>(b, SHDR_AT(shoff, names, sh_size), UINT64_MAX);
  CHECK(error() == "corrupt ELF file: the section name table is larger than 1 MiB");
  reset();
  patch<Elf64_Xword>(b, SHDR_AT(shoff, names, sh_size), size);
  CHECK(error() == "corrupt ELF file: the section name table" + outside);
  reset();
  patch<Elf64_Xword>(b, SHDR_AT(shoff, manifest, sh_size), UINT64_MAX);
  CHECK(error() == "manifest is corrupt: it is larger than 1 MiB");
  reset();
  patch<Elf64_Xword>(b, SHDR_AT(shoff, manifest, sh_size), size);
  CHECK(error() == "corrupt ELF file: the manifest" + outside);
  reset();
  patch<Elf64_Word>(b, SHDR_AT(shoff, manifest, sh_type), SHT_NOBITS);
  CHECK(error() == "manifest is corrupt: its section has no content");
  reset();
  patch<Elf64_Word>(b, SHDR_AT(shoff, manifest, sh_name), 0xffffffff);
  CHECK(error() == kNotPlugin);
  // A name running to the end of the table without its NUL.
  reset();
  patch<Elf64_Xword>(b, SHDR_AT(shoff, names, sh_size), 11 + sizeof(GV_MANIFEST_SECTION) - 1);
  CHECK(error() == kNotPlugin);
}

TEST_CASE("read_manifest follows ELF extended section numbering", "[manifest]") {
  FakeElf elf = make_elf(manifest_of("abi=1.0|name=a|version=1"));
  std::string b = elf.bytes;
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shnum), 0);
  patch<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shstrndx), SHN_XINDEX);
  patch<Elf64_Xword>(b, SHDR_AT(elf.shoff, 0, sh_size), 3);
  patch<Elf64_Word>(b, SHDR_AT(elf.shoff, 0, sh_link), FakeElf::kNamesIndex);
  CHECK(read_bytes(b).ok);
  patch<Elf64_Xword>(b, SHDR_AT(elf.shoff, 0, sh_size), UINT64_MAX);
  CHECK(read_bytes(b).error == "corrupt ELF file: the section header table lies outside the file");
  patch<Elf64_Xword>(b, SHDR_AT(elf.shoff, 0, sh_size), 3);
  patch<Elf64_Word>(b, SHDR_AT(elf.shoff, 0, sh_link), 0xffffffff);
  CHECK(read_bytes(b).error == "corrupt ELF file: it has no section name table");
}

TEST_CASE("read_manifest survives every truncation and byte corruption", "[manifest]") {
  const std::string good = make_elf(manifest_of("abi=1.0|name=a|version=1|depends=b|"
                                                "config_schema={\"type\":\"object\"}"))
                               .bytes;
  TempFile file;
  for (size_t length = 0; length < good.size(); ++length)
    CHECK_FALSE(survives(file, good.substr(0, length)));
  for (size_t i = 0; i < good.size(); ++i) {
    for (unsigned char value : {0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff}) {
      std::string bytes = good;
      bytes[i] = static_cast<char>(value);
      survives(file, bytes);
    }
  }
  std::mt19937 random(20261123);  // fixed seed: failures reproduce
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = good;
    int flips = 1 + static_cast<int>(random() % 8);
    for (int k = 0; k < flips; ++k) bytes[random() % bytes.size()] = static_cast<char>(random());
    survives(file, bytes);
  }
}

TEST_CASE("read_manifest survives a truncated or corrupted real plugin", "[manifest]") {
  const std::string good = self_exe_bytes();
  const uint64_t size = good.size();
  const auto shoff = peek<Elf64_Off>(good, offsetof(Elf64_Ehdr, e_shoff));
  const uint64_t index = section_index(good, GV_MANIFEST_SECTION);
  const auto manifest_at = peek<Elf64_Off>(good, SHDR_AT(shoff, index, sh_offset));
  TempFile file;
  REQUIRE(survives(file, good));

  // Corrupt every field of every section header, one at a time, in place.
  const auto count = peek<Elf64_Half>(good, offsetof(Elf64_Ehdr, e_shnum));
  for (uint64_t i = 0; i < count; ++i) {
    for (uint64_t field = 0; field < sizeof(Elf64_Shdr); field += 4) {
      const uint64_t at = shoff + i * sizeof(Elf64_Shdr) + field;
      for (uint32_t value : {0u, 0x7fffffffu, 0xffffffffu}) {
        file.overwrite(at, std::string(reinterpret_cast<char*>(&value), 4));
        survives(file);
      }
      file.overwrite(at, good.substr(at, 4));
    }
  }
  REQUIRE(survives(file));

  // Every length around the structures the reader visits, some in between;
  // longest first, so each step only shortens the file.
  std::set<uint64_t> lengths;
  for (uint64_t n = 0; n < 256; ++n) lengths.insert(n);
  for (uint64_t n = 0; n < 64; ++n) lengths.insert(size * n / 64);
  for (uint64_t n = manifest_at - 8; n < manifest_at + 64; ++n) lengths.insert(n);
  for (uint64_t n = shoff - 8; n < size; n += 7) lengths.insert(n);
  for (auto it = lengths.rbegin(); it != lengths.rend(); ++it) {
    INFO(*it);
    fs::resize_file(file.path(), *it);
    CHECK_FALSE(survives(file));
  }
}

// ---------------------------------------------------------------- check_abi

TEST_CASE("check_abi accepts this ABI and older minors", "[manifest]") {
  Manifest m = plugin("hello");
  m.abi_major = GV_ABI_MAJOR;
  for (int minor = 0; minor <= GV_ABI_MINOR; ++minor) {
    m.abi_minor = minor;
    std::string error;
    CHECK(gv::plugins::check_abi(m, &error));
    CHECK(error.empty());
  }
}

TEST_CASE("check_abi refuses another major or a newer minor", "[manifest]") {
  const std::string host_range = "this host supports " + std::to_string(GV_ABI_MAJOR) + ".0 to " +
                                 std::to_string(GV_ABI_MAJOR) + "." + std::to_string(GV_ABI_MINOR);
  const std::string sdk = "Grapevine " + std::to_string(GV_ABI_MAJOR) + ".x SDK";
  Manifest m = plugin("hello");
  std::string error;

  m.abi_major = GV_ABI_MAJOR + 1;
  m.abi_minor = 0;
  CHECK_FALSE(gv::plugins::check_abi(m, &error));
  CHECK(error == "/p/libhello.so: built for plugin ABI " + std::to_string(GV_ABI_MAJOR + 1) +
                     ".0, " + host_range + "; rebuild the plugin against the " + sdk);

  m.abi_major = GV_ABI_MAJOR - 1;
  m.abi_minor = 7;
  CHECK_FALSE(gv::plugins::check_abi(m, &error));
  CHECK(error == "/p/libhello.so: built for plugin ABI " + std::to_string(GV_ABI_MAJOR - 1) +
                     ".7, " + host_range + "; rebuild the plugin against the " + sdk);

  m.abi_major = GV_ABI_MAJOR;
  m.abi_minor = GV_ABI_MINOR + 1;
  CHECK_FALSE(gv::plugins::check_abi(m, &error));
  CHECK(error == "/p/libhello.so: built for plugin ABI " + std::to_string(GV_ABI_MAJOR) + "." +
                     std::to_string(GV_ABI_MINOR + 1) + ", " + host_range +
                     "; the plugin needs a newer host: upgrade grapevine or "
                     "rebuild the plugin against this host's " +
                     sdk);
  CHECK(error.find('\n') == std::string::npos);
  CHECK_FALSE(gv::plugins::check_abi(m, nullptr));
}

// ---------------------------------------------------- order_by_dependencies

TEST_CASE("order_by_dependencies puts dependencies first", "[manifest]") {
  std::string error;
  SECTION("chain") {
    std::vector<Manifest> p = {plugin("c", {"b"}), plugin("b", {"a"}), plugin("a")};
    REQUIRE(gv::plugins::order_by_dependencies(p, &error));
    CHECK(names_of(p) == Names{"a", "b", "c"});
    CHECK(p[0].file == "/p/liba.so");  // whole manifests move
  }
  SECTION("diamond") {
    std::vector<Manifest> p = {plugin("d", {"b", "c"}), plugin("b", {"a"}), plugin("c", {"a"}),
                               plugin("a")};
    REQUIRE(gv::plugins::order_by_dependencies(p, &error));
    CHECK(names_of(p) == Names{"a", "b", "c", "d"});
  }
  SECTION("input order kept where dependencies allow") {
    std::vector<Manifest> p = {plugin("x"), plugin("y"), plugin("z")};
    REQUIRE(gv::plugins::order_by_dependencies(p, &error));
    CHECK(names_of(p) == Names{"x", "y", "z"});
    p = {plugin("b", {"a"}), plugin("x"), plugin("a"), plugin("y")};
    REQUIRE(gv::plugins::order_by_dependencies(p, &error));
    CHECK(names_of(p) == Names{"x", "a", "b", "y"});
  }
  SECTION("empty list") {
    std::vector<Manifest> p;
    CHECK(gv::plugins::order_by_dependencies(p, &error));
  }
}

TEST_CASE("order_by_dependencies names what is wrong", "[manifest]") {
  CHECK(order_error({plugin("posts", {"users"}), plugin("auth")}) ==
        "plugin 'posts' depends on 'users', which is not enabled or not "
        "installed");
  CHECK(order_error({plugin("a", {"b"}), plugin("b", {"c"}), plugin("c", {"a"})}) ==
        "plugins depend on each other in a cycle: a -> b -> c -> a");
  // Only the cycle is named, starting from its member listed first.
  CHECK(order_error({plugin("x", {"c"}), plugin("c", {"a"}), plugin("a", {"b"}), plugin("b", {"c"}),
                     plugin("free")}) ==
        "plugins depend on each other in a cycle: c -> a -> b -> c");
  CHECK(order_error({plugin("a"), plugin("b", {"b"})}) == "plugin 'b' depends on itself");
  CHECK(order_error({plugin("a", {}, "/one"), plugin("b"), plugin("a", {}, "/two")}) ==
        "two plugins are named 'a': /one/liba.so and /two/liba.so");
}

TEST_CASE("order_by_dependencies leaves the list alone on error", "[manifest]") {
  std::vector<Manifest> p = {plugin("b", {"a"}), plugin("a", {"b"}), plugin("c")};
  CHECK_FALSE(gv::plugins::order_by_dependencies(p, nullptr));
  CHECK(names_of(p) == Names{"b", "a", "c"});
}
