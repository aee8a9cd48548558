"""Online simulation against a fixed training set at equal wall-clock time (ResNet18, Model II), and the simulation's
share of a training step at 64x64 and 150x150.

    OMP_NUM_THREADS=1 python bench/online.py --minutes 6 --json bench/results/online.json
    OMP_NUM_THREADS=1 python bench/online.py --arch attention_unet --skip share --minutes 15 \\
        --json bench/results/online.json
    OMP_NUM_THREADS=1 python bench/online.py --gap 1024 --gap-epochs 20 --json bench/results/online.json
    python bench/online.py --smoke                  # a few seconds per run: checks that the script works

Protocol (the data of bench/accuracy.py --small): 8,000 Model II training images of seed 0, 10% of them held out for
validation; 2,000 test images of seed 99 (both written once into the cache). The fixed run trains on the 7,200 fixed
images (lens_dataloaders); the online run on images simulated as needed (online_dataloaders, epochs of the same size,
never an image twice). Both: ResNet18, Ranger, one-cycle at 3e-3 whose schedule follows the wall clock (the learning
rate at time t is the one-cycle value at t / budget), bs 64, per-image min-max, the square's symmetries, the same
800 validation images, stopped when the budget is spent (the epoch in progress is cut short and validated); the final
weights are scored on the 2,000 test images, and on the same 2,000 draws made by the lenstronomy reference pipeline
(DeepLenseSim's recipe, noise included: bench/fidelity.py's lenstronomy_test_set, built once and cached). The
simulation's share is the time spent inside OnlineSim (rendering, noise, labels) divided by the training phase's time,
simulating in the main process (num_workers=0).

--gap N: the generalisation gap instead, at equal steps: ResNet18 on N fixed training images (of the same 8,000) for
--gap-epochs epochs, against the same number of epochs of N new images each, one-cycle at 3e-3, the same 800 validation
images; per epoch the loss on the images just trained on (eval mode: the fixed set, or that epoch's online images;
fastai's own train_loss is a running average lagging ~50 batches), the validation loss, and the final test MAE are
merged into the JSON file under "gap" -> "N" (with their own command, date and machine), leaving the equal-time results
in it untouched.

--arch NAME (other than resnet18): the same equal-time runs for that architecture, merged into the JSON under
"archs" -> NAME (with their own command, date and machine); a resnet18 run rewrites the top level and keeps "gap"
and "archs".
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


from _results import header, machine, versions, write_json   # noqa: F401 (bench/ is on the path)


DEFAULT_ARCH = "resnet18"


KEYS = ("mae", "rmse", "r2", "mse", "baseline_mae")


def score(learn, test, device):
    "Scores on our simulator's test set (`test`, a LensSource) and on the same draws made by lenstronomy (`test.ref`)."
    from deeplense_fastai.inference import predict_source
    from deeplense_fastai.interpret import regression_report
    from fidelity import score_images
    cfg = learn.lens_config

    mu, _ = predict_source(learn.model, cfg, test, bs=256)
    y = test.labels[cfg.targets].to_numpy(dtype=np.float64)
    keep = np.isfinite(y).all(1)
    rep = regression_report(y[keep], mu[keep], baseline=cfg.target_mean)
    ref_images, ref_labels = test.ref
    ref = score_images(learn.model, cfg, ref_images, ref_labels[cfg.targets].to_numpy(dtype=np.float64), device)
    return {k: float(rep[k]) for k in KEYS}, {k: float(ref[k]) for k in KEYS}


def train_run(mode, dls, arch, budget, lr, test, device, path):
    from deeplense_fastai.core import set_seed
    from deeplense_fastai.learner import regression_learner
    from deeplense_fastai.online import Budget
    set_seed(0)
    learn = regression_learner(dls, arch, path=path)
    tb = Budget.seconds(budget)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(10_000, lr, cbs=[tb])
    seconds = time.perf_counter() - t0
    row = dict(mode=mode, arch=arch, seconds=round(seconds, 1), train_seconds=round(tb.train_s, 1),
               images_seen=tb.images,
               train_img_per_s=round(tb.images / tb.train_s, 1), epochs_started=len(tb.curve),
               distinct_images=tb.images if mode == "online" else min(tb.images, dls.lens_config.n_train),
               n_train=dls.lens_config.n_train, n_valid=dls.lens_config.n_valid, curve=tb.curve)
    row["test"], row["test_lenstronomy"] = score(learn, test, device)
    sim = getattr(dls.train, "sim", None)
    if sim is not None:
        row.update(sim_seconds=round(sim.seconds, 2), sim_images=sim.images,
                   sim_share=round(sim.seconds / tb.train_s, 4))
    return row


def sim_share(preset, arch, n_batches, bs, device, path):
    "Simulation's share of ResNet18 training steps on online batches (first batch excluded as warm-up)."
    from fastai.callback.core import Callback, CancelFitException
    from deeplense_fastai.learner import regression_learner
    from deeplense_fastai.data import online_dataloaders
    from deeplense_fastai.core import set_seed
    set_seed(0)
    dls = online_dataloaders(preset, epoch_size=(n_batches + 1) * bs, bs=bs, valid=bs, device=device)
    sim = dls.train.sim

    class Clock(Callback):
        "From the end of the first (warm-up) batch to the end of the training phase: batches 1..n, simulation included."
        order = 55

        def after_batch(self):
            if self.training and self.iter == 0:
                self.t0, self.s0, self.n0 = time.perf_counter(), sim.seconds, sim.images

        def after_train(self):
            self.t1 = time.perf_counter()
            raise CancelFitException
    clock = Clock()
    learn = regression_learner(dls, arch, path=path)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[clock])
    total = clock.t1 - clock.t0
    sim_s = sim.seconds - clock.s0
    imgs = sim.images - clock.n0
    p = dls.lens_config.image_shape
    return dict(preset=getattr(preset, "name", preset), image_px=p[0], arch=arch, bs=bs, batches=n_batches,
                sim_seconds=round(sim_s, 2),
                step_seconds=round(total, 2), sim_share=round(sim_s / total, 4), sim_img_per_s=round(imgs / sim_s, 1),
                train_img_per_s=round(n_batches * bs / total, 1))


def make_train_set_loss():
    from fastai.callback.core import Callback

    class TrainSetLoss(Callback):
        """After each epoch, the loss (eval mode) on the images just trained on: the fixed set, or this epoch's online
        images."""
        order = 65

        def before_fit(self): self.losses = []

        def after_epoch(self):
            dl = self.dls.train.new(shuffle=False, drop_last=False)
            if hasattr(dl, "set_epoch"): dl.set_epoch(self.epoch)
            self.model.eval()
            tot, n = 0., 0
            with torch.no_grad():
                for xb, yb in dl:
                    tot += float(self.loss_func(self.model(xb), yb)) * len(yb)
                    n += len(yb)
            self.losses.append(tot / n)

    return TrainSetLoss


def gap_runs(src, valid, n_fixed, epochs, a, test, device, path):
    """Fixed N images for E epochs against E epochs of N new images: per-epoch losses and the final test scores (the
    architecture, batch size and learning rate are the command's, `a`)."""
    arch, bs, lr = a.arch, a.bs, a.lr
    from deeplense_fastai.core import set_seed
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner, fit
    from deeplense_fastai.data import online_dataloaders
    from deeplense_fastai.online import OnlineEpoch
    TrainSetLoss = make_train_set_loss()
    rows = []
    for mode in ("fixed", "online"):
        set_seed(0)
        if mode == "fixed":
            dls = lens_dataloaders(src.subset(np.arange(n_fixed)), bs=bs, valid=valid, seed=0, device=device)
        else: dls = online_dataloaders("model_ii", epoch_size=n_fixed, bs=bs, valid=valid, seed=0, device=device)
        tsl = TrainSetLoss()
        learn = regression_learner(dls, arch, path=path / mode, cbs=[OnlineEpoch(), tsl])
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            fit(learn, epochs, lr, log=None, checkpoint=False, save_best=False)
        names = learn.recorder.metric_names[1:-1]
        curve = [dict(epoch=i, train_set_loss=tsl.losses[i], **{n: float(v) for n, v in zip(names, vals)})
                 for i, vals in enumerate(learn.recorder.values)]
        sc, sc_ref = score(learn, test, device)
        rows.append(dict(mode=mode, arch=arch, n_train_per_epoch=dls.lens_config.n_train, epochs=epochs,
                         distinct_images=dls.lens_config.n_train * (epochs if mode == "online" else 1),
                         seconds=round(time.perf_counter() - t0, 1), curve=curve, test=sc, test_lenstronomy=sc_ref))
        print(f"gap {mode}: final loss on the training images {curve[-1]['train_set_loss']:.3f}, "
              f"valid loss {curve[-1]['valid_loss']:.3f}, test MAE {sc['mae']:.4f} "
              f"(lenstronomy-made test set {sc_ref['mae']:.4f})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6., help="wall-clock budget of each run")
    ap.add_argument("--arch", default=DEFAULT_ARCH,
                    help="another architecture's runs are merged into the JSON under archs -> name")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--share-batches", type=int, default=6, help="training steps timed for the 150x150 share")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: fixed, online, share")
    ap.add_argument("--gap", type=int, default=None,
                    help="run the generalisation-gap comparison on this many fixed images")
    ap.add_argument("--gap-epochs", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny data and budget: checks that the script runs")
    ap.add_argument("--json", default=None, help="write the results here (e.g. bench/results/online.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import lens_dataloaders, open_source, split_indices
    from deeplense_fastai.data import online_dataloaders
    import deeplense_fastai.inference, deeplense_fastai.interpret, deeplense_fastai.learner, fidelity  # noqa: F401 (loaded
    # now, so that a run of half an hour scores with the code it started with)
    device = torch.device("cpu")
    n_train, n_test = (256, 64) if a.smoke else (8000, 2000)
    budget = 10. if a.smoke else a.minutes * 60
    skip = set(filter(None, a.skip.split(",")))
    train_dir = cache_dir("bench") / f"model_ii-n{n_train}-seed0"
    test_dir = cache_dir("bench") / f"model_ii-n{n_test}-seed99"
    write_dataset(train_dir, "model_ii", n_train, 0, progress=False, log=lambda *x: None)
    write_dataset(test_dir, "model_ii", n_test, 99, progress=False, log=lambda *x: None)
    test = open_source(test_dir)
    from fidelity import lenstronomy_test_set  # the one lenstronomy reference pipeline (tests/_lenstronomy_ref.py)
    test.ref = lenstronomy_test_set("model_ii", n_test, 99)
    assert np.allclose(test.labels[["log10_m_axion", "f_sub"]].to_numpy(float),
                       test.ref[1][["log10_m_axion", "f_sub"]].to_numpy(float), equal_nan=True), \
        "the lenstronomy-made test set's labels differ from the cached test set's"
    out = dict(header("online"), budget_seconds=budget, arch=a.arch, bs=a.bs, lr=a.lr,
               protocol=__doc__.split("Protocol")[1].strip() if "Protocol" in __doc__ else "", runs=[])
    runs = Path(cache_dir("bench", "runs"))
    fixed = lens_dataloaders(train_dir, bs=a.bs, seed=0, device=device)
    train_src = open_source(train_dir)
    train_idx, valid_idx = split_indices(train_src, seed=0)           # the split `fixed` trains and validates on
    valid = train_src.subset(valid_idx)
    if a.gap:
        n_fixed = min(a.gap, 64) if a.smoke else a.gap
        epochs = 2 if a.smoke else a.gap_epochs
        keep = train_idx[:n_fixed]
        gap = dict(command=out["command"], date=out["date"], machine=machine(), versions=versions(), n_fixed=n_fixed,
                   epochs=epochs, arch=a.arch, bs=a.bs, lr=a.lr,
                   runs=gap_runs(train_src.subset(keep), valid, n_fixed, epochs, a, test, device,
                                 runs / "online-bench-gap"))
        if a.json:
            path = Path(a.json)
            old = json.loads(path.read_text()) if path.exists() else {}
            old.setdefault("gap", {})[str(n_fixed)] = gap       # one entry per fixed-set size
            write_json(path, old)
            print(f"written {a.json} (key gap.{n_fixed})")
        return
    print(f"# budget {budget / 60:.1f} min per run; {a.arch}; {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}", flush=True)
    if "fixed" not in skip:
        r = train_run("fixed", fixed, a.arch, budget, a.lr, test, device, runs / "online-bench-fixed")
        out["runs"].append(r)
        print(f"fixed : test MAE {r['test']['mae']:.4f} (lenstronomy-made {r['test_lenstronomy']['mae']:.4f})  "
              f"{r['images_seen']} images seen ({r['distinct_images']} distinct), "
              f"{r['epochs_started']} epochs, {r['train_img_per_s']:.0f} img/s", flush=True)
    if "online" not in skip:
        dls = online_dataloaders("model_ii", epoch_size=fixed.lens_config.n_train, bs=a.bs, valid=valid, seed=0,
                                 device=device)
        r = train_run("online", dls, a.arch, budget, a.lr, test, device, runs / "online-bench-online")
        out["runs"].append(r)
        print(f"online: test MAE {r['test']['mae']:.4f} (lenstronomy-made {r['test_lenstronomy']['mae']:.4f})  "
              f"{r['images_seen']} images seen (all distinct), {r['epochs_started']} epochs, "
              f"{r['train_img_per_s']:.0f} img/s, simulation {r['sim_share']:.1%} of the training time", flush=True)
    by = {r["mode"]: r for r in out["runs"]}
    if len(by) == 2:
        out["mae_ratio_online_over_fixed"] = round(by["online"]["test"]["mae"] / by["fixed"]["test"]["mae"], 4)
        out["mae_ratio_online_over_fixed_lenstronomy"] = round(by["online"]["test_lenstronomy"]["mae"]
                                                               / by["fixed"]["test_lenstronomy"]["mae"], 4)
        print(f"online / fixed test MAE: {out['mae_ratio_online_over_fixed']:.3f}, on the lenstronomy-made test set "
              f"{out['mae_ratio_online_over_fixed_lenstronomy']:.3f} (target <= 0.85)", flush=True)
    if "share" not in skip:
        nb = 2 if a.smoke else a.share_batches
        out["share"] = []
        for preset in ("model_ii", "model_i"):
            s = sim_share(preset, a.arch, nb, a.bs, device, runs / "online-bench-share")
            out["share"].append(s)
            target = 0.15 if s["image_px"] <= 64 else 0.30
            print(f"share {preset} ({s['image_px']}px): simulation {s['sim_share']:.1%} of a training step "
                  f"(target <= {target:.0%}); sim {s['sim_img_per_s']:.0f} img/s, "
                  f"training {s['train_img_per_s']:.1f} img/s", flush=True)
    out["targets"] = dict(mae_ratio="<= 0.85", sim_share_64px="<= 0.15", sim_share_150px="<= 0.30")
    if a.json:
        path = Path(a.json)
        old = json.loads(path.read_text()) if path.exists() else {}
        if a.arch == DEFAULT_ARCH:                    # the main results; keep the merged gap and architecture entries
            out.update({k: old[k] for k in ("gap", "archs") if k in old})
            write_json(path, out)
            print(f"written {a.json}")
        else:                                         # a proposal architecture: merged under archs -> name
            old.setdefault("archs", {})[a.arch] = out
            write_json(path, old)
            print(f"written {a.json} (key archs.{a.arch})")


if __name__ == "__main__":
    main()
