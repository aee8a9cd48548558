"""A learning curve at equal optimiser steps: test MAE against the number of distinct training images, online
simulation included, with the simulation's time charged from a throughput measured in the same run.

    OMP_NUM_THREADS=1 nice -n 19 python bench/curve.py              # the CPU protocol, resumable
    python bench/curve.py --smoke                                    # a minute: checks that the script works
    python bench/curve.py --summary                                  # bench/results/curve.json from the runs on disk

Why. Online simulation was compared with a fixed training set at equal wall clock (bench/online.py), which compares two
machine loads as much as two data regimes. Here every run takes the same number of optimiser steps (--steps, default
896 = 8 epochs of the 7,168 images bench/seeds.py trains on, batches of 64), so the only difference between runs is how
many distinct images those steps see: N in --sizes (512, 2,048, 7,168, 28,672), each seen over and over, or a new image
at every step (online: 57,344 distinct images). A set of 64k images would be seen less than once in this budget: the
online point stands for it.

Protocol. Model II with its noise, xresnet_small (the cheapest architecture of bench/seeds.py) at the peak rate
bench/seeds.py's sweep chose for it (read from its results file), Ranger, one-cycle over all the steps, per-image
min-max, the square's symmetries; the final weights (no best-epoch pick: the runs have different numbers of epochs);
the same 800 simulated validation images; scored on the 2,000 test images of seed 99 (bench/accuracy.py's test set).
Every run draws its training images from the online simulator: a fixed set of N images is the simulator's first N
training indices rendered again at every pass (the same images each epoch, as from a file), online takes the next
epoch's indices each epoch. Batches are contiguous blocks of the simulator's indices (the online simulator renders
canonical blocks, in order), so a fixed set meets the same batches in the same order at every pass, under new random
symmetries of the square; a fixed set read from files would reshuffle them. A seed sets the
initialisation and the augmentations; the images do not depend on it.

Time. Each run measures its training time without the simulation (seconds inside the simulator are subtracted) and
the simulator's throughput in that same run (images rendered / seconds inside it). The charged time of a run is its
training time plus its distinct images divided by that throughput: a fixed set is simulated once, online pays for
every image. Those are the figures to compare; wall clock on a shared machine is not.

Each run is one JSON file bench/results/curve/<preset>-<arch>-<n or online>-seed<s>.json (machine, versions, date,
command, protocol, per-epoch losses, test MAE with its bootstrap interval, times), written when the run ends; a run
whose file exists with the same protocol is skipped. Runs go seed 0 first for every size, then the further seeds of
the online run and of the fixed set of --epoch-size images (the comparison the page calls first), then the rest.
CPU budget (one thread of the 2-core sandbox, beside other work): 6 to 11 minutes per run, the small sets the longest
(every epoch validates on the 800 images, and a set of 512 takes 112 epochs). The recorded seconds include those
validation passes and the machine's load: the pages quote no sentence built from them.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from _results import RESULTS, header, mean_sd, trained, versus, write_json
from accuracy import score

OUT = RESULTS / "curve"


def fixed_images():
    "A callback that keeps an online DataLoader on the images of epoch 0: a fixed set rendered again at every pass."
    from fastai.callback.core import Callback

    class FixedImages(Callback):
        order = -10                                     # after OnlineEpoch (-20), which would move to new images

        def before_train(self): self.dl.set_epoch(0)

    return FixedImages()


def run(a, n, seed, test):
    "One run: N distinct images (None: online) for a.steps steps; losses, test scores and times."
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.data import online_dataloaders
    from deeplense_fastai.learner import fit, regression_learner
    epoch_size = n or a.epoch_size
    if epoch_size % a.bs or a.steps * a.bs % epoch_size:  # else the epochs would not hold exactly a.steps steps
        raise SystemExit(f"{epoch_size} images: use sizes that are multiples of {a.bs} and divide {a.steps * a.bs}")
    epochs = a.steps * a.bs // epoch_size
    set_seed(seed)
    dls = online_dataloaders(a.preset, epoch_size=epoch_size, bs=a.bs, valid=a.valid, seed=0, progress=False)
    learn = regression_learner(dls, a.arch, path=cache_dir("bench", "runs", f"curve-{a.preset}-{a.arch}"),
                               cbs=[fixed_images()] if n else [])
    sim = dls.train.sim
    t0, s0, i0 = time.perf_counter(), sim.seconds, sim.images
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs, a.lr, log=None, checkpoint=False, save_best=False)
    wall, sim_s, sim_n = time.perf_counter() - t0, sim.seconds - s0, sim.images - i0
    distinct = n or epochs * epoch_size
    valid = [float(v[1]) for v in learn.recorder.values]
    rep, pred, y = score(learn.model, learn.lens_config, test, tta=False)
    return dict(n_distinct=distinct, online=n is None, seed=seed, epochs=epochs, steps=epochs * epoch_size // a.bs,
                lr=a.lr, valid_loss=valid, trained=trained(valid) if len(valid) > 1 else None, test=rep,
                train_seconds=round(wall - sim_s, 1), sim_seconds=round(sim_s, 1), sim_images=sim_n,
                sim_img_per_s=round(sim_n / sim_s, 1),
                charged_seconds=round(wall - sim_s + distinct * sim_s / sim_n, 1),
                predictions=dict(y=y, pred=pred))


def summarise(out, proto, sizes, dest=RESULTS / "curve.json"):
    """bench/results/curve.json: per number of distinct images (and online) the test MAE over seeds (mean, sd), the
    charged and training seconds, and the calls `versus` makes between neighbouring sizes and between online and the
    fixed set of the seeds bench's size. The README and the performance page quote this file."""
    runs = {}
    for p in sorted(Path(out).glob(f"{proto['preset']}-{proto['arch']}-*-seed*.json")):
        d = json.loads(p.read_text())
        if d.get("protocol") == proto: runs.setdefault("online" if d["online"] else d["n_distinct"], []).append(d)
    keys = [k for k in sizes + ["online"] if k in runs]
    rows = {str(k): dict(mean_sd([d["test"]["mae"] for d in runs[k]]), n_distinct=runs[k][0]["n_distinct"],
                         trained=all(d["trained"] is not False for d in runs[k]),
                         baseline_mae=runs[k][0]["test"]["baseline_mae"], seeds=sorted(d["seed"] for d in runs[k]),
                         charged_seconds=mean_sd([d["charged_seconds"] for d in runs[k]])["mean"],
                         train_seconds=mean_sd([d["train_seconds"] for d in runs[k]])["mean"],
                         sim_img_per_s=mean_sd([d["sim_img_per_s"] for d in runs[k]])["mean"]) for k in keys}
    pairs = [(str(x), str(y)) for x, y in zip(keys, keys[1:])]
    if "online" in rows and str(proto["epoch_size"]) in rows: pairs.append(("online", str(proto["epoch_size"])))
    calls = [dict(first=x, second=y, call=versus(rows[x], rows[y]), mae_ratio=rows[x]["mean"] / rows[y]["mean"])
             for x, y in pairs]
    return write_json(dest, dict(header("curve"), protocol=proto, rows=rows, calls=calls))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,2048,7168,28672", help="distinct training images of the fixed runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=896)
    ap.add_argument("--epoch-size", type=int, default=7168, help="images per epoch of the online run")
    ap.add_argument("--arch", default="xresnet_small")
    ap.add_argument("--preset", default="model_ii")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--valid", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, results in a temporary folder")
    ap.add_argument("--summary", action="store_true",
                    help="only (re)write bench/results/curve.json from the runs on disk")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    out = OUT
    if a.smoke:
        import tempfile
        sizes, seeds, a.steps, a.epoch_size, a.valid, a.n_test = [64, 128], [0], 4, 128, 64, 100
        out = Path(tempfile.mkdtemp())
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.data import open_source
    from deeplense_fastai.dataset import write_dataset
    import deeplense_fastai.inference, deeplense_fastai.interpret, deeplense_fastai.learner  # noqa: F401 (loaded now)
    chosen = RESULTS / "seeds" / f"{a.preset}-{a.arch}-seed0.json"
    a.lr = json.loads(chosen.read_text())["lr"]          # the rate bench/seeds.py's sweep chose for this architecture
    test_dir = cache_dir("bench") / f"{a.preset}-n{a.n_test}-seed99"
    write_dataset(test_dir, a.preset, a.n_test, 99, progress=False, log=lambda *x: None)
    test = open_source(test_dir)
    proto = dict(preset=a.preset, arch=a.arch, steps=a.steps, bs=a.bs, lr=a.lr, valid=a.valid, n_test=a.n_test,
                 epoch_size=a.epoch_size, rate_from=f"bench/results/seeds/{chosen.name}")
    if a.summary: return print(f"wrote {summarise(out, proto, sizes)}")
    print(f"# {a.arch} on {a.preset}, {a.steps} steps of {a.bs}, lr {a.lr:g}; sizes {sizes} and online; seeds {seeds}",
          flush=True)
    key = [n for n in sizes if n == a.epoch_size] + [None]          # the online-against-fixed call gets its seeds first
    order = [(seeds[0], n) for n in sizes + [None]] + [(s, n) for s in seeds[1:] for n in key] + \
            [(s, n) for s in seeds[1:] for n in sizes + [None] if n not in key]
    for seed, n in order:
        path = out / f"{a.preset}-{a.arch}-{n or 'online'}-seed{seed}.json"
        if path.exists() and json.loads(path.read_text()).get("protocol") == proto: continue
        doc = dict(header("curve"), protocol=proto, **run(a, n, seed, test))
        write_json(path, doc)
        print(f"{n or 'online'} seed {seed}: test MAE {doc['test']['mae']:.4f}, {doc['epochs']} epochs, training "
              f"{doc['train_seconds']:.0f} s, simulation {doc['sim_img_per_s']:.0f} img/s, charged "
              f"{doc['charged_seconds']:.0f} s",
              flush=True)
        summarise(out, proto, sizes, dest=out / "summary.json" if a.smoke else RESULTS / "curve.json")


if __name__ == "__main__":
    main()
