"""Transfer to a user's own files: pretrain on simulated Model II, fine-tune on a few hundred DeepLense-layout files,
and compare with training from scratch on the same files, all scored on the same held-out files.

    python bench/transfer.py [--pretrain 4000] [--files 400] [--test 600] [--epochs 8] [--json bench/results/transfer.json]

Pretraining: Model II as DeepLense stored it, noiseless (DeepLenseSim wrote `model + model`, see REFERENCES.md),
64x64, axion class only (the only class with a mass). The "user's files" are written by the simulator in the
DeepLense per-file layout with other seeds, in two scenarios: noiseless like the pretraining set, and with Model
II's noise (a shift the pretrained model never saw). Recipe: xresnet_small, Ranger, one-cycle; fine-tuning starts from
the pretrained run (`init=`), trains the head alone for one epoch (`freeze_epochs=1`), then the whole network at a
third of the learning rate. Scratch uses the same epochs and the full learning rate. Results (per-epoch validation
MAE, final test MAE/RMSE/R^2 beside the constant-mean baseline) go to a JSON file with machine, versions, command and date.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from _results import header, write_json   # bench/ is on the path when this script runs


def train(src, epochs, lr, path, init=None, freeze=0, valid=None):
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner, fit
    dls = lens_dataloaders(src, bs=64, valid=valid, progress=False)
    learn = regression_learner(dls, "xresnet_small", path=path, init=init)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): fit(learn, epochs, lr, freeze_epochs=freeze, log=None, checkpoint=False)
    names = learn.recorder.metric_names[1:-1]
    curve = [float(v[names.index("mae")]) for v in learn.recorder.values] if "mae" in names else []
    return learn, curve, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain", type=int, default=4000)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--json", default="bench/results/transfer.json")
    a = ap.parse_args()
    import warnings; warnings.filterwarnings("ignore")
    import torch
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import open_source
    from deeplense_fastai.learner import export_run
    from deeplense_fastai.inference import predict
    from deeplense_fastai.interpret import regression_report
    root = cache_dir("bench_transfer")
    pre, files, test = root / f"pre-n{a.pretrain}", root / f"files-n{a.files}", root / f"test-n{a.test}"
    write_dataset(pre, "model_ii", n=a.pretrain, seed=0, noise=False, progress=False)
    out = dict(header("transfer"), settings=vars(a), scenarios={})
    work = Path(tempfile.mkdtemp())
    set_seed(0)
    learn, pre_curve, pre_secs = train(pre, a.epochs, a.lr, work / "pre")
    export_run(learn, work / "pre_run", pickle=False)
    # two kinds of "your files": the same recipe as the pretraining set (noiseless, as DeepLense stored Model II),
    # and the same lenses observed with Model II's noise, a shift the pretrained model has never seen
    for scenario, noise in (("files like the simulations (noiseless)", False), ("noisy files (a shift from the simulations)", True)):
        tag = "noisy" if noise else "clean"
        files, test = root / f"files-{tag}-n{a.files}", root / f"test-{tag}-n{a.test}"
        write_dataset(files, "model_ii", n=a.files, seed=101, fmt="deeplense", classes=("axion",), noise=noise, progress=False)
        write_dataset(test, "model_ii", n=a.test, seed=202, fmt="deeplense", classes=("axion",), noise=noise, progress=False)
        test_src = open_source(test, progress=False)
        y = test_src.labels["log10_m_axion"].to_numpy()
        runs = {"pretrained only (zero-shot)": (work / "pre_run", pre_curve, pre_secs)}
        set_seed(0)
        learn, curve, secs = train(files, a.epochs, a.lr, work / f"scratch-{tag}")
        export_run(learn, work / f"scratch_run-{tag}", pickle=False)
        runs["from scratch on the files"] = (work / f"scratch_run-{tag}", curve, secs)
        set_seed(0)
        learn, curve, secs = train(files, a.epochs, a.lr / 3, work / f"ft-{tag}", init=work / "pre_run", freeze=1)
        export_run(learn, work / f"ft_run-{tag}", pickle=False)
        runs["pretrained, fine-tuned on the files"] = (work / f"ft_run-{tag}", curve, secs)
        out["scenarios"][scenario] = {}
        for name, (run, curve, secs) in runs.items():
            mu = predict(run, test_src, notice=lambda *_: None)["pred_log10_m_axion"].to_numpy()
            rep = regression_report(y, mu)
            out["scenarios"][scenario][name] = dict(valid_mae_per_epoch=curve, train_seconds=round(secs, 1), test=rep)
            print(f"{scenario[:20]:20s} {name:38s} test MAE {rep['mae']:.3f} (baseline {rep['baseline_mae']:.3f})  R^2 {rep['r2']:.3f}  {secs:.0f} s")
    write_json(a.json, out)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
