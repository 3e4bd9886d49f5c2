#!/usr/bin/env python3
"""check_mpi.py MPIEXEC CINCFLOW MODE: data-parallel training over MPI (`mpirun -np 2 cincflow
train`), on seeded synthetic images with a small CInC flow and one thread per process.

  equivalence  2 ranks with batch 32 each and 1 process with batch 64 end, after 20 steps, with
               the same parameters and actnorm state (each tensor within 1e-5 of the other,
               relative, in the L2 norm) and report the same bits/dim at every step (the loss is
               the mean over ranks).
  resume       2 ranks: N steps, checkpoint, then a resume for N more, and 2N steps straight,
               end with bit-identical parameters, optimizer moments and state.
  resume_ranks `--resume` under another number of ranks: 2 ranks x batch 8 for N steps, then
               a resume as 1 process x batch 16 for N more, end as 2N steps straight on 2 ranks
               (each tensor within 1e-5 relative, L2, as in equivalence; the data order and
               the step count carry over); and the other way round, 1 x 16 then 2 x 8.
  rank_dies    a rank killed (SIGKILL) mid-training, and a failure seen by rank 0 alone (its
               checkpoint cannot be written), each end the whole job with a non-zero status
               within a minute instead of leaving the other rank waiting.

Run as root in containers: mpirun gets --allow-run-as-root --oversubscribe, shared-memory
transport without the single-copy mechanism (ptrace is often not allowed there). Exit 77
(skipped) without h5py and numpy.
"""
import os
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

MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader",
             "--mca", "btl_vader_single_copy_mechanism", "none"]
MODEL = ["--data", "synthetic:8x8x1", "--levels", "1", "--depth", "2", "--width", "16",
         "--warmup", "4", "--seed", "3"]
QUIET = ["--print-every", "1000"]
TIMEOUT = 240


def env():
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
             OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return e


def run(cmd):
    p = subprocess.run(cmd, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    if p.returncode != 0:
        print(" ".join(cmd))
        print(p.stdout)
        raise SystemExit(f"exit status {p.returncode}")
    return p.stdout


def mpirun(mpiexec, n, cincflow, args):
    return run([mpiexec, *MPI_FLAGS, "-np", str(n), cincflow, "train", *args])


def datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        found["@step"] = f.attrs["step"]
        found["@optimizer.step"] = f["optimizer"].attrs["step"]
    return found


def log_bpd(path):
    with open(path) as f:
        rows = [line.strip().split(",") for line in f][1:]
    return np.array([float(r[3]) for r in rows])


def equivalence(mpiexec, cincflow, tmp):
    one, two = os.path.join(tmp, "one.h5"), os.path.join(tmp, "two.h5")
    common = MODEL + QUIET + ["--steps", "20", "--init-images", "64"]
    # One process without mpirun (the path of a plain `cincflow train`), then two ranks.
    run([cincflow, "train", *common, "--batch", "64", "--checkpoint", one,
         "--log", one + ".csv"])
    out = mpirun(mpiexec, 2, cincflow, common + ["--batch", "32", "--checkpoint", two,
                                                 "--log", two + ".csv"])
    if "2 ranks x batch 32 = 64 images per step" not in out:
        print(out)
        print("the 2-rank run did not report its 2 ranks")
        return 1
    if out.count("training cinc+quad") != 1:
        print(out)
        print("more than rank 0 printed")
        return 1
    a, b = datasets(one), datasets(two)
    worst, where = 0.0, ""
    for k in a:
        if not (k.startswith("params/") or k.startswith("state/")):
            continue
        x, y = np.asarray(a[k], float), np.asarray(b[k], float)
        rel = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30)
        if rel > worst:
            worst, where = rel, k
    ba, bb = log_bpd(one + ".csv"), log_bpd(two + ".csv")
    bpd_diff = np.max(np.abs(ba - bb))
    print(f"equivalence: 2 ranks x 32 against 1 x 64 after 20 steps: largest relative "
          f"difference {worst:.2e} ({where}); bits/dim per step within {bpd_diff:.1e}")
    if len(ba) != 20 or len(bb) != 20 or bpd_diff > 1e-4:
        print("bits/dim per step:", ba, bb)
        return 1
    return 0 if worst <= 1e-5 else 1


def resume(mpiexec, cincflow, tmp):
    whole, half = os.path.join(tmp, "whole.h5"), os.path.join(tmp, "half.h5")
    n = 7  # 96 images, 2 ranks x 8: 6 steps an epoch, so the second half crosses an epoch
    common = ["--data", "synthetic:8x8x1:96"] + MODEL[2:] + QUIET + [
        "--batch", "8", "--init-images", "32", "--checkpoint-every", "3"]
    mpirun(mpiexec, 2, cincflow, common + ["--steps", str(2 * n), "--checkpoint", whole])
    mpirun(mpiexec, 2, cincflow, common + ["--steps", str(n), "--checkpoint", half])
    out = mpirun(mpiexec, 2, cincflow,
                 common + ["--steps", str(2 * n), "--checkpoint", half, "--resume", half])
    if out.count("resumed") != 1:
        print(out)
        print("expected one 'resumed' line, from rank 0")
        return 1
    a, b = datasets(whole), datasets(half)
    if sorted(a) != sorted(b):
        print("the checkpoints hold different tensors:", sorted(set(a) ^ set(b)))
        return 1
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    for k in bad[:5]:
        d = np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))
        print(f"{k}: differs by up to {d:.3g}")
    if bad:
        print(f"{len(bad)} of {len(a)} entries differ after resuming under MPI")
        return 1
    print(f"resume: 2 ranks, {n} + {n} steps with a resume bit-identical to {2 * n} straight "
          f"({len(a)} entries)")
    return 0


