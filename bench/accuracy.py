"""Accuracy protocol: every architecture of the proposal on the same simulated data, the same recipe, one table.

    python bench/accuracy.py --small [--archs resnet18,...] [--epochs 8]  # CPU protocol (model_ii, 8k training images)
    python bench/accuracy.py --full --preset model_i --device cuda        # the published protocol (30k / 5k)

Data come from the simulator (train: seed 0, 10% of it held out for validation; test: seed 99), are written once into
the cache and reused. Each architecture: a short learning-rate finder (fastai's `lr_find`, 100 steps from 1e-6 to
1e-1, weights restored afterwards) whose smoothed-loss minimum, clipped to [1e-3, 1e-2], is the peak rate of the
one-cycle schedule (see `find_lr` for why not `valley`); then the DeepLense recipe (Ranger, one-cycle, per-image
min-max, the square's symmetries) for the same number of epochs, the epoch with the best validation loss kept; seeds
fixed. The held-out test set is scored with and without test-time augmentation (the eight symmetries of the square),
with a bootstrap 68%/95% interval of the MAE (1,000 resamples of the test set) and the per-image predictions kept, so
that two architectures can be compared by a paired bootstrap.

One JSON file per architecture, bench/results/accuracy/<preset>-<arch>.json (machine, versions, date, command), written
when the architecture is done; an architecture whose file exists with the same protocol is skipped (the sweep resumes
where it stopped; --force re-runs). The trained weights are exported (pickle-free) into the cache, runs/accuracy-*,
for the attention maps (bench/attention.py).

    python bench/accuracy.py --small --online [--archs ...]                  # the same table with online simulation

--online: each architecture whose fixed-data result exists is trained again on images simulated as they are needed
(online_dataloaders: 7,200 new images per epoch, never one twice; the same 800 validation images, the same test set,
the same peak learning rate as its fixed run, the same recipe and best-epoch rule) for the same wall-clock budget as
the fixed run: 8 epochs' worth of training steps, less the steps that the simulation's own time would have bought.
Measured in the run itself, the budget is spent when images_seen * (1 + simulation seconds / other training seconds)
reaches 8 * 7,200 (the one-cycle schedule follows that charged progress, and the epoch in progress is cut short and
validated). Charging a ratio measured in the same process, rather than comparing clock readings taken months apart
on a shared machine, keeps the budget equal however busy the machine is. Results: bench/results/accuracy_online/.
"""
import argparse
import platform
import time

import numpy as np
import torch

import json
from pathlib import Path

from _results import RESULTS, header, write_json

PUBLISHED = {"model_i": "MAE 0.274 (XResNet18 hybrid)", "model_ii": "MAE 0.216 (ResNet34)",
             "model_iii": "MAE 0.126 (XResNet18 hybrid)",
             "fsub": "MSE 6.1e-5, R^2 0.72 (ResNet18)"}
SMALL_ARCHS = ("resnet18,xresnet18,xresnet_small,mresunet_small,mresunet_att_small,attention_unet_small,"
               "residual_attention_small,resnet34,resnet50,attention_unet,residual_attention_56,mresunet,mresunet_att,"
               "resnet101,residual_attention_92")   # every registered model, cheapest first (the sweep resumes)
FULL_ARCHS = "resnet18,resnet34,resnet50,xresnet18,mresunet,mresunet_att,attention_unet,residual_attention_56"


def bootstrap_mae(err, n=1000, seed=0):
    """68% and 95% bootstrap intervals of the mean absolute error, resampling the test set."""
    rng = np.random.default_rng(seed)
    e = np.abs(np.asarray(err, dtype=np.float64))
    means = e[rng.integers(0, len(e), (n, len(e)))].mean(1)
    return dict(mae_lo68=float(np.quantile(means, 0.16)), mae_hi68=float(np.quantile(means, 0.84)),
                mae_lo95=float(np.quantile(means, 0.025)), mae_hi95=float(np.quantile(means, 0.975)))


def find_lr(learn):
    """The peak learning rate of the one-cycle schedule: where fastai's lr_find has its smoothed loss minimum (its
    `minimum` suggestion times ten), clipped to [1e-3, 1e-2]. The finder's curves for these regressions are shallow
    (the standardised loss moves between about 1.1 and 0.95), so `valley` and `steep` land on noise far below any rate
    that trains; the loss minimum is the stable feature."""
    from fastai.callback.schedule import valley, minimum
    with learn.no_bar(), learn.no_logging():
        res = learn.lr_find(start_lr=1e-6, end_lr=1e-1, num_it=100, show_plot=False, suggest_funcs=(minimum, valley))
    found = 10 * float(res.minimum)
    return float(np.clip(found, 1e-3, 1e-2)), dict(loss_minimum=found, valley=float(res.valley))


