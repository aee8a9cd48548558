"""Simulator speed: deeplense_fastai against lenstronomy making the same images in the same run.

    python bench/simulate.py [--n 512] [--n-lenstronomy 48] [--device cpu] [--threads 2] [--compile] [--json PATH]

Prints one table row per (preset, class, vortex mode): images per second for our batched simulator and for
lenstronomy rendering the identical parameters one image at a time, as DeepLenseSim does (the reference pipeline
of tests/_lenstronomy_ref.py: ImageModel for Model I, SimAPI with the frozen band for Models II/III), noise included,
and their ratio. Both run in this process on the same machine, so the ratio is
meaningful even on a shared, noisy machine; absolute rates are not. The rows are written to
bench/results/simulate.json (machine, versions, date and command with them; `--json ''` writes nothing), with the
issue's target and the previous run's rows (under "previous") kept beside them.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deeplense_fastai.simulate import PRESETS, get_preset, make_images, draw_parameters

# the one reference pipeline, shared with the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _lenstronomy_ref as ref  # noqa: E402
from _results import save  # noqa: E402  (bench/ is on the path when this script runs)


# issue 14: at least 10x lenstronomy for Model I (150x150) with DeepLenseSim's 100-point vortex, on the CPU
TARGETS = dict(model_i_axion_points_ratio=10.)


def ours(preset, n, cls, device, compile=False, repeats=2):
    make_images(preset, 0, 64, 0, (cls,), True, device, compile=compile)   # warm-up: main-lens field, compilation
    best = 0.
    for _ in range(repeats):
        t0 = time.perf_counter()
        img, _ = make_images(preset, 0, n, 0, (cls,), True, device, compile=compile)
        if img.is_cuda: torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def lenstronomy_rate(name, n, cls):
    """DeepLenseSim's per-image lenstronomy pipeline (tests/_lenstronomy_ref.py: ImageModel for Model I, SimAPI with
    the frozen band for Models II/III) on the same parameters, noise included."""
    lenstronomy_rate.warm = getattr(lenstronomy_rate, "warm", False)
    if not lenstronomy_rate.warm:  # numba compiles lenstronomy's kernels on first use: keep that out of the timing
        lenstronomy_rate.warm = True
        lenstronomy_rate("model_i", 2, "cdm")
        lenstronomy_rate("model_ii", 2, "cdm")
    prm = draw_parameters(PRESETS[name], np.arange(n), 0, (cls,))
    t0 = time.perf_counter()
    for b in range(n):
        ref.deeplensesim_image(name, prm, b, noise=True, seed=b)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images per measurement of our simulator")
    ap.add_argument("--n-lenstronomy", type=int, default=48, help="images per lenstronomy measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--presets", default="model_i,model_ii")
    ap.add_argument("--classes", default="no_sub,cdm,axion")
    ap.add_argument("--no-lenstronomy", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile (first call compiles)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/simulate.json; '' for none)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    warnings_off()
    dev = torch.device(a.device)
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# machine: {name}; torch {torch.__version__}; float32")
    print("| preset | class | vortex | ours img/s | ours + torch.compile img/s | lenstronomy img/s | "
          "ratio (eager / compiled) |")
    print(f"|---|---|---|---|---|---|---|")
    rows = []
    for pname in a.presets.split(","):
        for cls in a.classes.split(","):
            modes = ["points", "segment"] if cls == "axion" else ["points"]
            lt = None if a.no_lenstronomy or dev.type == "cuda" else lenstronomy_rate(pname, a.n_lenstronomy, cls)
            for mode in modes:
                p = get_preset(pname, vortex=mode)
                r = ours(p, a.n, cls, dev)
                rc = ours(p, a.n, cls, dev, compile=True) if a.compile else None
                lts = f"{lt:.0f}" if lt else "-"
                ratio = (f"{r / lt:.1f}x" + (f" / {rc / lt:.1f}x" if rc else "")) if lt else "-"
                rcs = f"{rc:.0f}" if rc else "-"
                print(f"| {pname} ({p.instrument.npix}x{p.instrument.npix}) | {cls} | "
                      f"{mode if cls == 'axion' else '-'} | {r:.0f} | {rcs} | {lts} | {ratio} |", flush=True)
                rows.append(dict(preset=pname, npix=p.instrument.npix, cls=cls, vortex=mode if cls == "axion" else None,
                                 ours_img_s=round(r, 1), ours_compiled_img_s=round(rc, 1) if rc else None,
                                 lenstronomy_img_s=round(lt, 1) if lt else None,
                                 ratio=round(r / lt, 2) if lt else None,
                                 ratio_compiled=round(rc / lt, 2) if lt and rc else None))
    if a.json != "":
        path = Path(a.json or Path(__file__).resolve().parent / "results" / "simulate.json")
        extra = {}
        if path.exists():            # the run before this one (e.g. before a simulator change), kept beside it
            import json
            old = json.loads(path.read_text())
            extra["previous"] = {k: old[k] for k in ("command", "date", "machine", "versions", "table") if k in old}
        save("simulate", path, device=name, dtype="float32", settings=vars(a), table=rows, targets=TARGETS, **extra)


def warnings_off():
    import warnings
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    main()
