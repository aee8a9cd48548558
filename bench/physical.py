"""The physical substructure option, trained (issue 22): does a network read f_sub_ring; what do point masses change?

    OMP_NUM_THREADS=1 nice -n 19 python bench/physical.py train     # the two runs (resumable: a finished run is kept)
    OMP_NUM_THREADS=1 python bench/physical.py score                 # -> bench/results/physical.json

Protocol (CPU, as bench/robustness.py: 8,000 images, xresnet_small, flow loss, 8 epochs, seed 0). Two worlds that
differ in one part only, the subhalos' profile:
- `model_ii_physical`: Model II's instrument with the physical `Subhalos` part (a Poisson count of subhalos whose mean
  is drawn per image, m^-1.9, uniform in projected area, truncated NFW profiles), target `f_sub_ring` (the projected
  mass fraction in subhalos within the annulus 0.5-1.5 theta_E), trained by the user's command

      deeplense train --preset model_ii_physical --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed 0

- `model_ii_physical_point`: the same preset with `Subhalos(profile='point')`, the subhalos as point masses of the same
  M200 (DeepLenseSim's profile); not a registered preset, so it is written with `write_dataset` (8,000 training images,
  seed 0; 1,333 test images, seed 1) and trained by the same command on those files
  (`deeplense train --data D --test T --target f_sub_ring ...`).

Each run is scored on fresh test images of both worlds (2,000 each, seed 99: the same draws, only the profile differs):
the MAE of the posterior median against the constant guess (the training mean), R^2, the share of 68% intervals
holding the truth, the median 68% half-width, and the share `ood` flags. Runs live in the cache
(DEEPLENSE_CACHE or ~/.cache/deeplense_fastai/bench/physical); the results record each run's weights digest.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from _results import save

TRAIN = ["--arch", "xresnet_small", "--loss", "flow", "--epochs", "8", "--seed", "0"]
WORLDS = ("model_ii_physical", "model_ii_physical_point")
N_TRAIN, N_RUN_TEST, N_TEST, TEST_SEED = 8000, 1333, 2000, 99


def preset(world: str):
    "The recipe of a world: the registered physical preset, or its twin with point-mass subhalos."
    from deeplense_fastai.simulate import PRESETS, Subhalos
    p = PRESETS["model_ii_physical"]
    return p if world == "model_ii_physical" else p.replace(name=world, subhalos=Subhalos(profile="point"))


def folder(*parts) -> Path:
    from deeplense_fastai.core import cache_dir
    return cache_dir("bench", "physical", *parts[:-1]) / parts[-1]


def dataset(world: str, n: int, seed: int) -> Path:
    "A written dataset of `world` (resumed and verified by `write_dataset`, never rewritten)."
    from deeplense_fastai.dataset import write_dataset
    out = folder("data", f"{world}-n{n}-seed{seed}")
    write_dataset(out, preset(world), n=n, seed=seed, progress=False)
    return out


def command(world: str) -> list:
    "The `deeplense train` arguments of a world's run."
    if world == "model_ii_physical": return ["--preset", world, "--n", str(N_TRAIN), *TRAIN]
    return ["--data", str(dataset(world, N_TRAIN, 0)), "--test", str(dataset(world, N_RUN_TEST, 1)),
            "--target", "f_sub_ring", *TRAIN]


def train() -> None:
    "Train each world's run with the CLI unless it finished before (bench/robustness.py's `train_run`)."
    from robustness import train_run
    for w in WORLDS: train_run(w, folder(w), command(w))


def score_pair(run: Path, test: Path) -> dict:
    "One (run, test world) pair: predict's columns against the labels."
    from deeplense_fastai.config import RunConfig
    from deeplense_fastai.inference import predict
    from deeplense_fastai.sources import open_source
    src = open_source(test)
    y = src.labels["f_sub_ring"].to_numpy(np.float64)
    pred = predict(run, test, notice=lambda m: None)
    mean = RunConfig.read(run).target_mean[0]
    med, lo, hi = (pred[f"{k}_f_sub_ring"].to_numpy() for k in ("pred", "q16", "q84"))
    return dict(n=len(y), mae=float(np.mean(np.abs(med - y))), baseline_mae=float(np.mean(np.abs(mean - y))),
                r2=float(1 - np.sum((med - y) ** 2) / np.sum((y - y.mean()) ** 2)),
                coverage_68=float(np.mean((lo <= y) & (y <= hi))), half_width_68=float(np.median((hi - lo) / 2)),
                ood_rate=float(pred["ood"].astype(float).mean()), truth_sd=float(y.std()))


def score() -> None:
    from deeplense_fastai.core import cache_dir, file_digest
    table, runs = [], {}
    for w in WORLDS:
        run = folder(w)
        if not (run / "weights.safetensors").exists():
            sys.exit(f"no trained run at {run}: OMP_NUM_THREADS=1 python bench/physical.py train")
        root = str(cache_dir())                                   # no path of this machine in the results
        runs[w] = dict(train=["deeplense", "train", *(a.replace(root, "$DEEPLENSE_CACHE") for a in command(w))],
                       weights_sha256=file_digest(run / "weights.safetensors"))
        for t in WORLDS:
            row = dict(train=w, test=t, **score_pair(run, dataset(t, N_TEST, TEST_SEED)))
            print(f"train {w:24s} test {t:24s} MAE {row['mae']:.5f} (constant {row['baseline_mae']:.5f})  R^2 "
                  f"{row['r2']:+.3f}  68% coverage {row['coverage_68']:.3f}  ood {row['ood_rate']:.3f}", flush=True)
            table.append(row)
    save("physical", table=table, runs=runs,
         settings=dict(worlds=list(WORLDS), n_train=N_TRAIN, n_test=N_TEST, test_seed=TEST_SEED,
                       command="OMP_NUM_THREADS=1 python bench/physical.py score"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("train", "score"))
    a = ap.parse_args(argv)
    train() if a.step == "train" else score()


if __name__ == "__main__":
    main()
