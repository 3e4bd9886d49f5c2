#!/usr/bin/env python3
"""check_numpy_model.py: the model against an independent implementation that reads the same
checkpoint.

Usage: check_numpy_model.py CINCFLOW LOAD_CHECKPOINT_PY

In a temporary folder: writes small data sets of its own (8x8 gray idx files, plain and gzip,
and a folder of 16x16 RGB PNGs whose rows use every PNG filter type), trains tiny models with
`CINCFLOW train` (a few dozen steps) for every combination of the built-in model's choices
(CInC, 1x1 and emerging convolutions x quad and affine couplings; two and three levels) and for
three hand-written architectures (`train --arch`: no split and two squeezes in a row with every
masked_conv mask and a width per coupling; three splits between levels; a split of 3 channels
first), a format-1 copy of one checkpoint (no /arch) and a copy whose actnorms were never
initialised (each program initialises them from the batch it evaluates). Then it requires
`CINCFLOW eval --dequant midpoint` and examples/load_checkpoint.py (numpy, float64) to agree to
1e-5 bits/dim on the same images, the numpy side's closed-form log-determinants of the invertible
convolutions to match the log-determinants of their whole Jacobians, and a checkpoint with a
kind the loader does not know to be refused with a message naming the layer, the kind and its
provider. tests/check_torch_model.py runs the same cases through examples/torch_flow.py.
Exits 77 (CTest: skipped) when this Python has no numpy or h5py.
"""
import contextlib
import gzip
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib

try:
    import h5py
    import numpy as np
except ImportError as e:
    print(f"{e.name} is not installed for {sys.executable}: skipped")
    sys.exit(77)

TOLERANCE = 1e-5  # bits/dim
BASE_TRAIN = {"--levels": "2", "--depth": "2", "--width": "16", "--steps": "30", "--batch": "16",
              "--init-images": "64", "--warmup": "5", "--lr": "1e-3", "--threads": "2"}


def gray_images(n, h, w):
    """Deterministic 8-bit images: drifting waves plus a bright square, no two alike."""
    i = np.arange(n)[:, None, None]
    y = np.arange(h)[None, :, None]
    x = np.arange(w)[None, None, :]
    v = 110 + 90 * np.sin(0.7 * x + 0.37 * i) * np.cos(0.5 * y + 0.11 * i)
    v = v + 60 * ((np.abs(x - i % w) < 2) & (np.abs(y - (3 * i) % h) < 2))
    return np.clip(v, 0, 255).astype(np.uint8)


def write_idx(path, images):
    n, h, w = images.shape
    raw = bytes([0, 0, 8, 3]) + struct.pack(">III", n, h, w) + images.tobytes()
    if path.endswith(".gz"):
        raw = gzip.compress(raw, mtime=0)
    with open(path, "wb") as f:
        f.write(raw)


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def filter_rows(img):
    """PNG scanlines of an (H, W, 3) image; row r uses filter type r mod 5."""
    h, w, c = img.shape
    raw = img.reshape(h, w * c).astype(np.int64)
    out = bytearray()
    for r in range(h):
        cur = raw[r]
        up = raw[r - 1] if r else np.zeros_like(cur)
        left = np.concatenate([np.zeros(c, np.int64), cur[:-c]])
        upleft = np.concatenate([np.zeros(c, np.int64), up[:-c]])
        kind = r % 5
        if kind == 0:
            pred = np.zeros_like(cur)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = up
        elif kind == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        out.append(kind)
        out += ((cur - pred) & 255).astype(np.uint8).tobytes()
    return bytes(out)


def write_png(path, img):
    h, w, _ = img.shape
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(filter_rows(img), 9)) + png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)


def rgb_images(n, h, w):
    g = gray_images(n, h, w).astype(np.int64)
    return np.stack([g, np.roll(g, 3, axis=2), 255 - np.roll(g, 5, axis=1)], axis=3).astype(
        np.uint8)


