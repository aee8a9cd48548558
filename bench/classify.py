"""Classification, DeepLense's own task: which dark matter (no substructure, CDM subhalos, an axion vortex) made a lens.

    OMP_NUM_THREADS=1 nice -n 19 python bench/classify.py  # three seeds, resumable -> bench/results/classify.json

Protocol (CPU). Model II (64x64, Euclid VIS as DeepLenseSim ran it), the three classes cycled (no_sub, cdm, axion).
Each seed is trained by the user's command, exactly as a user runs it (a subprocess, default flags):

    deeplense train --task classify --preset model_ii --n 6000 --arch xresnet_small --epochs 8 --seed S --test TEST \\
        --out RUN

The seed sets the simulated training images (cached per seed), the validation split, the initialisation and the batch
order. Every seed is scored on one test set of 3,000 images (seed 99, 1,000 per class, never trained on), so the seeds
are compared on the same images. Reported per seed and as mean +- sd over seeds: accuracy (and the share of the largest
class, what always answering it would score), the mean one-vs-rest ROC AUC and the AUC of each class, plain and with
test-time augmentation. A run whose best validation loss never fell below its first epoch's did not train: it is marked
`trained: false` and left out of the mean.

Runs live in the cache (DEEPLENSE_CACHE or ~/.cache/deeplense_fastai/bench/classify); a finished run is not retrained.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from _results import save

CLASSES = "no_sub,cdm,axion"
N_TEST, TEST_SEED = 3000, 99


def cache() -> Path:
    return Path(os.environ.get("DEEPLENSE_CACHE", Path.home() / ".cache" / "deeplense_fastai")) / "bench" / "classify"


def cli(*args):
    cmd = [sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode: sys.exit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def trained(run: Path) -> bool:
    "Whether the best validation loss fell below the first epoch's."
    import pandas as pd
    h = pd.read_csv(run / "history.csv")
    return bool(h["valid_loss"].min() < h["valid_loss"].iloc[0])


def one_seed(a, seed: int, test: Path) -> dict:
    run = cache() / f"{a.preset}-{a.arch}-n{a.n}-e{a.epochs}-seed{seed}"
    train = ["train", "--task", "classify", "--preset", a.preset, "--n", a.n, "--arch", a.arch, "--epochs", a.epochs,
             "--seed", seed, "--test", test, "--out", run]
    if not (run / "metrics.json").is_file(): cli(*train, *(["--force"] if run.exists() else []))
    m = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    keep = ("n", "accuracy", "baseline_accuracy", "auc", "auc_per_class", "confusion")
    return dict(seed=seed, command="deeplense " + " ".join(map(str, train)).replace(str(cache()), "$CACHE"),
                trained=trained(run), classes=cfg["classes"], **{k: m[k] for k in keep},
                tta={k: m["tta"][k] for k in ("accuracy", "auc", "auc_per_class")})


def spread(rows: list, key, tta: bool = False) -> dict:
    vals = np.array([(r["tta"] if tta else r)[key] for r in rows if r["trained"]], dtype=float)
    return dict(mean=float(vals.mean()), sd=float(vals.std(ddof=1)) if len(vals) > 1 else None, n=int(len(vals)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="model_ii")
    p.add_argument("--arch", default="xresnet_small")
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2")
    a = p.parse_args()
    test = cache() / f"{a.preset}-test-n{N_TEST}-seed{TEST_SEED}"
    if not (test / "manifest.json").is_file():
        cli("simulate", "--preset", a.preset, "--n", N_TEST, "--seed", TEST_SEED, "--classes", CLASSES, "--out", test,
            *(["--force"] if test.exists() else []))
    rows = [one_seed(a, int(s), test) for s in a.seeds.split(",")]
    classes = rows[0]["classes"]
    summary = dict(accuracy=spread(rows, "accuracy"), auc=spread(rows, "auc"),
                   accuracy_tta=spread(rows, "accuracy", True),
                   auc_tta=spread(rows, "auc", True), baseline_accuracy=rows[0]["baseline_accuracy"],
                   auc_per_class={c: spread([dict(r, x=r["auc_per_class"][c]) for r in rows], "x") for c in classes})
    save("classify", settings=dict(vars(a), n_test=N_TEST, test_seed=TEST_SEED, classes=CLASSES,
                                   test_command=f"deeplense simulate --preset {a.preset} --n {N_TEST} "
                                                f"--seed {TEST_SEED} --classes {CLASSES}"),
         summary=summary, table=rows)


if __name__ == "__main__":
    main()
