"""Seed and rate noise: each compared architecture at several training seeds, its rate chosen by a stated sweep.

    OMP_NUM_THREADS=1 nice -n 19 python bench/seeds.py                         # the CPU protocol, resumable
    python bench/seeds.py --archs xresnet_small --seeds 0,1,2                  # one architecture
    python bench/seeds.py --summary                                            # the summary of the runs on disk

Why. The one-protocol table (bench/accuracy.py) trains each architecture once, at the one rate its finder picked. The
rate alone moves the MAE by 0.02-0.04 and a different seed moves it too, so a ranking built on one run per
architecture says nothing about differences of that size. This bench measures both noises and keeps every run.

Protocol (the data and recipe of bench/accuracy.py --small: Model II, 8,000 training images of which 10% validate,
2,000 test images of seed 99; Ranger, one-cycle, per-image min-max, the square's symmetries, the epoch with the best
validation loss kept):
1. Rate: the peak rate of the one-cycle schedule is chosen among --rates (default 1e-3, 3e-3, 1e-2) by the best
   validation loss of a short run (--sweep-epochs, default 3, seed 0). The test set is never looked at to choose.
   fastai's lr_find suggestion (accuracy.py's rule) is recorded beside it, for comparison only.
2. Seeds: --seeds (default 0, 1, 2) full runs (--epochs, default 8) at the chosen rate. A seed sets the weights'
   initialisation, the augmentations and the order of the training batches; the validation split is the same for
   every seed (split seed 0), so seeds differ only in training, not in data.
3. A run whose best validation loss never fell below its first epoch's did not train: its file says so
   (`trained: false`) and the tables built from these files refuse to rank it.

Each run is one JSON file, bench/results/seeds/<preset>-<arch>-<kind>.json (kind rate<r> or seed<s>) with machine,
versions, date, command, the per-epoch losses, the test MAE with its bootstrap interval and the per-image predictions
(for paired comparisons across seeds), written atomically when the run ends. A run whose file exists with the same
protocol is skipped: the sweep resumes where it stopped. Architectures run cheapest first, each to completion, so a
stopped sweep leaves whole architectures behind it.

CPU budget (one thread of the 2-core sandbox, measured by bench/accuracy.py's 8-epoch runs): per architecture 3 short
runs (3/8 of a full run each) plus 3 full runs = 4.1 full runs; for the default six architectures about 2.6 CPU-hours.
"""
import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from _results import RESULTS, header, mean_sd, trained, versus, write_json
from accuracy import find_lr, score

ARCHS = "residual_attention_small,xresnet_small,attention_unet_small,mresunet_small,resnet18,mresunet_att_small"
OUT = RESULTS / "seeds"


def protocol(a, kind):
    "What a run's result depends on; a file with another protocol is run again."
    base = dict(preset=a.preset, n_train=a.n_train, n_test=a.n_test, bs=a.bs, split_seed=0)
    if kind == "rate": return dict(base, epochs=a.sweep_epochs, rates=a.rates, seed=0)
    return dict(base, epochs=a.epochs, rates=a.rates, sweep_epochs=a.sweep_epochs)


def learner(arch, a, train_dir, seed, tag):
    "A Learner on the fixed split, with this seed's initialisation, augmentations and batch order."
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner
    set_seed(seed)
    dls = lens_dataloaders(train_dir, bs=a.bs, seed=0, progress=False)     # split seed 0 for every training seed
    dls.train.rng = random.Random(seed)                                    # the order of the training batches
    set_seed(seed)                                                         # the initialisation
    return regression_learner(dls, arch, path=cache_dir("bench", "runs", f"seeds-{a.preset}-{arch}-{tag}"))


def train(learn, epochs, lr):
    "Train with the recipe; the per-epoch losses, the seconds taken and whether the run trained at all."
    from deeplense_fastai.learner import fit
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs, lr, log=None, checkpoint=False)
    dt = time.perf_counter() - t0
    vals = [[float(v) for v in row] for row in learn.recorder.values]
    valid = [row[1] for row in vals]
    return dict(train_seconds=dt, history=vals, valid_first=valid[0], valid_best=min(valid),
                best_epoch=int(np.argmin(valid)), trained=trained(valid))


def run_rate(arch, a, train_dir, lr):
    learn = learner(arch, a, train_dir, 0, f"rate{lr:g}")
    return dict(arch=arch, kind="rate", lr=lr, seed=0, **train(learn, a.sweep_epochs, lr))


def run_seed(arch, a, train_dir, test, lr, seed, found):
    learn = learner(arch, a, train_dir, seed, f"seed{seed}")
    fitted = train(learn, a.epochs, lr)
    cfg = learn.lens_config
    plain, pred, y = score(learn.model, cfg, test, tta=False)
    tta, pred_tta, _ = score(learn.model, cfg, test, tta=True)
    from deeplense_fastai.models import count_parameters
    return dict(arch=arch, kind="seed", seed=seed, lr=lr, lr_find=found, params=count_parameters(learn.model),
                **fitted, test=plain, test_tta=tta, predictions=dict(y=y, pred=pred, pred_tta=pred_tta))


def cached(path, proto, force, make):
    "The result at `path` if it was measured on `proto`, else `make()` written there (atomically) and returned."
    if path.exists() and not force:
        doc = json.loads(path.read_text())
        if doc.get("protocol") == proto: return doc
    doc = dict(header("seeds"), protocol=proto, **make())
    write_json(path, doc)
    return doc