def largest_difference(a, b):
    worst, where = 0.0, ""
    for k in a:
        if not (k.startswith("params/") or k.startswith("state/") or k.startswith("optimizer/")):
            continue
        x, y = np.asarray(a[k], float), np.asarray(b[k], float)
        rel = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30)
        if rel > worst:
            worst, where = rel, k
    return worst, where


def resume_ranks(mpiexec, cincflow, tmp):
    n = 7  # 96 images, 16 a step: 6 steps an epoch, so the second half crosses an epoch
    common = ["--data", "synthetic:8x8x1:96"] + MODEL[2:] + QUIET + [
        "--init-images", "32", "--checkpoint-every", "3"]
    whole = os.path.join(tmp, "whole.h5")
    mpirun(mpiexec, 2, cincflow, common + ["--batch", "8", "--steps", str(2 * n),
                                           "--checkpoint", whole])
    ok = True
    for first, second in ((2, 1), (1, 2)):
        half = os.path.join(tmp, f"half_{first}_{second}.h5")
        for ranks, steps, extra in ((first, n, []), (second, 2 * n, ["--resume", half])):
            args = common + ["--batch", str(16 // ranks), "--steps", str(steps),
                             "--checkpoint", half] + extra
            out = mpirun(mpiexec, 2, cincflow, args) if ranks == 2 else run(
                [cincflow, "train", *args])
            if extra and out.count("resumed") != 1:
                print(out)
                print("expected one 'resumed' line")
                return 1
        a, b = datasets(whole), datasets(half)
        if sorted(a) != sorted(b):
            print("the checkpoints hold different tensors:", sorted(set(a) ^ set(b)))
            return 1
        worst, where = largest_difference(a, b)
        step_ok = int(a["@step"]) == int(b["@step"]) == 2 * n
        print(f"resume_ranks: {n} steps on {first} rank(s) x {16 // first}, resumed on {second} "
              f"x {16 // second} for {n} more, against {2 * n} straight on 2 x 8: largest "
              f"relative difference {worst:.2e} ({where}), steps {a['@step']} and {b['@step']}")
        ok = ok and worst <= 1e-5 and step_ok
    return 0 if ok else 1


def rank_pid(tag, rank, timeout=60):
    """The pid of the process of this rank started with CF_TEST_TAG=tag, once it exists."""
    want = {f"CF_TEST_TAG={tag}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    end = time.time() + timeout
    while time.time() < end:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    entries = set(f.read().split(b"\0"))
            except OSError:
                continue
            if want <= entries:
                return int(pid)
        time.sleep(0.1)
    return None


def wait_failed(p, what):
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        print(f"{what}: mpirun still running a minute later (a rank hangs)")
        return False
    if p.returncode == 0:
        print(out)
        print(f"{what}: mpirun exited with status 0")
        return False
    print(f"rank_dies: {what}: mpirun exited with status {p.returncode}")
    return True


def rank_dies(mpiexec, cincflow, tmp):
    tag = f"{os.getpid()}-{time.time()}"
    e = env()
    e["CF_TEST_TAG"] = tag
    long_run = MODEL + ["--batch", "16", "--init-images", "32", "--steps", "100000000"]
    # A rank killed mid-training.
    p = subprocess.Popen([mpiexec, *MPI_FLAGS, "-x", "CF_TEST_TAG", "-np", "2", cincflow,
                          "train", *long_run, "--print-every", "1"], env=e,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    line = p.stdout.readline()
    while line and not line.startswith("step 3 "):  # both ranks are in the training loop
        line = p.stdout.readline()
    pid = rank_pid(tag, 1) if line else None
    if pid is None:
        os.killpg(p.pid, signal.SIGKILL)
        print(p.communicate()[0])
        print("rank_dies: the run did not start training, or rank 1 was not found")
        return 1
    os.kill(pid, signal.SIGKILL)
    ok = wait_failed(p, "rank 1 killed")
    # A failure rank 0 alone sees: its checkpoint's directory does not exist.
    p = subprocess.Popen([mpiexec, *MPI_FLAGS, "-np", "2", cincflow, "train", *long_run,
                          "--checkpoint", os.path.join(tmp, "missing", "x.h5"),
                          "--checkpoint-every", "3"], env=e, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    ok = wait_failed(p, "rank 0 cannot write its checkpoint") and ok
    return 0 if ok else 1


def main():
    mpiexec, cincflow, mode = sys.argv[1:4]
    modes = {"equivalence": equivalence, "resume": resume, "resume_ranks": resume_ranks,
             "rank_dies": rank_dies}
    with tempfile.TemporaryDirectory() as tmp:
        return modes[mode](mpiexec, cincflow, tmp)


if __name__ == "__main__":
    sys.exit(main())
