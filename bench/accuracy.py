"""Accuracy protocol: every architecture against ResNet18 on the same simulated data and budget.

    python bench/accuracy.py --small [--archs resnet18,...] [--epochs 8]     # CPU protocol (model_ii, 8k training images)
    python bench/accuracy.py --full --preset model_i --device cuda          # the published protocol (30k / 5k)

Data come from the simulator (train: seed 0; test: a disjoint seed), are written once into the cache and reused.
Each architecture trains with the DeepLense recipe (Ranger, one-cycle at 3e-3, per-image min-max, the square's
symmetries) for the same number of epochs; the table gives test MAE, RMSE and R^2 of log10(m/eV) (or f_sub for the
fsub preset) beside the constant-mean baseline, the parameter count and the training throughput. The rows are written
to bench/results/accuracy.json after each architecture (with machine, versions, date and command).
"""
import argparse
import platform
import time

import numpy as np
import torch

from _results import save

PUBLISHED = {"model_i": "MAE 0.274 (XResNet18 hybrid)", "model_ii": "MAE 0.216 (ResNet34)", "model_iii": "MAE 0.126 (XResNet18 hybrid)",
             "fsub": "MSE 6.1e-5, R^2 0.72 (ResNet18)"}
SMALL_ARCHS = "resnet18,resnet34,resnet50,xresnet18,mresunet_small,mresunet_att_small,attention_unet_small,residual_attention_small"
FULL_ARCHS = "resnet18,resnet34,resnet50,xresnet18,mresunet,mresunet_att,attention_unet,residual_attention_56"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--small", action="store_true", help="CPU protocol: model_ii, 8k training and 2k test images")
    g.add_argument("--full", action="store_true", help="published protocol: 30k training and 5k test images")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--archs", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--size", type=int, default=None, help="resize images (e.g. 64 for Model I on a CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="results file (default bench/results/accuracy.json)")
    a = ap.parse_args()
    import warnings; warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir, get_device, set_seed
    from deeplense_fastai.simulate import get_preset
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import lens_dataloaders, open_source
    from deeplense_fastai.learner import regression_learner, fit, predict_source
    from deeplense_fastai.models import count_parameters
    from deeplense_fastai.interpret import regression_report
    preset = a.preset or "model_ii"
    n_train, n_test = (8000, 2000) if a.small else (30000, 5000)
    epochs = a.epochs or (8 if a.small else 30)
    archs = (a.archs or (SMALL_ARCHS if a.small else FULL_ARCHS)).split(",")
    device = get_device(a.device)
    p = get_preset(preset)
    train_dir = cache_dir("bench") / f"{preset}-n{n_train}-seed0"
    test_dir = cache_dir("bench") / f"{preset}-n{n_test}-seed99"
    write_dataset(train_dir, p, n_train, 0, progress=False, log=lambda *x: None, device=device)
    write_dataset(test_dir, p, n_test, 99, progress=False, log=lambda *x: None, device=device)
    test = open_source(test_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"# {preset}: {n_train} training (10% of them for validation) and {n_test} test images; {epochs} epochs, bs {a.bs}, "
          f"Ranger + one-cycle {a.lr}; {name}; torch {torch.__version__}")
    print(f"# published ({preset}): {PUBLISHED.get(preset, '-')}")
    print("| architecture | params | test MAE | test RMSE | test R^2 | baseline MAE | train img/s | train time |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in archs:
        set_seed(0)
        dls = lens_dataloaders(train_dir, bs=a.bs, seed=0, size=a.size, device=device)
        learn = regression_learner(dls, arch, path=cache_dir("bench", "runs", f"{preset}-{arch}"))
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            fit(learn, epochs, a.lr, log=None, checkpoint=False)
        dt = time.perf_counter() - t0
        cfg = learn.lens_config
        mu, _ = predict_source(learn.model, cfg, test, bs=256)
        y = test.labels[cfg["targets"]].to_numpy(dtype=np.float64)
        keep = np.isfinite(y).all(1)
        rep = regression_report(y[keep], mu[keep], baseline=cfg["target_mean"])
        row = dict(arch=arch, params=count_parameters(learn.model), mae=rep["mae"], rmse=rep["rmse"], r2=rep["r2"], mse=rep["mse"],
                   baseline_mae=rep["baseline_mae"], img_per_s=epochs * cfg["n_train"] / dt, seconds=dt, preset=preset, epochs=epochs)
        rows.append(row)
        print(f"| {arch} | {row['params'] / 1e6:.2f}M | {row['mae']:.4f} | {row['rmse']:.4f} | {row['r2']:.3f} | "
              f"{row['baseline_mae']:.4f} | {row['img_per_s']:.0f} | {dt / 60:.1f} min |", flush=True)
        save("accuracy", a.json, device=name, preset=preset, n_train=n_train, n_test=n_test, epochs=epochs,
             published=PUBLISHED.get(preset), settings=vars(a), table=rows)


if __name__ == "__main__":
    main()
