#!/usr/bin/env python3
"""check_torch_model.py: the PyTorch loader against cincflow on the same checkpoints.

Usage: check_torch_model.py CINCFLOW TORCH_FLOW_PY

Trains the cases of tests/check_numpy_model.py (every combination of the built-in model's
convolutions and couplings, three hand-written architectures, a format-1 file, a file whose
actnorms were never initialised) and requires examples/torch_flow.py to agree with `CINCFLOW
eval --dequant midpoint` to 1e-5 bits/dim on each, in float64 and in float32. Three latents
drawn at temperature 0.7, decoded and encoded again, must come back (|z - encode(decode(z))|),
as must the first three images (|x - decode(encode(x))|): to 1e-9 in float64, 1e-3 in float32.
A kind it does not know must be refused by name. Exits 77 (CTest: skipped) when this Python
has no torch, numpy or h5py.
"""
import os
import sys

try:
    import h5py  # noqa: F401
    import numpy  # noqa: F401
    import torch
except ImportError as e:
    print(f"{e.name} is not installed for {sys.executable}: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_numpy_model  # noqa: E402

if __name__ == "__main__":
    # The models are tiny: torch's own threads only wait on each other, badly so on a busy
    # machine (a run of 15 s took 70 s with two threads while other builds ran).
    torch.set_num_threads(1)
    sys.exit(check_numpy_model.main(
        variants=(("torch64", ("--dtype", "float64"), True),
                  ("torch32", ("--dtype", "float32"), True)),
        tmp_prefix="cf_torch_"))
