#!/usr/bin/env python3
"""torch_conv.py: `cincflow bench conv` side by side with PyTorch's conv2d on the same shapes.

Runs `cincflow bench conv --json` (so cincflow's kernel path, libxsmm target and peak are the
ones of this run), then times torch.nn.functional.conv2d on each case's shape in the same
process tree: forward (no autograd), backward-data and backward-weight+bias (aten's
convolution_backward with the matching output mask, so neither pays for the other or for a
forward). Each torch figure is the median over repeats (at least --repeats, and at least
--min-seconds measured), in both NCHW and channels_last memory formats; the faster is reported.
FLOPs are counted as cincflow counts them: 2 * B * H * W * C * K * KH * KW per pass.

Pin it as the cincflow benchmarks are pinned, for example
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 \\
        /usr/bin/python3 tests/bench/torch_conv.py build/examples/cincflow --filter fashion
and force the AVX2 path on an AVX-512 machine with CF_ISA=avx2 LIBXSMM_TARGET=hsw (cincflow)
and ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (PyTorch).

Output: one line per case and pass, cincflow's and torch's GFLOP/s and their ratio; with
--json one JSON object per line instead. Exit status 2 on bad usage or when cincflow fails.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cincflow", help="path to the cincflow tool")
    p.add_argument("--filter", default=None, help="as cincflow bench --filter")
    p.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats at least (default 5)")
    p.add_argument("--min-seconds", type=float, default=0.5,
                   help="measure each torch case at least this long (default 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p.parse_args()


SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)->(\d+) (\d+)x(\d+)$")


def run_cincflow(args):
    cmd = [args.cincflow, "bench", "conv", "--json", "--no-ref", "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    if args.filter:
        cmd += ["--filter", args.filter]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"torch_conv.py: running {' '.join(cmd)} failed: {e}")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    peak = next((r for r in rows if r["name"] == "fma_peak"), None)
    cases = [r for r in rows if r["name"] != "fma_peak"]
    if peak is None or not cases:
        sys.exit(f"torch_conv.py: {' '.join(cmd)} printed no cases (filter {args.filter!r}?)")
    return peak, cases


def median_time(fn, repeats, min_seconds):
    fn()  # warm-up: oneDNN primitive creation, caches
    times, total = [], 0.0
    while len(times) < repeats or (total < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return statistics.median(times)


def time_torch(torch, B, H, W, C, K, kh, kw, pass_name, repeats, min_seconds):
    F = torch.nn.functional
    g = torch.Generator().manual_seed(42)
    pad = (kh // 2, kw // 2)
    best = None
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = (torch.rand(B, C, H, W, generator=g) * 2 - 1).to(memory_format=fmt)
        w = (torch.rand(K, C, kh, kw, generator=g) * 2 - 1).to(memory_format=fmt)
        b = torch.rand(K, generator=g)
        with torch.no_grad():
            y = F.conv2d(x, w, b, padding=pad)
        dy = torch.rand(y.shape, generator=g).to(memory_format=fmt)
        if pass_name == "fwd":
            def fn():
                with torch.no_grad():
                    F.conv2d(x, w, b, padding=pad)
        else:
            mask = [True, False, False] if pass_name == "bwdd" else [False, True, True]

            def fn():
                torch.ops.aten.convolution_backward(dy, x, w, [K], [1, 1], list(pad), [1, 1],
                                                    False, [0, 0], 1, mask)
        t = median_time(fn, repeats, min_seconds)
        name = "nchw" if fmt is torch.contiguous_format else "channels_last"
        if best is None or t < best[0]:
            best = (t, name)
    return best


def main():
    args = parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("torch_conv.py: PyTorch is not importable by this python3 (Debian: "
                 "python3-torch; run /usr/bin/python3)")
    torch.set_num_threads(args.threads)
    peak, cases = run_cincflow(args)
    isa = f"{peak.get('isa', '?')}, libxsmm {peak.get('xsmm_target', '?')}"
    # (torch 1.13 cannot report its ATen capability; say what was asked of it)
    torch_cap = os.environ.get("ATEN_CPU_CAPABILITY", "default") + ", oneDNN max ISA " + \
        os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    if not args.json:
        print(f"# cincflow [{isa}] against PyTorch {torch.__version__} (ATEN_CPU_CAPABILITY "
              f"{torch_cap}; oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}); "
              f"{args.threads} thread(s); {peak['shape']} FMA peak {peak['gflops']:.1f} GFLOP/s; "
              f"ratio = cincflow GFLOP/s / torch GFLOP/s; OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for c in cases:
        m = SHAPE.match(c["shape"])
        if not m:
            sys.exit(f"torch_conv.py: cannot read the shape {c['shape']!r} of {c['name']}")
        B, H, W, C, K, kh, kw = (int(v) for v in m.groups())
        pass_name = c["name"].rsplit("_", 1)[1]
        flops = 2.0 * B * H * W * C * K * kh * kw
        t, fmt = time_torch(torch, B, H, W, C, K, kh, kw, pass_name, args.repeats,
                            args.min_seconds)
        tg = flops / t * 1e-9
        ratio = c["gflops"] / tg
        if args.json:
            print(json.dumps({"name": c["name"], "shape": c["shape"], "threads": args.threads,
                              "cincflow_gflops": c["gflops"], "cincflow_median_s": c["median_s"],
                              "torch_gflops": tg, "torch_median_s": t, "torch_format": fmt,
                              "ratio": ratio, "isa": c.get("isa"),
                              "xsmm_target": c.get("xsmm_target"),
                              "torch_capability": torch_cap}))
        else:
            print(f"{c['name']:<30} {c['shape']:<26} cincflow {c['gflops']:7.1f} GFLOP/s  "
                  f"torch {tg:7.1f} GFLOP/s ({fmt:<13})  ratio x{ratio:5.2f}  [{isa}]")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