# Hand-written architectures (`cincflow train --arch`), each with the data it trains on.
ARCHS = {
    # no split, two squeezes in a row, every mask, a width per coupling, an affine coupling on
    # 3 channels, a masked_conv left at its default mask
    "rgb no split": ("rgb", [
        ("an0", "actnorm", {}), ("c0", "affine_coupling", {"hidden": 4}),
        ("sq0", "squeeze", {}), ("sq1", "squeeze", {}),
        ("m0", "masked_conv", {}), ("q0", "quad_coupling", {"hidden": 8}),
        ("m1", "masked_conv", {"mask": "emerging_causal"}),
        ("c1", "affine_coupling", {"hidden": 6}),
        ("m2", "masked_conv", {"mask": "emerging_anticausal"}),
        ("e0", "emerging_conv", {}), ("q1", "quad_coupling", {"hidden": 10}),
        ("top", "prior", {})]),
    # three splits, one after a single squeeze, one of 2 channels down to 1
    "gray three splits": ("gray", [
        ("sq0", "squeeze", {}), ("an0", "actnorm", {}), ("w0", "invconv1x1", {}),
        ("c0", "affine_coupling", {"hidden": 6}), ("sp0", "split", {}),
        ("an1", "actnorm", {}), ("m0", "masked_conv", {"mask": "emerging_anticausal"}),
        ("c1", "affine_coupling", {"hidden": 5}), ("sp1", "split", {}),
        ("sq1", "squeeze", {}), ("k0", "cinc_conv", {}), ("q0", "quad_coupling", {"hidden": 7}),
        ("sp2", "split", {}), ("prior", "prior", {})]),
    # a split of 3 channels (1 kept, 2 factored out) before any squeeze
    "rgb split first": ("rgb", [
        ("sp0", "split", {}), ("sq0", "squeeze", {}), ("an0", "actnorm", {}),
        ("k0", "cinc_conv", {}), ("q0", "quad_coupling", {"hidden": 4}),
        ("sq1", "squeeze", {}), ("w0", "invconv1x1", {}), ("c0", "affine_coupling", {"hidden": 3}),
        ("prior", "prior", {})]),
}


def run(cmd, want=0):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != want:
        sys.exit(f"FAILED ({p.returncode}, expected {want}): {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr if want else p.stdout


def run_loader(loader, args):
    """The loader's main(args) in this process (so torch is imported once, not per case); its
    stdout, or the whole output and a failure when it does not exit 0."""
    if loader not in LOADERS:
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(loader))[0], loader)
        LOADERS[loader] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(LOADERS[loader])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = LOADERS[loader].main(args)
    if rc != 0:
        sys.exit(f"FAILED ({rc}): {loader} {' '.join(args)}\n{out.getvalue()}{err.getvalue()}")
    return out.getvalue()


LOADERS = {}


def write_arch(path, shape, layers):
    arch = {"input": list(shape),
            "layers": [dict({"name": n, "kind": k}, **({"hparams": hp} if hp else {}))
                       for n, k, hp in layers]}
    with open(path, "w") as f:
        json.dump(arch, f, indent=1)


def format1_copy(src, dst):
    """A copy of a built-in model's checkpoint as format 1 wrote it: no /arch."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    with h5py.File(dst, "a") as f:
        del f["arch"]
        f.attrs["format_version"] = np.int64(1)


def uninitialized_copy(src, dst):
    """A copy whose actnorms never took their data-dependent initialisation (flags 0): every
    program initialises them from the first batch it evaluates."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    with h5py.File(dst, "a") as f:
        for name in f["state"]:
            if name.endswith(".initialized"):
                f["state"][name][()] = 0


