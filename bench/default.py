"""The embedded default, measured: `deeplense train` with no arguments (6,000 simulated Model II images, ResNet18,
8 epochs on the CPU), timed, its test metrics written with machine, versions, command and date.

    python bench/default.py [--json bench/results/default.json]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="bench/results/default.json")
    a = ap.parse_args()
    import torch  # noqa: F401  (so that the header records torch's threads)
    from _results import header, write_json
    out = Path(tempfile.mkdtemp()) / "run"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "deeplense_fastai.cli", "train", "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    if r.returncode: sys.exit(r.stderr[-3000:])
    wall = time.time() - t0
    m = json.loads((out / "metrics.json").read_text())
    res = dict(header("default"), measured_command="deeplense train", wall_seconds_including_simulation=round(wall, 1),
               note="the first run also simulates and caches the data; later runs reuse the cache",
               test=dict(n=m["n"], mae=m["mae"], rmse=m["rmse"], r2=m["r2"], baseline_mae=m["baseline_mae"]),
               test_tta=dict(mae=m["tta"]["mae"], r2=m["tta"]["r2"]))
    write_json(a.json, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
