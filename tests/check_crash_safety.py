#!/usr/bin/env python3
"""check_crash_safety.py CINCFLOW kill|signals: what `cincflow train` leaves on disk when it is
stopped.

kill [--kills N] [--seed S]
    Trains a flow that is cheap to run but whose checkpoint is several MB (one level, one step,
    coupling width 512 on 2x2 images: 0.85M parameters, a 10 MB file with the Adam moments),
    writing a checkpoint after every step, and SIGKILLs it N times (default 30) at seeded random
    moments: half at a random delay after the start, half as soon as (or a few ms after) the
    temporary "<path>.tmp.<pid>" appears, so that many kills land while a checkpoint is being
    written or flushed. After each kill the checkpoint must read with h5py (format, every
    dataset finite, optimizer step equal to the file's step), load in `cincflow eval`, and be
    the previous one or a newer one: its step never goes back, and two files of the same step
    hold the same bytes in every dataset (training resumes exactly). Each run after the first
    resumes from the checkpoint (--resume); a last run trains on to the end and must exit 0.
    At least a few kills must have landed mid-write (their temporary was left behind; the
    test removes those, as nothing else does).

signals
    SIGINT and SIGTERM, each sent at a random moment during a step: the run must finish the
    step, write the checkpoint of that step (--checkpoint-every is far away, so the file comes
    from the interrupt), print "interrupted: stopped after step N", exit with status 130, and
    the checkpoint must hold step N and resume.

Exit 77 (skipped) without h5py and numpy.
"""
import glob
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

try:
    import h5py
    import numpy as np
except ImportError:
    print("h5py and numpy are needed (python3-h5py, python3-numpy): skipped")
    sys.exit(77)

DATA = "synthetic:2x2x1:64:3"
MODEL = ["--levels", "1", "--depth", "1", "--width", "512", "--batch", "4",
         "--init-images", "8", "--warmup", "4", "--seed", "11"]


running = []  # trainers to SIGKILL if the test ends early


def fail(msg):
    print("FAIL: " + msg)
    for p in running:
        if p.poll() is None:
            p.kill()
            p.wait()
    sys.exit(1)


def read_checkpoint(path):
    """(step, digest) of a checkpoint read with h5py; fails on anything but a complete file."""
    digest = hashlib.sha256()
    try:
        with h5py.File(path, "r") as f:
            if f.attrs["format"] != "cincflow-checkpoint":
                fail(f"{path}: format {f.attrs['format']!r}")
            step = int(f.attrs["step"])
            if int(f["optimizer"].attrs["step"]) != step:
                fail(f"{path}: optimizer step {int(f['optimizer'].attrs['step'])} != step {step}")
            names = []
            f.visititems(lambda name, obj: names.append(name)
                         if isinstance(obj, h5py.Dataset) else None)
            if not any(n.startswith("params/") for n in names):
                fail(f"{path}: no parameters")
            for name in sorted(names):
                value = f[name][()]
                if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                    fail(f"{path}: {name} holds non-finite values")
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(value).tobytes())
    except OSError as e:
        fail(f"{path}: h5py cannot read it: {e}")
    return step, digest.hexdigest()


def evaluate(cincflow, path):
    r = subprocess.run([cincflow, "eval", "--checkpoint", path, "--limit", "8",
                        "--dequant", "midpoint", "--threads", "1"],
                       capture_output=True, text=True)
    if r.returncode != 0 or "bpd" not in r.stdout:
        fail(f"cincflow eval --checkpoint {path}: status {r.returncode}: {r.stdout}{r.stderr}")


def train_args(cincflow, ckpt, steps, resume):
    args = [cincflow, "train", "--data", DATA, *MODEL, "--steps", str(steps),
            "--checkpoint", ckpt, "--checkpoint-every", "1", "--print-every", "1000000",
            "--threads", "1"]
    if resume:
        args += ["--resume", ckpt]
    return args


