#!/usr/bin/env python3
"""io_h5py_check.py: reads a cincflow checkpoint with h5py alone, as another tool would.

Usage: io_h5py_check.py TEST_IO_CHECKPOINT  (the test_io_checkpoint runner, whose --write-checkpoint FILE mode writes
a small known checkpoint: "levels.0.conv.weight" (3, 3, 2, 2) holding 0.25 * flat index, config
levels = 2 and coupling = "quad"). Exits 77, which CTest reports as skipped, when h5py is not
installed.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import h5py
except ImportError:
    print("h5py is not installed: skipped")
    sys.exit(77)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "known.h5")
        subprocess.run([sys.argv[1], "--write-checkpoint", path], check=True)
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "cincflow-checkpoint", f.attrs["format"]
            assert int(f.attrs["format_version"]) == 2
            assert int(f.attrs["step"]) == 7
            assert len(f.attrs["rng_state"]) == 4
            w = f["params"]["levels.0.conv.weight"]
            assert w.shape == (3, 3, 2, 2), w.shape
            assert w.dtype == "float32", w.dtype
            assert w.attrs["layout"] == "HWIO", w.attrs["layout"]
            # HWIO: [kh][kw][c_in][c_out], row-major like the C buffer.
            assert float(w[1, 2, 0, 1]) == 0.25 * (((1 * 3 + 2) * 2 + 0) * 2 + 1)
            assert "levels.0.actnorm.initialized" in f["state"]
            config = f["config"].attrs
            assert int(config["levels"]) == 2
            assert config["coupling"] == "quad"
            assert json.loads(config["json"]) == {"levels": 2, "coupling": "quad"}
    print("h5py reads the checkpoint")


if __name__ == "__main__":
    main()
