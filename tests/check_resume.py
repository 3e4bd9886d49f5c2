#!/usr/bin/env python3
"""check_resume.py CINCFLOW: a run of 2N steps and a run of N steps, saved, then resumed for N
more, must end with bit-identical parameters, optimizer moments and state.

Trains a small CInC flow on seeded synthetic images with the `cincflow` binary given, reads both
final checkpoints with h5py and compares every dataset exactly. Exit 77 (skipped) without h5py.
"""
import os
import subprocess
import sys
import tempfile

try:
    import h5py
    import numpy as np
except ImportError:
    print("h5py and numpy are needed (python3-h5py, python3-numpy): skipped")
    sys.exit(77)


def train(cincflow, out, steps, resume=None):
    args = [cincflow, "train", "--data", "synthetic:8x8x1:96", "--levels", "2", "--depth", "2",
            "--width", "8", "--batch", "16", "--warmup", "4", "--init-images", "32",
            "--steps", str(steps), "--seed", "5", "--checkpoint", out,
            "--checkpoint-every", "3", "--print-every", "1000"]
    if resume:
        args += ["--resume", resume]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        found["@step"] = f.attrs["step"]
        found["@optimizer.step"] = f["optimizer"].attrs["step"]
    return found


def main():
    cincflow = sys.argv[1]
    n = 7  # the batcher runs 6 batches an epoch: the second half crosses an epoch
    with tempfile.TemporaryDirectory() as tmp:
        whole, half = os.path.join(tmp, "whole.h5"), os.path.join(tmp, "half.h5")
        train(cincflow, whole, 2 * n)
        train(cincflow, half, n)
        train(cincflow, half, 2 * n, resume=half)
        a, b = datasets(whole), datasets(half)
        if sorted(a) != sorted(b):
            print("the checkpoints hold different tensors:", sorted(set(a) ^ set(b)))
            return 1
        bad = [k for k in a if not np.array_equal(a[k], b[k])]
        if bad:
            for k in bad[:5]:
                d = np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))
                print(f"{k}: differs by up to {d:.3g}")
            print(f"{len(bad)} of {len(a)} entries differ after resuming")
            return 1
        params = sum(1 for k in a if k.startswith("params/"))
        print(f"resume: {params} parameters, moments and state bit-identical after {2 * n} steps "
              f"({n} + {n} with a resume)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
