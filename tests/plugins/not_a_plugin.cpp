// An ordinary shared library, without a Grapevine manifest.
extern "C" __attribute__((visibility("default"))) int not_a_plugin_answer() { return 42; }
