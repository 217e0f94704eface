// A plugin built for a future ABI major (2.0). Its manifest says so; the
// host must refuse it from the manifest alone. If any of its code ran, the
// static constructor below would leave a marker file behind.
#include <grapevine/abi.h>

#include <cstdio>
#include <cstdlib>

extern "C" {
__attribute__((section(GV_MANIFEST_SECTION), used)) const char grapevine_plugin_manifest[] =
    GV_MANIFEST_MAGIC "\0abi=2.0\0name=bad_abi\0version=9.9.9\0depends=\0config_schema={}";
}

namespace {
struct Marker {
  Marker() {
    if (const char* path = std::getenv("GRAPEVINE_TEST_MARKER"))
      if (FILE* f = std::fopen(path, "w")) {
        std::fputs("bad_abi code ran\n", f);
        std::fclose(f);
      }
  }
} marker;
}  // namespace

extern "C" GV_EXPORT const gv_plugin_v1* grapevine_plugin_entry_v1(void) {
  std::abort();  // never reached: the host refuses the manifest first
}