def protocol(a, preset, n_train, n_test, epochs):
    return dict(preset=preset, n_train=n_train, n_test=n_test, epochs=epochs, bs=a.bs, size=a.size,
                lr="lr_find (100 steps, 1e-6 to 1e-1): smoothed-loss minimum, clipped to [1e-3, 1e-2]" if a.lr is None
                else a.lr)


def score(model, cfg, test, tta):
    from deeplense_fastai.inference import predict_source
    from deeplense_fastai.interpret import regression_report
    mu, _ = predict_source(model, cfg, test, bs=128, tta=tta)
    y = test.labels[cfg.targets].to_numpy(dtype=np.float64)
    keep = np.isfinite(y).all(1)
    rep = regression_report(y[keep], mu[keep], baseline=cfg.target_mean)
    rep.update(bootstrap_mae(mu[keep, 0] - y[keep, 0]))
    return rep, [round(float(v), 5) for v in mu[keep, 0]], [round(float(v), 5) for v in y[keep, 0]]


def run_arch(arch, a, preset, train_dir, test, epochs, device):
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner, fit, export_run
    from deeplense_fastai.models import count_parameters, count_macs
    set_seed(0)
    dls = lens_dataloaders(train_dir, bs=a.bs, seed=0, size=a.size, device=device)
    learn = regression_learner(dls, arch, path=cache_dir("bench", "runs", f"accuracy-{preset}-{arch}"))
    t0 = time.perf_counter()
    lr, found = (a.lr, None) if a.lr is not None else find_lr(learn)
    t1 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs, lr, log=None, checkpoint=False)
    dt = time.perf_counter() - t1
    export_run(learn, cache_dir("bench", "runs", f"accuracy-{preset}-{arch}", "run"), pickle=False)
    cfg = learn.lens_config
    plain, pred, y = score(learn.model, cfg, test, tta=False)
    tta, pred_tta, _ = score(learn.model, cfg, test, tta=True)
    size = cfg.size or test.image_shape[-1]
    return dict(arch=arch, params=count_parameters(learn.model),
                gmacs=round(count_macs(learn.model.cpu(), size) / 1e9, 3),
                image_px=size, lr=lr, lr_found=found, lr_find_seconds=t1 - t0, train_seconds=dt,
                train_img_per_s=epochs * cfg.n_train / dt, test=plain, test_tta=tta,
                predictions=dict(y=y, pred=pred, pred_tta=pred_tta))


def run_online(arch, fixed, a, preset, train_dir, test, epochs, device):
    "The fixed run's architecture, learning rate and budget, on images simulated as they are needed."
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.data import online_dataloaders, open_source, split_indices
    from deeplense_fastai.learner import regression_learner, fit
    from deeplense_fastai.online import Budget
    set_seed(0)
    train_src = open_source(train_dir)
    train_idx, valid_idx = split_indices(train_src, seed=0)          # the fixed run's split: its validation images
    n_train, valid = len(train_idx), train_src.subset(valid_idx)
    dls = online_dataloaders(preset, epoch_size=n_train, bs=a.bs, valid=valid, seed=0, size=a.size, device=device)
    learn = regression_learner(dls, arch, path=cache_dir("bench", "runs", f"accuracy-online-{preset}-{arch}"))
    total = epochs * n_train if a.max_images is None else a.max_images
    cb = Budget.charged_images(total)
    learn.add_cb(cb)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        fit(learn, epochs, fixed["lr"], log=None, checkpoint=False)
    dt = time.perf_counter() - t0
    learn.remove_cb(cb)
    cfg = learn.lens_config
    plain, pred, y = score(learn.model, cfg, test, tta=False)
    tta, pred_tta, _ = score(learn.model, cfg, test, tta=True)
    sim_s = cb.sim_seconds()
    return dict(arch=arch, params=fixed["params"], gmacs=fixed["gmacs"], image_px=fixed["image_px"], lr=fixed["lr"],
                budget_images=total, images_seen=cb.images, sim_seconds=sim_s,
                sim_share=sim_s / cb.train_s, train_seconds=cb.train_s, seconds=dt,
                train_img_per_s=cb.images / cb.train_s, fixed_train_seconds=fixed["train_seconds"],
                fixed_train_img_per_s=fixed["train_img_per_s"], fixed_test=fixed["test"],
                fixed_test_tta=fixed["test_tta"],
                test=plain, test_tta=tta, predictions=dict(y=y, pred=pred, pred_tta=pred_tta))