def kill_test(cincflow, kills, seed):
    rng = random.Random(seed)
    mid_write = 0
    seen = {}  # step -> digest
    last_step = -1
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "model.h5")
        for k in range(kills):
            resume = os.path.exists(ckpt)
            p = subprocess.Popen(train_args(cincflow, ckpt, 10 ** 9, resume),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[:] = [p]
            tmpfile = f"{ckpt}.tmp.{p.pid}"
            how = "watch" if k % 2 else "delay"
            if how == "delay":
                time.sleep(rng.uniform(0.05, 1.2))
            else:
                # kill when the temporary appears (or a little later): mid-write or mid-fsync
                extra = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.05)
                deadline = time.time() + 20
                while not os.path.exists(tmpfile) and p.poll() is None:
                    if time.time() > deadline:
                        fail("no checkpoint temporary appeared within 20 s")
                    time.sleep(0.0002)
                if extra:
                    time.sleep(extra)
            if p.poll() is not None:
                fail(f"run {k} ended by itself, status {p.returncode}: {p.stderr.read()}")
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stderr.close()
            if os.path.exists(tmpfile):
                mid_write += 1
                os.unlink(tmpfile)
            if not os.path.exists(ckpt):
                if last_step >= 0:
                    fail(f"kill {k}: the checkpoint disappeared")
                continue  # killed before its first checkpoint
            step, digest = read_checkpoint(ckpt)
            if step < last_step:
                fail(f"kill {k}: the checkpoint went back from step {last_step} to {step}")
            if step in seen and seen[step] != digest:
                fail(f"kill {k}: two checkpoints of step {step} differ")
            seen[step] = digest
            evaluate(cincflow, ckpt)
            last_step = step
        leftovers = glob.glob(ckpt + ".tmp.*")
        if leftovers:
            fail(f"unexpected temporaries: {leftovers}")
        if last_step < 1:
            fail("no checkpoint was ever written")
        # The last run trains on to the end.
        final = last_step + 3
        r = subprocess.run(train_args(cincflow, ckpt, final, True), capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"the resumed run ended with status {r.returncode}: {r.stderr}")
        step, _ = read_checkpoint(ckpt)
        if step != final:
            fail(f"the resumed run's checkpoint holds step {step}, expected {final}")
        evaluate(cincflow, ckpt)
    print(f"{kills} SIGKILLs ({mid_write} during a checkpoint write): checkpoints of {len(seen)} "
          f"steps up to {last_step}, each complete and never older than the one before; resumed "
          f"to step {final}; {time.time() - t0:.1f} s")
    if mid_write < 3:
        fail(f"only {mid_write} kills landed during a checkpoint write: the test proves little")


def signal_test(cincflow, seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        for sig in (signal.SIGINT, signal.SIGTERM):
            ckpt = os.path.join(tmp, f"{sig.name}.h5")
            args = train_args(cincflow, ckpt, 10 ** 9, False)
            args[args.index("--checkpoint-every") + 1] = "1000000"
            args[args.index("--print-every") + 1] = "1"
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[:] = [p]
            out = []
            for line in p.stdout:
                out.append(line)
                if line.startswith("step 3 "):
                    break
            else:
                fail(f"{sig.name}: the run ended before step 3: {''.join(out)}{p.stderr.read()}")
            time.sleep(rng.uniform(0.0, 0.06))  # somewhere in a later step
            p.send_signal(sig)
            try:
                rest, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                fail(f"{sig.name}: still running 120 s after the signal")
            out = "".join(out) + rest
            if p.returncode != 130:
                fail(f"{sig.name}: status {p.returncode}, expected 130: {out}{err}")
            m = re.search(r"interrupted: stopped after step (\d+)", out)
            if not m:
                fail(f"{sig.name}: no 'interrupted: stopped after step N' line: {out}")
            n = int(m.group(1))
            if f"checkpoint: {ckpt} (step {n})" not in out:
                fail(f"{sig.name}: no checkpoint line for step {n}: {out}")
            if glob.glob(ckpt + ".tmp.*"):
                fail(f"{sig.name}: a temporary was left behind")
            step, _ = read_checkpoint(ckpt)
            if step != n or n < 3:
                fail(f"{sig.name}: the checkpoint holds step {step}, the run stopped after {n}")
            r = subprocess.run(train_args(cincflow, ckpt, n + 2, True), capture_output=True,
                               text=True)
            if r.returncode != 0 or read_checkpoint(ckpt)[0] != n + 2:
                fail(f"{sig.name}: resuming failed, status {r.returncode}: {r.stderr}")
            print(f"{sig.name}: finished step {n}, wrote its checkpoint, exited 130; resumed")


def main():
    if len(sys.argv) < 3 or sys.argv[2] not in ("kill", "signals"):
        print(__doc__)
        return 2
    cincflow, mode = sys.argv[1], sys.argv[2]
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    seed = int(opts.get("--seed", 1))
    if mode == "kill":
        kill_test(cincflow, int(opts.get("--kills", 30)), seed)
    else:
        signal_test(cincflow, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
