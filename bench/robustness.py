"""When the sky is not the simulator: train on one world, test on another, with the OOD flag's detection rate.

    OMP_NUM_THREADS=1 nice -n 19 python bench/robustness.py train     # the three training runs (resumable)
    OMP_NUM_THREADS=1 python bench/robustness.py score                 # every (train, test) pair -> results JSON

Protocol (CPU; issue 22). Model II (64x64, Euclid VIS as DeepLenseSim ran it), axion images, target log10 m_axion.
Each training world A is trained by the user's command, exactly as a user runs it (a subprocess, default flags):

    deeplense train --preset A --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed 0 --out RUN

(xresnet_small: the cheapest architecture that learns this task within 8 CPU epochs, bench/results/seeds.) A is one of
`model_ii` (DeepLenseSim's fixed lens and smooth source), `model_ii_nuisance` (main lens and source varied per image,
smooth source) and `model_ii_nuisance_clumpy` (varied, and 2-8 star-forming knots). Every run is scored on four test
worlds B of 2,000 images each (seed 99, never seen in training): {fixed, nuisance} x {Sersic, clumpy}. Per (A, B):
the MAE of the posterior median against the constant guess (the training mean), the share of 68% and 95% central
intervals holding the truth, the largest gap between nominal and empirical coverage over the levels 0.1..0.9, the median
68% half-width, the share of points outside the training range (`in_prior` false), and the share `ood` flags (its
threshold flags 5% of the run's own validation images: the false-alarm rate on A's world, by construction about 5%).

The runs live in the cache (DEEPLENSE_CACHE or ~/.cache/deeplense_fastai/bench/robustness); a finished run is not
retrained. The results file records each run's config digest, the commands, the machine and the date.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import save

WORLDS = ("model_ii", "model_ii_nuisance", "model_ii_nuisance_clumpy")
TESTS = ("model_ii", "model_ii_clumpy", "model_ii_nuisance", "model_ii_nuisance_clumpy")
TRAIN = ["--n", "8000", "--arch", "xresnet_small", "--loss", "flow", "--epochs", "8", "--seed", "0"]
N_TEST, TEST_SEED = 2000, 99
LEVELS = np.round(np.arange(0.1, 1.0, 0.1), 2)


def run_dir(world: str) -> Path:
    from deeplense_fastai.core import cache_dir
    return cache_dir("bench", "robustness") / world


def train(worlds) -> None:
    "Train each world's run with the CLI unless it finished before (weights and config on disk)."
    exe = Path(sys.executable).with_name("deeplense")
    for w in worlds:
        out = run_dir(w)
        if (out / "weights.safetensors").exists() and (out / "config.json").exists():
            print(f"{w}: trained before ({out})", flush=True)
            continue
        cmd = [str(exe), "train", "--preset", w, *TRAIN, "--out", str(out), "--quiet"]
        cmd += ["--force"] if out.exists() else []
        t0 = time.time()
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        print(f"{w}: trained in {time.time() - t0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "score"])
    ap.add_argument("--worlds", default=",".join(WORLDS))
    a = ap.parse_args()
    worlds = a.worlds.split(",")
    if a.stage == "train": train(worlds)
    else: score(worlds)


if __name__ == "__main__":
    main()
