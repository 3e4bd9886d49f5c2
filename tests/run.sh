#!/usr/bin/env bash
# tests/run.sh: installs what the tests need (Debian packages, idempotent), builds cincflow and
# runs the default test suite (CTest label "quick"). Options:
#   --sanitize   also build with AddressSanitizer + UndefinedBehaviorSanitizer and run the suite
#   --valgrind   also run the suite under valgrind memcheck (CTest label "memcheck")
#   --all        both
# Exit status: 0 when every test passed.
set -euo pipefail
CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$CF_ROOT/cmake/deps.sh"

sanitize=0 valgrind=0
for arg in "$@"; do
    case "$arg" in
    --sanitize) sanitize=1 ;;
    --valgrind) valgrind=1 ;;
    --all) sanitize=1 valgrind=1 ;;
    *) echo "tests/run.sh: unknown option '$arg' (--sanitize, --valgrind, --all)" >&2; exit 2 ;;
    esac
done

extra=(python3-numpy python3-h5py)
[ $valgrind -eq 1 ] && extra+=(valgrind)
cf_install_deps "${extra[@]}"

build="$CF_ROOT/build"
cf_build "$build"
(cd "$build" && ctest -L quick --output-on-failure -j 2)

if [ $sanitize -eq 1 ]; then
    cf_build "$CF_ROOT/build-asan" -DCF_SANITIZE=ON -DCF_NATIVE=ON
    (cd "$CF_ROOT/build-asan" && ASAN_OPTIONS=detect_leaks=1 ctest -L quick --output-on-failure -j 2)
fi
if [ $valgrind -eq 1 ]; then
    # valgrind 3.19 does not decode AVX-512: a portable build for it.
    cf_build "$CF_ROOT/build-valgrind" -DCF_NATIVE=OFF
    (cd "$CF_ROOT/build-valgrind" && ctest -L memcheck --output-on-failure -j 2)
fi
