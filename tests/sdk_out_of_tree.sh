#!/usr/bin/env bash
# Installs the SDK into a temporary prefix, builds the example plugin out of
# tree against it (as a third-party author would), and runs the example's
# end-to-end tests with that build loaded into the real host.
set -euo pipefail
build_dir=$1 source_dir=$2 e2e=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/grapevine/sdk.hpp"
test -f "$work/prefix/lib/cmake/Grapevine/GrapevineConfig.cmake"
cp -r "$source_dir/sdk-docs/example-plugin" "$work/src"
cmake -S "$work/src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" >/dev/null
test -f "$work/build/hello.so"
# The installed host lists it too.
"$work/prefix/bin/grapevine" plugins --plugin-dir "$work/build" | grep -q '^hello '
GRAPEVINE_TEST_PLUGIN_DIR="$work/build" "$e2e" '[sdk]'
