#!/usr/bin/env bash
# tests/fuzz/fuzz_one.sh: runs one libFuzzer harness for CTest (the fuzz_<harness> tests).
#   fuzz_one.sh BINARY HARNESS ARTIFACT_DIR [libFuzzer flags and corpus folders...]
# Every harness stops at its first crash, leak, hang, out-of-memory or sanitizer report, and the
# test fails. Except the checkpoint harness: HDF5 1.10.8 (Debian 12) itself crashes, hangs and
# runs out of memory on some damaged files (see hdf5-known/README), which the loader cannot
# prevent, so it runs in fork mode, going on past each of them, and every input it saved is
# replayed afterwards: one whose report places the fault (the first frame outside the
# sanitizers, libFuzzer and libc) inside libhdf5 is set aside in ARTIFACT_DIR/hdf5/ and
# counted; any other fails the test.
set -uo pipefail
binary=$1 harness=$2 artifacts=$3
shift 3
mkdir -p "$artifacts"
if [ "$harness" != checkpoint ]; then
    exec "$binary" "$@"
fi

limits=() # the run's limits, for the replays
for arg in "$@"; do
    case "$arg" in -timeout=* | -rss_limit_mb=* | -malloc_limit_mb=*) limits+=("$arg") ;; esac
done
stamp=$(mktemp "$artifacts/.start.XXXXXX")
"$binary" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 "$@"
status=$?
known=0 findings=0
for a in "$artifacts/$harness"-*; do
    [ -f "$a" ] && [ "$a" -nt "$stamp" ] || continue
    report=$("$binary" -runs=1 "${limits[@]}" "$a" 2>&1)
    # The first stack frame of the report that is not the sanitizers', libFuzzer's or libc's.
    runtime='__interceptor_|__asan|__sanitizer|__lsan|fuzzer::|libc\.so|sysdeps/|string/'
    runtime+='| in (malloc|calloc|realloc|free) '
    frame=$(printf '%s\n' "$report" | grep -E '^ +#[0-9]+ ' | grep -vE "$runtime" | head -1)
    if printf '%s\n' "$frame" | grep -q 'libhdf5'; then
        mkdir -p "$artifacts/hdf5"
        mv "$a" "$artifacts/hdf5/"
        known=$((known + 1))
        echo "fuzz_one.sh: inside HDF5, set aside: $artifacts/hdf5/$(basename "$a")"
        printf '%s\n' "$report" | grep -m1 -E 'ERROR:|SUMMARY:' || true
        echo "    at$frame"
    else
        echo "fuzz_one.sh: FINDING: $a"
        printf '%s\n' "$report" | tail -60
        findings=$((findings + 1))
        status=1
    fi
done
rm -f "$stamp"
echo "fuzz_one.sh: $known input(s) failing inside HDF5 set aside"
# In fork mode libFuzzer exits non-zero after any input it went past (71 after an
# out-of-memory): when every such input was one of HDF5's own faults, the run passed.
if [ "$status" -ne 0 ] && [ $findings -eq 0 ] && [ $known -gt 0 ]; then
    status=0
fi
exit $status
