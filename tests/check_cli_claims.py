#!/usr/bin/env python3
"""check_cli_claims.py MODE ARGS...: README's claims about the command-line tool and the
examples, each run for real on tiny inputs.

  recompute_auto CINCFLOW  `--recompute auto` turns recomputation on exactly when the tool's
                           activation estimate for one pass passes 4 GB: the same model with
                           passes of 1024 images (about 2 GB) keeps the plain tape, with 2048
                           (about 4.2 GB) recomputes; `on` and `off` override it. The run is
                           stopped as soon as the tool says how it trains (before any step).
  max_skips CINCFLOW       a learning rate of 10 without clipping makes every step after the
                           first non-finite: `--max-skips 3` and `--max-skips 5` stop training
                           after 3 and 5 skipped steps in a row, exit status 1, and the
                           checkpoint stays the one of the last good step.
  length CINCFLOW          `--epochs 1` and `--epochs 2` of 64 images in batches of 16 train 4
                           and 8 steps; `--steps 3 --epochs 5` stops at 3 (whichever comes
                           first); `--minutes 0.02` stops after 1.2 s of training with steps done.
  examples CUSTOM_OP CUSTOM_FLOW
                           examples/custom_op.c (a user op: gradcheck, then fitting its
                           parameter) and examples/custom_flow.c (a user flow trained for 30
                           steps) run and report success.
  bench CINCFLOW           every `cincflow bench` subcommand runs on one small case with one
                           repeat and prints a JSON record with a positive time.

Needs h5py for max_skips (exit 77, skipped, without it); the other modes need only Python.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

TIMEOUT = 240
TINY = ["--levels", "1", "--depth", "2", "--width", "16", "--init-images", "16",
        "--threads", "1", "--print-every", "1000"]


def env():
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return e


def run(cmd, expect=0):
    p = subprocess.run(cmd, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    if expect is not None and p.returncode != expect:
        print(" ".join(cmd))
        print(p.stdout)
        raise SystemExit(f"exit status {p.returncode}, expected {expect}")
    return p.stdout


def fail(msg, out=""):
    if out:
        print(out)
    print("FAILED:", msg)
    return 1


def training_line(cmd):
    """The tool's 'training ...' line; the process is killed once it has printed it."""
    p = subprocess.Popen(cmd, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("training "):
                return line.strip()
        return None
    finally:
        p.kill()
        p.wait()
        if not seen or not seen[-1].startswith("training "):
            print("".join(seen))


def recompute_auto(cincflow):
    # L=1 K=4 width 64 on 32x32x3: the estimate is 2.06 MB an image, 4e9 bytes at 1942.
    with tempfile.TemporaryDirectory():
        base = [cincflow, "train", "--data", "synthetic:32x32x3:2048", "--levels", "1",
                "--depth", "4", "--width", "64", "--batch", "2048", "--init-images", "2",
                "--steps", "1", "--threads", "1"]
        cases = [("auto", 1024, False), ("auto", 2048, True), ("off", 2048, False),
                 ("on", 1024, True)]
        for mode, micro, want in cases:
            line = training_line(base + ["--recompute", mode, "--micro-batch", str(micro)])
            if line is None:
                return fail(f"--recompute {mode} --micro-batch {micro}: no 'training' line")
            got = "recomputing steps in backward" in line
            print(f"--recompute {mode}, passes of {micro}: {'recomputes' if got else 'plain tape'}")
            if got != want:
                return fail(f"--recompute {mode} with passes of {micro} images should "
                            f"{'' if want else 'not '}recompute: {line}")
    return 0


def max_skips(cincflow):
    try:
        import h5py
    except ImportError:
        print("h5py is needed (python3-h5py): skipped")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        for n in (3, 5):
            ckpt, log = os.path.join(tmp, f"m{n}.h5"), os.path.join(tmp, f"m{n}.csv")
            out = run([cincflow, "train", "--data", "synthetic:8x8x1:64", *TINY, "--batch", "16",
                       "--lr", "10", "--warmup", "0", "--clip", "0", "--max-skips", str(n),
                       "--steps", "200", "--checkpoint", ckpt, "--checkpoint-every", "1",
                       "--log", log], expect=1)
            if f"stopped after {n} non-finite steps in a row" not in out:
                return fail(f"--max-skips {n}: no stop message", out)
            if f"({n} skipped)" not in out:
                return fail(f"--max-skips {n}: the summary does not count {n} skipped", out)
            with open(log) as f:
                good = len(f.readlines()) - 1
            with h5py.File(ckpt, "r") as f:
                step = int(f.attrs["step"])
            print(f"--max-skips {n}: stopped with status 1 after {good} good step(s) and {n} "
                  f"skipped; the checkpoint is at step {step}")
            if good < 1 or step != good:
                return fail(f"the checkpoint is at step {step}, the last good step is {good}")
    return 0


def trained_steps(out):
    for line in out.splitlines():
        if line.startswith("trained "):
            return int(line.split()[1])
    return None


def length(cincflow):
    base = [cincflow, "train", "--data", "synthetic:8x8x1:64", *TINY, "--batch", "16"]
    for args, want in ((["--epochs", "1"], 4), (["--epochs", "2"], 8),
                       (["--steps", "3", "--epochs", "5"], 3)):
        got = trained_steps(run(base + args))
        print(f"{' '.join(args)}: {got} steps")
        if got != want:
            return fail(f"{' '.join(args)} trained {got} steps, expected {want}")
    start = time.monotonic()
    out = run(base + ["--minutes", "0.02"])
    took = time.monotonic() - start
    got = trained_steps(out)
    print(f"--minutes 0.02: {got} steps in {took:.2f} s")
    if got is None or got < 2:
        return fail("--minutes 0.02 trained no steps", out)
    if not 1.2 <= took <= 60:
        return fail(f"--minutes 0.02 (1.2 s of training) took {took:.2f} s", out)
    return 0


def examples(custom_op, custom_flow):
    out = run([custom_op])
    if "gradcheck swish: passed" not in out or "training beta" not in out:
        return fail("custom_op did not report its gradcheck and training", out)
    out = run([custom_flow])
    if "bits/dim" not in out.splitlines()[-1]:
        return fail("custom_flow did not report its training", out)
    print(out.splitlines()[-1])
    return 0


def bench(cincflow):
    cases = {"conv": "fashion_l2_3x3_128to16_fwd$", "inverse": "cinc_inverse_4x4x48_b100$",
             "train": "train_fashion_b64$", "sample": "sample_fashion_n100$"}
    for sub, name in cases.items():
        out = run([cincflow, "bench", sub, "--json", "--repeats", "1", "--threads", "1",
                   "--filter", name])
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        mine = [r for r in records if r.get("name") == name.rstrip("$")]
        if len(mine) != 1 or not mine[0].get("median_s", 0) > 0:
            return fail(f"cincflow bench {sub} --filter {name}: no record with a time", out)
        print(f"bench {sub}: {mine[0]['name']} median {mine[0]['median_s']:.4g} s")
    return 0


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    modes = {"recompute_auto": recompute_auto, "max_skips": max_skips, "length": length,
             "examples": examples, "bench": bench}
    return modes[mode](*args)


if __name__ == "__main__":
    sys.exit(main())
