#!/usr/bin/env bash
# check_arch_cli.sh CINCFLOW: architectures from the command line, end to end.
#
#   1. `cincflow arch` of a built-in model, then `train --arch` of that file and of a
#      hand-written architecture the model flags cannot make (no split, a width per step, both
#      coupling kinds); each checkpoint then works with eval, sample, info and `arch
#      --checkpoint` (which gives back the trained architecture), and resumes;
#   2. a built-in model trained from flags and the same model trained from its `arch` file end
#      with the same parameters (same seed, same steps);
#   3. bad usage is refused with exit status 2 and a message naming the flag or the layer: --arch
#      with model flags, with --resume, a malformed file, an unknown kind, a shape that does not
#      fit the data.
set -euo pipefail
cincflow=${1:?usage: check_arch_cli.sh CINCFLOW}
work=$(mktemp -d /tmp/cf_arch_cli.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
data=synthetic:8x8x1:128
common=(--data "$data" --batch 16 --init-images 32 --threads 1)
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
expect() { # expect STATUS FRAGMENT COMMAND...: the exit status and a fragment of stderr
    local want=$1 fragment=$2 rc=0
    shift 2
    "$@" >out.txt 2>err.txt || rc=$?
    [ "$rc" -eq "$want" ] || fail "$* exited $rc, expected $want: $(cat err.txt)"
    grep -qF -- "$fragment" err.txt || fail "$*: expected '$fragment' in: $(cat err.txt)"
}

# 1. a built-in model as a file, and a hand-written one
"$cincflow" arch --shape 8x8x1 --levels 2 --depth 1 --width 8 --conv emerging --out builtin.json
grep -q '"kind":[[:space:]]*"emerging_conv"' builtin.json || fail "arch: no emerging_conv layer"
grep -q '"conventions"' builtin.json || fail "arch: no conventions"
cat >custom.json <<'EOF'
{"input": [8, 8, 1],
 "layers": [
  {"name": "sq0", "kind": "squeeze"},
  {"name": "sq1", "kind": "squeeze"},
  {"name": "s0.norm", "kind": "actnorm"},
  {"name": "s0.conv", "kind": "cinc_conv"},
  {"name": "s0.coupling", "kind": "quad_coupling", "hparams": {"hidden": 4}},
  {"name": "s1.norm", "kind": "actnorm"},
  {"name": "s1.conv", "kind": "invconv1x1"},
  {"name": "s1.coupling", "kind": "affine_coupling", "hparams": {"hidden": 12}},
  {"name": "prior", "kind": "prior"}]}
EOF
for a in builtin custom; do
    "$cincflow" train "${common[@]}" --arch $a.json --steps 6 --checkpoint $a.h5 >train.txt ||
        fail "train --arch $a.json"
    grep -q "^checkpoint: $a.h5 (step 6)" train.txt || fail "train --arch $a.json: $(cat train.txt)"
    "$cincflow" eval --checkpoint $a.h5 --data "$data" --split train --limit 32 >eval.txt
    grep -Eq '^train bpd: [0-9]+\.[0-9]+$' eval.txt || fail "eval $a.h5: $(cat eval.txt)"
    "$cincflow" sample --checkpoint $a.h5 -n 4 --temperature 0.7 --out $a.png >/dev/null
    [ -s $a.png ] || fail "sample $a.h5 wrote nothing"
    "$cincflow" info --checkpoint $a.h5 | grep -q '^params: ' || fail "info --checkpoint $a.h5"
    "$cincflow" arch --checkpoint $a.h5 --out $a.back.json
    "$cincflow" train "${common[@]}" --resume $a.h5 --steps 8 --checkpoint $a.h5 >train.txt ||
        fail "resume $a.h5"
    grep -q "^resumed $a.h5 at step 6" train.txt || fail "resume $a.h5: $(cat train.txt)"
done
"$cincflow" check --arch custom.json >check.txt || fail "check --arch custom.json: $(cat check.txt)"
grep -q '^9 passed, 0 failed' check.txt || fail "check --arch: $(cat check.txt)"
grep -q '"name":[[:space:]]*"s1.coupling"' custom.back.json || fail "arch --checkpoint lost a layer"
grep -q '"hidden":[[:space:]]*12' custom.back.json || fail "arch --checkpoint lost a width"

# train's features on an architecture file: threads, micro-batches, recomputation (plain and
# rebuilt inputs), evaluation; each gives the plain run's parameters to rounding
"$cincflow" train "${common[@]}" --arch custom.json --steps 4 --checkpoint plain.h5 >/dev/null
ref=$("$cincflow" eval --checkpoint plain.h5 --data "$data" --split train --dequant midpoint)
for variant in "--recompute on" "--recompute rebuild" "--micro-batch 4" "--threads 2"; do
    "$cincflow" train --data "$data" --batch 16 --init-images 32 $variant --arch custom.json \
        --steps 4 --eval-every 2 --eval-limit 32 --checkpoint v.h5 >train.txt ||
        fail "train --arch with $variant: $(cat train.txt)"
    grep -q "^step 4  test bpd " train.txt || fail "train --arch $variant did not evaluate"
    got=$("$cincflow" eval --checkpoint v.h5 --data "$data" --split train --dequant midpoint)
    awk -v a="${ref##* }" -v b="${got##* }" 'BEGIN { d = a - b; exit !(d < 1e-3 && d > -1e-3) }' ||
        fail "train --arch with $variant: '$got', plain '$ref'"
done
# under MPI (when built with it): 2 ranks x 8 images train as 1 x 16
if command -v mpirun >/dev/null && "$cincflow" train --help | grep -q -- '--batch'; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    # Open MPI's own plugins keep allocations until exit (LeakSanitizer reports them inside
    # libmpi in the sanitizer build, as for the MPI tests); ours are checked everywhere else.
    if ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" mpirun --allow-run-as-root --oversubscribe -np 2 "$cincflow" train --data "$data" \
        --batch 8 --init-images 32 --threads 1 --arch custom.json --steps 4 --checkpoint mpi.h5 \
        >mpi.txt 2>&1; then
        got=$("$cincflow" eval --checkpoint mpi.h5 --data "$data" --split train --dequant midpoint)
        awk -v a="${ref##* }" -v b="${got##* }" 'BEGIN { d = a - b; exit !(d < 1e-3 && d > -1e-3) }' ||
            fail "2 ranks x 8 on --arch: '$got', 1 x 16 '$ref'"
    else
        grep -q "built without MPI" mpi.txt || fail "mpirun train --arch: $(cat mpi.txt)"
    fi
fi

# 2. flags and the same model's arch file train to the same parameters
"$cincflow" arch --shape 8x8x1 --levels 2 --depth 1 --width 8 --out same.json
"$cincflow" train "${common[@]}" --levels 2 --depth 1 --width 8 --steps 4 --checkpoint f.h5 >/dev/null
"$cincflow" train "${common[@]}" --arch same.json --steps 4 --checkpoint a.h5 >/dev/null
fb=$("$cincflow" eval --checkpoint f.h5 --data "$data" --split train --dequant midpoint)
ab=$("$cincflow" eval --checkpoint a.h5 --data "$data" --split train --dequant midpoint)
[ "$fb" = "$ab" ] || fail "flags gave '$fb', the same model's arch file '$ab'"

# 3. refused
expect 2 "--arch gives the model; it cannot go with --depth" \
    "$cincflow" train "${common[@]}" --arch custom.json --depth 2 --steps 1
expect 2 "cannot go with --resume" \
    "$cincflow" train "${common[@]}" --arch custom.json --resume custom.h5 --steps 1
echo '{"input": [8, 8, 1], "layers": [' >broken.json
expect 2 "broken.json: not valid JSON" "$cincflow" train "${common[@]}" --arch broken.json --steps 1
sed 's/"invconv1x1"/"sideways_conv"/' custom.json >unknown.json
expect 2 "layer 's1.conv' has kind 'sideways_conv', which is not registered" \
    "$cincflow" train "${common[@]}" --arch unknown.json --steps 1
sed 's/"hidden": 12/"hidden": 0/' custom.json >zero.json
expect 2 "hyperparameter 'hidden' of layer kind 'affine_coupling' is 0" \
    "$cincflow" train "${common[@]}" --arch zero.json --steps 1
expect 2 "takes 8x8x1 images, but --data synthetic:16x16x1:64 holds 16x16x1" \
    "$cincflow" train --data synthetic:16x16x1:64 --arch custom.json --steps 1
expect 2 "--depth cannot go with --checkpoint" "$cincflow" arch --checkpoint custom.h5 --depth 2
expect 2 "--conv expects one of cinc|1x1|emerging" "$cincflow" arch --conv sideways
echo "check_arch_cli: all passed"
