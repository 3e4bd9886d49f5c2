#!/usr/bin/env bash
# examples/run.sh: the main job. Installs what it needs (Debian packages, idempotent), builds
# cincflow, trains the default CInC flow (L=2, K=8, width 128, quad coupling) on Fashion-MNIST
# for a few minutes on every core, evaluates its test bits/dim on the full test set, and writes
# a checkpoint, a training log and a grid of samples into build/run/.
#   CF_MINUTES=10 bash examples/run.sh     trains longer (default 5 minutes)
# Extra arguments go to `cincflow train` (e.g. --steps 1500 instead of the time budget).
set -euo pipefail
CF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$CF_ROOT/cmake/deps.sh"
cf_install_deps dataset-fashion-mnist
cf_build "$CF_ROOT/build"

cincflow="$CF_ROOT/build/examples/cincflow"
out="$CF_ROOT/build/run"
mkdir -p "$out"
budget=(--minutes "${CF_MINUTES:-5}")
for arg in "$@"; do
    case "$arg" in --steps | --epochs | --minutes) budget=() ;; esac
done
"$cincflow" train --data fashion-mnist "${budget[@]}" --checkpoint "$out/fashion.h5" \
    --log "$out/train.csv" --eval-every 500 --eval-limit 2000 "$@"
"$cincflow" eval --checkpoint "$out/fashion.h5" --split test
"$cincflow" sample --checkpoint "$out/fashion.h5" -n 64 --temperature 0.7 --out "$out/samples.png"
echo "checkpoint: $out/fashion.h5"
echo "training log: $out/train.csv"
echo "samples: $out/samples.png"