def done(path, proto, force):
    "Is this architecture's result already there, measured on the same protocol (the sweep resumes past it)?"
    return path.exists() and not force and json.loads(path.read_text()).get("protocol") == proto


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--small", action="store_true", help="CPU protocol: model_ii, 8k training and 2k test images")
    g.add_argument("--full", action="store_true", help="published protocol: 30k training and 5k test images")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--archs", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="fixed peak learning rate (default: lr_find per architecture)")
    ap.add_argument("--size", type=int, default=None, help="resize images (e.g. 64 for Model I on a CPU)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--force", action="store_true", help="re-run architectures whose results exist")
    ap.add_argument("--out", default=None,
                    help="folder of the per-architecture results (default: bench/results/accuracy, "
                    "or accuracy_online with --online)")
    ap.add_argument("--online", action="store_true", help="online simulation at each fixed run's wall-clock budget")
    ap.add_argument("--fixed", default=str(RESULTS / "accuracy"),
                    help="with --online: folder of the fixed-data results")
    ap.add_argument("--max-images", type=int, default=None,
                    help="with --online: cap the budget (a quick check of the script)")
    a = ap.parse_args()
    a.out = a.out or str(RESULTS / ("accuracy_online" if a.online else "accuracy"))
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir, get_device
    from deeplense_fastai.simulate import get_preset
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import open_source
    import deeplense_fastai.inference, deeplense_fastai.interpret, deeplense_fastai.learner  # noqa: F401 (loaded now, so
    # that a run of an hour scores with the code it started with, whatever is edited meanwhile)
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
    proto = protocol(a, preset, n_train, n_test, epochs)
    print(f"# {preset}: {n_train} training (10% for validation), {n_test} test images; {epochs} epochs, bs {a.bs}; "
          f"lr {proto['lr']}; {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    if a.online: return main_online(a, archs, preset, train_dir, test, epochs, device, proto)
    print("| architecture | params | GMACs | lr | test MAE (95% bootstrap) | MAE with TTA | R^2 | train img/s | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        path = Path(a.out) / f"{preset}-{arch}.json"
        if done(path, proto, a.force):
            print(f"| {arch} | (done: {path.name}) |", flush=True)
            continue
        row = run_arch(arch, a, preset, train_dir, test, epochs, device)
        t, tt = row["test"], row["test_tta"]
        print(f"| {arch} | {row['params'] / 1e6:.2f}M | {row['gmacs']:.2f} | {row['lr']:.1e} | {t['mae']:.4f} "
              f"({t['mae_lo95']:.4f}-{t['mae_hi95']:.4f}) | {tt['mae']:.4f} | {t['r2']:.3f} | "
              f"{row['train_img_per_s']:.0f} | {row['train_seconds'] / 60:.1f} min |", flush=True)
        write_json(path, {**header("accuracy"), "protocol": proto, "published": PUBLISHED.get(preset), **row})


def main_online(a, archs, preset, train_dir, test, epochs, device, proto):
    "The online table: every architecture with a fixed-data result of the same protocol, at that run's budget."
    print("| architecture | fixed MAE | online MAE (95% bootstrap) | MAE with TTA | images seen | "
          "simulation share | time |")
    print("|---|---|---|---|---|---|---|")
    for arch in archs:
        src, path = Path(a.fixed) / f"{preset}-{arch}.json", Path(a.out) / f"{preset}-{arch}.json"
        fixed = json.loads(src.read_text()) if src.exists() else None
        if fixed is None or fixed.get("protocol") != proto:
            print(f"| {arch} | (no fixed-data result of this protocol in {a.fixed}: run it first) |", flush=True)
            continue
        online_proto = dict(proto, online=f"charged wall-clock budget of the fixed run ({a.max_images or epochs} "
                            f"{'images' if a.max_images else 'epochs'})", fixed_date=fixed["date"])
        if done(path, online_proto, a.force):
            print(f"| {arch} | (done: {path.name}) |", flush=True)
            continue
        row = run_online(arch, fixed, a, preset, train_dir, test, epochs, device)
        t, tt = row["test"], row["test_tta"]
        print(f"| {arch} | {fixed['test']['mae']:.4f} | {t['mae']:.4f} ({t['mae_lo95']:.4f}-{t['mae_hi95']:.4f}) | "
              f"{tt['mae']:.4f} | "
              f"{row['images_seen']} | {row['sim_share']:.1%} | {row['seconds'] / 60:.1f} min |", flush=True)
        write_json(path, {**header("accuracy_online"), "protocol": online_proto, "published": PUBLISHED.get(preset),
                          **row})


if __name__ == "__main__":
    main()
