#!/usr/bin/env bash
# check_install.sh BUILD_DIR: installs a build into a temporary prefix, then builds consumer.c
# against it twice, with find_package(cincflow) and with pkg-config, and runs both.
# CF_CONSUMER_FLAGS: extra compiler flags for the consumer (a sanitizer build's).
set -euo pipefail
build=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/cincflow/cincflow.h"
test ! -e "$prefix/include/cincflow/cf_autodiff_impl.h"
flags=${CF_CONSUMER_FLAGS:-}
cmake -S "$here" -B "$prefix/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$prefix/consumer" >/dev/null
LD_LIBRARY_PATH="$prefix/lib" "$prefix/consumer/consumer"
libdir=$(dirname "$(find "$prefix" -name cincflow.pc | head -n 1)")
cc $flags "$here/consumer.c" -o "$prefix/consumer_pc" \
    $(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs cincflow) -lm
LD_LIBRARY_PATH="$(dirname "$libdir")" "$prefix/consumer_pc"