def unknown_kind_copy(src, dst, layer, kind, provider):
    """A copy whose /arch says layer has a kind no loader knows, from provider."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    with h5py.File(dst, "a") as f:
        arch = json.loads(f["arch"].attrs["json"])
        old = next(x for x in arch["layers"] if x["name"] == layer)["kind"]
        for x in arch["layers"]:
            if x["kind"] == old:
                x["kind"] = kind
        arch["kinds"][kind] = dict(arch["kinds"].pop(old), provider=provider)
        f["arch"].attrs["json"] = json.dumps(arch)


def checkpoints(cincflow, tmp):
    """Trains every case: [(name, checkpoint, data spec, options of both evaluations)]."""
    gray = gray_images(64, 8, 8)
    idx = os.path.join(tmp, "gray-images-idx3-ubyte")
    write_idx(idx, gray)
    write_idx(idx + ".gz", gray)
    png_dir = os.path.join(tmp, "rgb")
    os.mkdir(png_dir)
    for i, im in enumerate(rgb_images(48, 16, 16)):
        write_png(os.path.join(png_dir, f"img{i:03d}.png"), im)
    data = {"gray": ("idx:" + idx, (8, 8, 1)), "rgb": ("png:" + png_dir, (16, 16, 3))}

    # (name, data, train options over BASE_TRAIN, options of both evaluations)
    builtin = [
        ("cinc+quad", "idx:" + idx, {"--conv": "cinc", "--coupling": "quad"}, []),
        ("cinc+affine", "idx:" + idx, {"--conv": "cinc", "--coupling": "affine", "--seed": "5"},
         []),
        ("1x1+quad", "idx:" + idx, {"--conv": "1x1", "--coupling": "quad", "--seed": "6"}, []),
        ("1x1+affine", "idx:" + idx + ".gz",
         {"--conv": "1x1", "--coupling": "affine", "--seed": "2"}, []),
        ("emerging+quad", "idx:" + idx,
         {"--conv": "emerging", "--coupling": "quad", "--seed": "3"},
         ["--limit", "50", "--batch", "16"]),
        ("emerging+affine", "idx:" + idx,
         {"--conv": "emerging", "--coupling": "affine", "--seed": "4"}, []),
        ("cinc+quad rgb L3", "png:" + png_dir,
         {"--conv": "cinc", "--coupling": "quad", "--levels": "3", "--init-images": "48"}, []),
    ]
    cases = []
    for name, spec, flags, eval_flags in builtin:
        ckpt = os.path.join(tmp, name.replace("+", "_").replace(" ", "_") + ".h5")
        opts = {**BASE_TRAIN, "--data": spec, "--checkpoint": ckpt, **flags}
        run([cincflow, "train"] + [v for kv in opts.items() for v in kv])
        cases.append((name, ckpt, spec, eval_flags))
    for name, (kind, layers) in ARCHS.items():
        spec, shape = data[kind]
        base = os.path.join(tmp, name.replace(" ", "_"))
        write_arch(base + ".json", shape, layers)
        run([cincflow, "train", "--arch", base + ".json", "--data", spec, "--checkpoint",
             base + ".h5", "--steps", "20", "--batch", "16", "--init-images", "48", "--warmup",
             "5", "--lr", "1e-3", "--threads", "2"])
        cases.append((name, base + ".h5", spec, []))
    f1 = os.path.join(tmp, "format1.h5")
    format1_copy(cases[2][1], f1)
    cases.append(("1x1+quad format 1", f1, cases[2][2], []))
    u = os.path.join(tmp, "uninitialized.h5")
    uninitialized_copy(cases[0][1], u)
    cases.append(("cinc+quad uninit", u, cases[0][2], []))  # one batch: all 64 images
    return cases


def main(argv=None, variants=(("numpy", (), False),), tmp_prefix="cf_numpy_"):
    """Runs every case through the loader given on the command line, once per variant (label,
    extra loader options, whether to check the round trip instead of the log-determinants)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit(__doc__)
    cincflow, loader = argv
    start = time.time()
    failures, worst, checks = [], {}, 0
    with tempfile.TemporaryDirectory(prefix=tmp_prefix) as tmp:
        cases = checkpoints(cincflow, tmp)
        print(f"trained {len(cases) - 2} checkpoints in {time.time() - start:.1f} s")
        for name, ckpt, data, eval_flags in cases:
            c_out = json.loads(run([cincflow, "eval", "--checkpoint", ckpt, "--data", data,
                                    "--dequant", "midpoint", "--json"] + eval_flags))
            for label, loader_args, round_trip in variants:
                extra = ["--round-trip", "3"] if round_trip else ["--check-logdet"]
                py_out = json.loads(run_loader(loader, [ckpt, "--data", data, "--json"]
                                               + list(loader_args) + extra + eval_flags))
                diff = abs(c_out["bpd"] - py_out["bpd"])
                worst[label] = max(worst.get(label, 0.0), diff)
                ok = diff <= TOLERANCE and c_out["images"] == py_out["images"]
                if round_trip:
                    z_err = py_out["round_trip_latent_max_diff"]
                    x_err = py_out["round_trip_image_max_diff"]
                    # float64: exact to rounding; float32: to its precision
                    limit = 1e-9 if py_out.get("dtype", "float64") == "float64" else 1e-3
                    ok = ok and z_err < limit and x_err < limit
                    check = f"round trip |dz| {z_err:.1e} |dx| {x_err:.1e}"
                else:
                    ok = (ok and py_out["logdet_layers_checked"] > 0
                          and py_out["logdet_max_rel_diff"] < 1e-9)
                    check = (f"log-det check {py_out['logdet_max_rel_diff']:.1e} over "
                             f"{py_out['logdet_layers_checked']} layers")
                print(f"{name:18s} images {py_out['images']:3d}  cincflow {c_out['bpd']:.6f}  "
                      f"{label} {py_out['bpd']:.8f}  |diff| {diff:.2e}  {check}  "
                      f"{'ok' if ok else 'FAILED'}")
                checks += 1
                if not ok:
                    failures.append(f"{name} ({label})")
        # A kind the loader does not know: refused, naming the layer, the kind and its provider
        # (the loader run as a command, as a user runs it).
        bad = os.path.join(tmp, "unknown_kind.h5")
        unknown_kind_copy(cases[-3][1], bad, "c0", "sideways_coupling", "libsideways.so")
        err = run([sys.executable, loader, bad, "--synthetic", "2"], want=1)
        want = "layer 'c0' has kind 'sideways_coupling' (provider: libsideways.so)"
        ok = want in err
        print(f"unknown kind refused: {err.strip()}  {'ok' if ok else 'FAILED'}")
        checks += 1
        if not ok:
            failures.append("unknown kind")
    print(f"{checks - len(failures)} of {checks} checks passed; largest |bpd difference| "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
          + f" (tolerance {TOLERANCE} bits/dim) in {time.time() - start:.1f} s")
    if failures:
        print("FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
