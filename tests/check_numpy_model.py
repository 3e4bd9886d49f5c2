#!/usr/bin/env python3
"""check_numpy_model.py: the model against an independent implementation that reads the same
checkpoint.

Usage: check_numpy_model.py CINCFLOW LOAD_CHECKPOINT_PY

In a temporary folder: writes small data sets of its own (8x8 gray idx files, plain and gzip,
and a folder of 16x16 RGB PNGs whose rows use every PNG filter type), trains tiny models with
`CINCFLOW train` for several configurations (CInC, 1x1 and emerging convolutions; quad and affine
couplings; two and three levels), then requires `CINCFLOW eval --dequant midpoint` and
examples/load_checkpoint.py (numpy, float64) to agree to 1e-4 bits/dim on the same images, and
the numpy side's closed-form log-determinants of the invertible convolutions to match the
log-determinants of their whole Jacobians. Exits 77 (CTest: skipped) when this Python has no
numpy or h5py.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib

try:
    import h5py  # noqa: F401  (load_checkpoint.py needs it)
    import numpy as np
except ImportError as e:
    print(f"{e.name} is not installed for {sys.executable}: skipped")
    sys.exit(77)

TOLERANCE = 1e-4  # bits/dim
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


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stdout


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cincflow, loader = sys.argv[1], sys.argv[2]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="cf_numpy_") as tmp:
        gray = gray_images(64, 8, 8)
        idx = os.path.join(tmp, "gray-images-idx3-ubyte")
        write_idx(idx, gray)
        write_idx(idx + ".gz", gray)
        png_dir = os.path.join(tmp, "rgb")
        os.mkdir(png_dir)
        for i, im in enumerate(rgb_images(48, 16, 16)):
            write_png(os.path.join(png_dir, f"img{i:03d}.png"), im)

        # (name, data, train options over BASE_TRAIN, options of both evaluations)
        cases = [
            ("cinc+quad", "idx:" + idx, {"--conv": "cinc", "--coupling": "quad"}, []),
            ("1x1+affine", "idx:" + idx + ".gz",
             {"--conv": "1x1", "--coupling": "affine", "--seed": "2"}, []),
            ("emerging+quad", "idx:" + idx,
             {"--conv": "emerging", "--coupling": "quad", "--seed": "3"},
             ["--limit", "50", "--batch", "16"]),
            ("emerging+affine", "idx:" + idx,
             {"--conv": "emerging", "--coupling": "affine", "--seed": "4"}, []),
            ("cinc+quad rgb L3", "png:" + png_dir,
             {"--conv": "cinc", "--coupling": "quad", "--levels": "3", "--init-images": "48"},
             []),
        ]
        failures = []
        for name, data, flags, eval_flags in cases:
            ckpt = os.path.join(tmp, name.replace("+", "_").replace(" ", "_") + ".h5")
            opts = {**BASE_TRAIN, "--data": data, "--checkpoint": ckpt, **flags}
            run([cincflow, "train"] + [v for kv in opts.items() for v in kv])
            c_out = json.loads(run([cincflow, "eval", "--checkpoint", ckpt, "--data", data,
                                    "--dequant", "midpoint", "--json"] + eval_flags))
            np_out = json.loads(run([sys.executable, loader, ckpt, "--data", data, "--json",
                                     "--check-logdet"] + eval_flags))
            diff = abs(c_out["bpd"] - np_out["bpd"])
            ok = (diff <= TOLERANCE and c_out["images"] == np_out["images"]
                  and np_out["logdet_layers_checked"] > 0
                  and np_out["logdet_max_rel_diff"] < 1e-9)
            print(f"{name:18s} images {np_out['images']:3d}  cincflow {c_out['bpd']:.6f}  "
                  f"numpy {np_out['bpd']:.8f}  |diff| {diff:.2e}  log-det check "
                  f"{np_out['logdet_max_rel_diff']:.1e} over {np_out['logdet_layers_checked']} "
                  f"layers  {'ok' if ok else 'FAILED'}")
            if not ok:
                failures.append(name)
    print(f"{len(cases) - len(failures)} of {len(cases)} configurations agree "
          f"(tolerance {TOLERANCE} bits/dim) in {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
