#!/usr/bin/env bash
# tests/run.sh: installs what the tests need (Debian packages, idempotent), builds cincflow and
# runs the default test suite (CTest label "quick", in build/). Options:
#   --sanitize   also build with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/) and
#                run the quick suite there
#   --valgrind   also run every Check runner under valgrind memcheck (CTest label "memcheck", in
#                build-valgrind/, a portable build: valgrind 3.19 does not decode AVX-512)
#   --all        both
#   --ci         what CI runs (.ci/run): the quick suite, then --sanitize, --valgrind and the
#                fuzz smoke (tests/fuzz/run.sh --seconds 6); every part runs even when an
#                earlier one failed, and a summary with each part's time closes the output
# Exit status: 0 when every test passed.
set -euo pipefail
CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$CF_ROOT/cmake/deps.sh"

sanitize=0 valgrind=0 ci=0
for arg in "$@"; do
    case "$arg" in
    --sanitize) sanitize=1 ;;
    --valgrind) valgrind=1 ;;
    --all) sanitize=1 valgrind=1 ;;
    --ci) sanitize=1 valgrind=1 ci=1 ;;
    *)
        echo "tests/run.sh: unknown option '$arg' (--sanitize, --valgrind, --all, --ci)" >&2
        exit 2
        ;;
    esac
done

extra=(python3-numpy python3-h5py)
[ $valgrind -eq 1 ] && extra+=(valgrind)
cf_install_deps "${extra[@]}"

# phase NAME COMMAND...: runs one part, timed. Outside --ci the first failure ends the script
# (set -e); with --ci every part runs and the summary says which failed.
summary=() failed=0
phase() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "== $name"
    if [ $ci -eq 1 ]; then
        "$@" || rc=$?
    else
        "$@"
    fi
    local took=$((SECONDS - start))
    local result=passed
    [ $rc -eq 0 ] || result=FAILED failed=1
    summary+=("$(printf '%-10s %-7s %dm%02ds' "$name" $result $((took / 60)) $((took % 60)))")
}

quick() {
    cf_build "$CF_ROOT/build" && (cd "$CF_ROOT/build" && ctest -L quick --output-on-failure -j 2)
}
sanitized() {
    cf_build "$CF_ROOT/build-asan" -DCF_SANITIZE=ON -DCF_NATIVE=ON &&
        (cd "$CF_ROOT/build-asan" &&
             ASAN_OPTIONS=detect_leaks=1 ctest -L quick --output-on-failure -j 2)
}
memcheck() {
    # valgrind 3.19 does not decode AVX-512: a portable build for it.
    cf_build "$CF_ROOT/build-valgrind" -DCF_NATIVE=OFF &&
        (cd "$CF_ROOT/build-valgrind" && ctest -L memcheck --output-on-failure -j 2)
}

phase quick quick
[ $sanitize -eq 1 ] && phase sanitize sanitized
[ $valgrind -eq 1 ] && phase memcheck memcheck
# The fuzz smoke (tests/fuzz/run.sh: a clang build of the libFuzzer harnesses, the kept inputs
# replayed, then each harness fuzzed for 6 s), in --ci only.
[ $ci -eq 1 ] && phase fuzz bash "$CF_ROOT/tests/fuzz/run.sh" --seconds 6

if [ ${#summary[@]} -gt 1 ]; then
    echo "== summary"
    printf '%s\n' "${summary[@]}"
fi
exit $failed
