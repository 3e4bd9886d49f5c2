#!/usr/bin/env bash
# tests/fuzz/run.sh: the fuzzing smoke run. Installs what it needs (clang, its libFuzzer and
# sanitizer runtimes, libomp; apt-get only for what is missing), configures the clang build
# build-fuzz/ with -DCF_FUZZ=ON, builds the harnesses, writes the seed corpus, replays the kept
# regression inputs, and fuzzes every harness for N seconds (default 6).
#   --seconds N   seconds per harness
# Exit status: 0 when nothing crashed, leaked, hung or tripped a sanitizer; the logs are in
# build-fuzz/tests/fuzz/logs/ and any crashing input in build-fuzz/tests/fuzz/artifacts/.
set -euo pipefail
CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$CF_ROOT/cmake/deps.sh"

seconds=6
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds)
        [ $# -ge 2 ] || { echo "tests/fuzz/run.sh: --seconds needs a value" >&2; exit 2; }
        seconds=$2
        shift 2
        ;;
    *) echo "tests/fuzz/run.sh: unknown option '$1' (--seconds N)" >&2; exit 2 ;;
    esac
done
case "$seconds" in
'' | *[!0-9]*)
    echo "tests/fuzz/run.sh: --seconds expects a whole number, got '$seconds'" >&2
    exit 2
    ;;
esac

# clang brings libFuzzer and the sanitizers (libclang-rt-*-dev); libomp-dev is clang's OpenMP.
cf_install_deps clang libclang-rt-dev libomp-dev

build="$CF_ROOT/build-fuzz"
CC=clang cmake -S "$CF_ROOT" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCF_FUZZ=ON \
    -DCF_BUILD_TESTS=OFF -DCF_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_all fuzz_make_corpus fuzz_replay

fuzz="$build/tests/fuzz"
logs="$fuzz/logs"
mkdir -p "$logs" "$fuzz/tmp"
# Scratch files of the harnesses go inside the build folder, so a crash leaves nothing in /tmp.
export TMPDIR="$fuzz/tmp"
# The sanitizer options of each harness are set by its CTest test (tests/fuzz/CMakeLists.txt).
cd "$build"
status=0
if ctest --no-tests=error -V -R '^fuzz_(corpus|replay)$' >"$logs/replay.log" 2>&1; then
    echo "fuzz_replay: ok (regressions and seeds)"
else
    cat "$logs/replay.log"
    status=1
fi
for h in idx cifar10 png checkpoint cli; do
    if ctest --no-tests=error -V -R "^fuzz_$h\$" >"$logs/$h.log" 2>&1; then
        # Executions and their rate: libFuzzer's final stats, or the last status line of fork mode.
        runs=$(grep -oE 'number_of_executed_units: *[0-9]+' "$logs/$h.log" | grep -oE '[0-9]+$' |
            tail -1 || true)
        rate=$(grep -oE 'average_exec_per_sec: *[0-9]+' "$logs/$h.log" | grep -oE '[0-9]+$' |
            tail -1 || true)
        if [ -z "$runs" ]; then
            last=$(grep -E '^[0-9]+: #[0-9]+: cov:' "$logs/$h.log" | tail -1 || true)
            runs=$(printf '%s\n' "$last" | grep -oE '#[0-9]+' | tr -d '#' || true)
            rate=$(printf '%s\n' "$last" | grep -oE 'exec/s [0-9]+' | grep -oE '[0-9]+' || true)
        fi
        aside=$(grep -oE '[0-9]+ input\(s\) failing inside HDF5 set aside' "$logs/$h.log" |
            tail -1 || true)
        echo "fuzz_$h: ok, ${seconds} s, ${runs:-?} inputs, ${rate:-?} exec/s${aside:+, $aside}"
    else
        echo "fuzz_$h: FAILED (log: $logs/$h.log)"
        grep -E 'FINDING|ERROR|SUMMARY|cf_fuzz:|Test unit written|deadly signal' "$logs/$h.log" |
            head -20 || true
        status=1
    fi
done
rmdir "$fuzz/tmp" 2>/dev/null || true
[ $status -eq 0 ] && echo "fuzz smoke: every harness ran clean" || echo "fuzz smoke: failures above"
exit $status
