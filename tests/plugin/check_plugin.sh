#!/usr/bin/env bash
# check_plugin.sh BUILD_DIR: the plugin example end to end, as a user would run it.
#
# Installs the build into a temporary prefix, builds examples/custom_layer.c as a plugin with its
# own CMake project against that prefix (find_package(cincflow)), then with the installed tool:
# gradcheck of the plugin's op, the plugin's kind listed with its provider, training an
# architecture that uses the kind (--plugin --arch), sampling and evaluating the checkpoint in
# new processes (each rebuilds the flow with cf_flow_load), and the refusals: the checkpoint
# without the plugin (naming the kind and the plugin), a library that is no plugin, a missing
# file. CF_CONSUMER_FLAGS: extra compiler flags for the plugin (a sanitizer build's).
set -euo pipefail
build=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
prefix=$(mktemp -d /tmp/cf_plugin.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
cmake --install "$build" --prefix "$prefix" >/dev/null
flags=${CF_CONSUMER_FLAGS:-}
cmake -S "$root/examples/custom_layer" -B "$prefix/plugin" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$prefix/plugin" >/dev/null
plugin="$prefix/plugin/libcf_prelu.so"
[ -f "$plugin" ] || fail "the plugin project built no $plugin"
cincflow="$prefix/bin/cincflow"
export LD_LIBRARY_PATH="$prefix/lib:$prefix/lib64:${LD_LIBRARY_PATH:-}"
cd "$prefix"

"$cincflow" gradcheck --plugin "$plugin" --op prelu_flow >gc.txt || fail "gradcheck: $(cat gc.txt)"
grep -q "^1 passed, 0 failed" gc.txt || fail "gradcheck: $(cat gc.txt)"
"$cincflow" kinds --plugin "$plugin" >kinds.txt
grep -Eq '^prelu +cf_prelu ' kinds.txt || fail "kinds: no prelu: $(cat kinds.txt)"
grep -Eq '^prior +cincflow ' kinds.txt || fail "kinds: the built-in prior not the library's: $(cat kinds.txt)"
"$cincflow" check --plugin "$plugin" --kind prelu >check.txt || fail "check --kind prelu: $(cat check.txt)"
grep -Eq '^PASS prelu ' check.txt && grep -q '^1 passed, 0 failed' check.txt || fail "check: $(cat check.txt)"
# Loading the same plugin twice is harmless.
"$cincflow" kinds --plugin "$plugin" --plugin "$plugin" >/dev/null || fail "the plugin twice"

cat >arch.json <<'JSON'
{"input": [8, 8, 1],
 "layers": [
  {"name": "sq", "kind": "squeeze"},
  {"name": "s0.norm", "kind": "actnorm"},
  {"name": "s0.prelu", "kind": "prelu", "hparams": {"slope": 0.8}},
  {"name": "s0.conv", "kind": "cinc_conv"},
  {"name": "s0.coupling", "kind": "affine_coupling", "hparams": {"hidden": 8}},
  {"name": "s1.prelu", "kind": "prelu"},
  {"name": "prior", "kind": "prior"}]}
JSON
"$cincflow" check --plugin "$plugin" --arch arch.json >check.txt || fail "check --arch: $(cat check.txt)"
grep -q '^7 passed, 0 failed' check.txt || fail "check --arch: $(cat check.txt)"
data=synthetic:8x8x1:64
"$cincflow" train --plugin "$plugin" --data $data --arch arch.json --steps 5 --batch 16 \
    --init-images 32 --threads 1 --checkpoint m.h5 >train.txt || fail "train: $(cat train.txt)"
grep -q '^checkpoint: m.h5 (step 5)' train.txt || fail "train: $(cat train.txt)"
"$cincflow" sample --plugin "$plugin" --checkpoint m.h5 -n 4 --temperature 0.7 --out s.png \
    >/dev/null || fail "sample"
[ -s s.png ] || fail "sample wrote nothing"
"$cincflow" eval --plugin "$plugin" --checkpoint m.h5 --data $data --split train \
    --dequant midpoint >eval.txt || fail "eval"
grep -Eq '^train bpd: [0-9]+\.[0-9]+$' eval.txt || fail "eval: $(cat eval.txt)"
"$cincflow" arch --plugin "$plugin" --checkpoint m.h5 | grep -q '"provider":[[:space:]]*"cf_prelu"' ||
    fail "the checkpoint does not name the plugin"

rc=0
"$cincflow" eval --checkpoint m.h5 --data $data 2>err.txt >/dev/null || rc=$?
[ $rc -eq 1 ] || fail "eval without the plugin exited $rc"
grep -q "layer 's0.prelu' has kind 'prelu', which is not registered; the architecture says 'cf_prelu' provides it" err.txt ||
    fail "eval without the plugin: $(cat err.txt)"
rc=0
"$cincflow" kinds --plugin "$(find /usr/lib /lib -name 'libz.so.1' | head -n 1)" 2>err.txt || rc=$?
[ $rc -eq 1 ] && grep -q "not a cincflow plugin" err.txt || fail "a library that is no plugin: $(cat err.txt)"
rc=0
"$cincflow" kinds --plugin ./missing.so 2>err.txt || rc=$?
[ $rc -eq 1 ] && grep -q "plugin ./missing.so: cannot load it" err.txt || fail "a missing plugin: $(cat err.txt)"
echo "check_plugin: all passed"