def chosen_rate(rows):
    "The rate whose short run reached the lowest validation loss (runs that never trained are not chosen)."
    ok = [r for r in rows if r["trained"]] or rows
    return min(ok, key=lambda r: r["valid_best"])["lr"]


def lr_find_suggestion(arch, a, train_dir):
    "fastai's lr_find rule of bench/accuracy.py, recorded beside the chosen rate (never used to train)."
    lr, found = find_lr(learner(arch, a, train_dir, 0, "lr_find"))
    return dict(lr=lr, **found)


def sweep(arch, a, train_dir, test):
    out = Path(a.out)
    rows = [cached(out / f"{a.preset}-{arch}-rate{lr:g}.json", protocol(a, "rate"), a.force,
                   lambda lr=lr: run_rate(arch, a, train_dir, lr)) for lr in a.rates]
    lr = chosen_rate(rows)
    print(f"{arch}: short-run validation loss " + ", ".join(f"{r['lr']:g}: {r['valid_best']:.4f}" for r in rows)
          + f" -> rate {lr:g}", flush=True)
    found = None
    for s in a.seeds:
        path = out / f"{a.preset}-{arch}-seed{s}.json"
        if found is None and not (path.exists() and not a.force):
            found = lr_find_suggestion(arch, a, train_dir)
        doc = cached(path, protocol(a, "seed"), a.force, lambda s=s: run_seed(arch, a, train_dir, test, lr, s, found))
        flag = "" if doc["trained"] else "  (did not train: never below its first epoch's validation loss)"
        print(f"{arch} seed {s}: lr {doc['lr']:g}, test MAE {doc['test']['mae']:.4f} "
              f"(TTA {doc['test_tta']['mae']:.4f}), {doc['train_seconds']:.0f} s{flag}", flush=True)


def summarise(out, preset):
    """bench/results/seeds_summary.json: per architecture the test MAE over its seeds (mean, sd) at its chosen rate, and
    for every pair the call `versus` makes (beyond twice the larger seed sd) with the mean paired difference (seed k
    against seed k). The README and the performance page quote this file; the runs stay in bench/results/seeds/, and
    each architecture lists the commands and dates of its runs (`sources`) and whether its chosen rate is the top of the
    sweep (`at_grid_edge`: then its best rate may lie above it, and its mean is an upper bound)."""
    runs = {}
    for p in sorted(Path(out).glob(f"{preset}-*-seed*.json")):
        d = json.loads(p.read_text())
        runs.setdefault(d["arch"], {})[d["seed"]] = d
    runs = {a: v for a, v in runs.items() if len(v) >= 3}      # a ranking claim needs three seeds
    runs = {a: v for a, v in runs.items() if len({d["lr"] for d in v.values()}) == 1}   # one rate per architecture
    archs = {a: dict(mean_sd([d["test"]["mae"] for d in v.values()]), trained=all(d["trained"] for d in v.values()),
                     tta=mean_sd([d["test_tta"]["mae"] for d in v.values()]), lr=next(iter(v.values()))["lr"],
                     rates=next(iter(v.values()))["protocol"]["rates"], seeds=sorted(v),
                     sources=sorted({(d["command"], d["date"][:10]) for d in v.values()})) for a, v in runs.items()}
    for v in archs.values(): v["at_grid_edge"] = v["lr"] == max(v["rates"])     # the best rate may lie above the sweep
    order = sorted(archs, key=lambda a: archs[a]["mean"])
    pairs = [dict(first=x, second=y, call=versus(archs[x], archs[y]),
                  paired=mean_sd([runs[x][s]["test"]["mae"] - runs[y][s]["test"]["mae"]
                                  for s in sorted(set(runs[x]) & set(runs[y]))]))
             for i, x in enumerate(order) for y in order[i + 1:]]
    return write_json(RESULTS / "seeds_summary.json",
                      dict(header("seeds"), preset=preset, ranking=order, archs=archs, pairs=pairs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rates", default="1e-3,3e-3,1e-2")
    ap.add_argument("--sweep-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--preset", default="model_ii")
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--force", action="store_true", help="re-run runs whose results exist")
    ap.add_argument("--summary", action="store_true",
                    help="only (re)write bench/results/seeds_summary.json from the runs on disk")
    a = ap.parse_args()
    if a.summary: return print(f"wrote {summarise(a.out, a.preset)}")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.rates = [float(r) for r in a.rates.split(",")]
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.data import open_source
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.simulate import get_preset
    import deeplense_fastai.inference, deeplense_fastai.interpret, deeplense_fastai.learner  # noqa: F401 (loaded now:
    # a sweep of hours scores with the code it started with, whatever is edited meanwhile)
    p = get_preset(a.preset)
    train_dir = cache_dir("bench") / f"{a.preset}-n{a.n_train}-seed0"
    test_dir = cache_dir("bench") / f"{a.preset}-n{a.n_test}-seed99"
    write_dataset(train_dir, p, a.n_train, 0, progress=False, log=lambda *x: None)
    write_dataset(test_dir, p, a.n_test, 99, progress=False, log=lambda *x: None)
    print(f"# {a.preset}: {a.n_train} training, {a.n_test} test images; rates {a.rates} "
          f"({a.sweep_epochs} epochs, seed 0), seeds {a.seeds} ({a.epochs} epochs); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    test = open_source(test_dir)
    for arch in a.archs.split(","): sweep(arch, a, train_dir, test)
    print(f"wrote {summarise(a.out, a.preset)}")


if __name__ == "__main__":
    main()
