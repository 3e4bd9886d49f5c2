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
# Every ctest run fails when its label has no tests (--no-tests=error). Tests that report
# themselves skipped (exit 77) are listed by name at the end; with CI=true (and in --ci) a skip
# fails the run, except for the tests in CF_CI_MAY_SKIP (space-separated names; default
# train_full_disk, which needs the right to mount a tmpfs that a CI container may not have).
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

[ $ci -eq 1 ] && export CI=true
CF_CI_MAY_SKIP=${CF_CI_MAY_SKIP-train_full_disk}

# What the tests use beyond the build: numpy and h5py (the Python checks), Debian's
# Fashion-MNIST (dataset_fashion_mnist).
extra=(python3-numpy python3-h5py dataset-fashion-mnist)
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

# run_ctest DIR LABEL [ctest options...]: ctest -L LABEL in DIR; fails when the label has no
# tests; adds the tests that skipped themselves to `skipped` (as "DIR: name") and, under
# CI=true, fails when one of them is not in CF_CI_MAY_SKIP.
skipped=()
run_ctest() {
    local dir=$1 label=$2 rc=0 log
    shift 2
    log=$(mktemp)
    (cd "$dir" && ctest -L "$label" --no-tests=error --output-on-failure -j 2 "$@") 2>&1 |
        tee "$log" || rc=$?
    # ctest closes with "The following tests did not run:" then "  N - name (Skipped)" lines.
    local name bad=0
    while read -r name; do
        skipped+=("$(basename "$dir"): $name")
        if [ "${CI:-}" = true ] && [[ " $CF_CI_MAY_SKIP " != *" $name "* ]]; then
            echo "run.sh: $name was skipped, and CI=true requires it to run" >&2
            bad=1
        fi
    done < <(sed -n 's/^[[:space:]]*[0-9]* - \(.*\) (Skipped)$/\1/p' "$log")
    rm -f "$log"
    [ $rc -eq 0 ] && [ $bad -eq 0 ]
}

quick() {
    cf_build "$CF_ROOT/build" && run_ctest "$CF_ROOT/build" quick
}
sanitized() {
    cf_build "$CF_ROOT/build-asan" -DCF_SANITIZE=ON -DCF_NATIVE=ON &&
        ASAN_OPTIONS=detect_leaks=1 run_ctest "$CF_ROOT/build-asan" quick
}
memcheck() {
    # valgrind 3.19 does not decode AVX-512: a portable build for it.
    cf_build "$CF_ROOT/build-valgrind" -DCF_NATIVE=OFF && run_ctest "$CF_ROOT/build-valgrind" memcheck
}

phase quick quick
[ $sanitize -eq 1 ] && phase sanitize sanitized
[ $valgrind -eq 1 ] && phase memcheck memcheck
# The fuzz smoke (tests/fuzz/run.sh: a clang build of the libFuzzer harnesses, the kept inputs
# replayed, then each harness fuzzed for 6 s), in --ci only.
[ $ci -eq 1 ] && phase fuzz bash "$CF_ROOT/tests/fuzz/run.sh" --seconds 6

if [ ${#summary[@]} -gt 1 ] || [ ${#skipped[@]} -gt 0 ]; then
    echo "== summary"
    printf '%s\n' "${summary[@]}"
fi
if [ ${#skipped[@]} -gt 0 ]; then
    echo "skipped (${#skipped[@]}):"
    printf '  %s\n' "${skipped[@]}"
fi
exit $failed
