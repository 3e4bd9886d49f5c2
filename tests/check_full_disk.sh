#!/usr/bin/env bash
# check_full_disk.sh CINCFLOW: `cincflow train` on a full disk keeps the last good checkpoint.
#
# Mounts a small tmpfs (needs root, or CAP_SYS_ADMIN; otherwise the test reports itself skipped
# with exit status 77), trains a small flow into a checkpoint there, then fills the file system
# with a filler file and trains on:
#   1. resumed, checkpoint after every step, no byte free: the first save fails;
#   2. resumed, only the final save, half a checkpoint free: the write fails part-way;
#   3. a fresh run to a new file on the full disk.
# Each must exit with status 1 and one message naming the checkpoint and the cause ("No space
# left on device"); the good checkpoint must still be byte-for-byte what it was and evaluate to
# the same bits/dim; no "<path>.tmp.*" may be left and case 3 must create no file. The tmpfs is
# unmounted on exit, whatever happens.
set -uo pipefail
cincflow=${1:?usage: check_full_disk.sh CINCFLOW}

work=$(mktemp -d /tmp/cf_full_disk.XXXXXX)
disk="$work/disk"
mkdir "$disk"
cleanup() {
    mountpoint -q "$disk" && umount "$disk"
    rm -rf "$work"
}
trap cleanup EXIT

if ! mount -t tmpfs -o size=8m,mode=0700 cf_full_disk "$disk" 2>"$work/mount.err"; then
    echo "cannot mount a tmpfs ($(cat "$work/mount.err")): skipped"
    exit 77
fi

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

ckpt="$disk/model.h5"
train=("$cincflow" train --data synthetic:2x2x1:64:3 --levels 1 --depth 1 --width 256 --batch 4
       --init-images 8 --warmup 4 --seed 3 --threads 1 --print-every 1000000)
evaluate() { # prints the deterministic bits/dim of a checkpoint
    "$cincflow" eval --checkpoint "$1" --limit 8 --dequant midpoint --threads 1
}

if ! "${train[@]}" --steps 4 --checkpoint "$ckpt" >"$work/out" 2>&1; then
    cat "$work/out"
    echo "FAIL: the first checkpoint could not be written"
    exit 1
fi
cp "$ckpt" "$work/good.h5"
good_bpd=$(evaluate "$ckpt") || { echo "FAIL: the good checkpoint does not evaluate"; exit 1; }
echo "good checkpoint: $(stat -c %s "$ckpt") bytes, step 4, $good_bpd"

# Fills the file system but for $1 bytes.
fill() {
    rm -f "$disk/filler"
    local avail
    avail=$(df -B1 --output=avail "$disk" | tail -1)
    fallocate -l $((avail - $1)) "$disk/filler" ||
        dd if=/dev/zero of="$disk/filler" bs=4096 count=$(((avail - $1) / 4096)) status=none
}

# expect_refusal NAME PATH ARGS...: runs train, which must fail on PATH for lack of space.
expect_refusal() {
    local name=$1 path=$2
    shift 2
    "${train[@]}" "$@" >"$work/out" 2>"$work/err"
    local rc=$? msg
    msg=$(grep "cincflow train" "$work/err")
    if [ $rc -ne 1 ]; then
        fail "$name: exit status $rc, expected 1 ($(cat "$work/err"))"
    elif ! grep -qF "$path" <<<"$msg" || ! grep -q "No space left on device" <<<"$msg"; then
        fail "$name: the message does not name $path and the cause: '$msg'"
    else
        echo "$name: refused with status 1: $msg"
    fi
    if compgen -G "$path.tmp.*" >/dev/null; then
        fail "$name: a temporary was left behind: $(ls "$path".tmp.*)"
    fi
}

# The good checkpoint is unchanged: same bytes, loads, same bits/dim.
expect_intact() {
    cmp -s "$ckpt" "$work/good.h5" || fail "$1: the previous checkpoint changed"
    local bpd
    bpd=$(evaluate "$ckpt") || fail "$1: the previous checkpoint no longer loads"
    [ "$bpd" = "$good_bpd" ] || fail "$1: bits/dim changed: $bpd, was $good_bpd"
}

fill 0
expect_refusal "full disk, save after a step" "$ckpt" \
    --resume "$ckpt" --checkpoint "$ckpt" --checkpoint-every 1 --steps 8
expect_intact "full disk, save after a step"

fill $(($(stat -c %s "$ckpt") / 2))
expect_refusal "half a checkpoint free, final save" "$ckpt" \
    --resume "$ckpt" --checkpoint "$ckpt" --checkpoint-every 1000 --steps 6
expect_intact "half a checkpoint free, final save"

fill 0
expect_refusal "full disk, new file" "$disk/new.h5" --checkpoint "$disk/new.h5" --steps 2
[ -e "$disk/new.h5" ] && fail "full disk, new file: $disk/new.h5 was created"

if [ $failures -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
fi
echo "full disk: every save refused with a message naming the file, the last good checkpoint intact"
