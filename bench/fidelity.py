"""Fidelity: our simulator against DeepLenseSim's recipe run through lenstronomy, image statistics side by side.

    python bench/fidelity.py [--n 96] [--seed 0] [--presets model_i,model_ii,model_iii,fsub,euclid_2026]
                             [--out bench/results/fidelity.json]
    python bench/fidelity.py --transfer [--epochs 8] [--device cpu]    # adds the train-on-ours check to the JSON

For each preset, N images (classes cycling no_sub, cdm, axion; cdm only for fsub) are made twice from the same random
draws: by deeplense_fastai (float32, the library default) and by the reference pipeline of tests/_lenstronomy_ref.py
(DeepLenseSim's lens construction, lenstronomy ImageModel or SimAPI with the instrument numbers frozen from
lenstronomy <= 1.14.0 / HST.py, float64). Two variants:

- noiseless: Model I's model image; Models II/III as DeepLenseSim stored them (`model + model`);
- noisy: Model I's counts (as stored); Models II/III model + SimAPI.noise_for_model (what our presets add by default).

Per image: peak, background std (outer frame of width npix/8), total flux (sum of pixels), ring radius (flux-weighted
mean distance from the centre of the pixels above 10% of the peak, arcsec). The JSON holds, per preset and variant,
each statistic's mean and std over the N images for both pipelines, their difference in standard errors, a two-sample
KS p-value, and (noiseless, same parameters) the largest pixel difference relative to the image peak.

`--transfer` runs the accuracy protocol of bench/accuracy.py --small (model_ii, 8k training images from our
simulator, ResNet18, Ranger + one-cycle 3e-3, 8 epochs) and evaluates the model on 2k test images made by our
simulator and on the same 2k test images (same draws, noise included) made by the lenstronomy reference pipeline; it
stores both MAEs under "transfer" in the JSON (the criterion: no more than 10% MAE lost on the lenstronomy images).
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import _results  # noqa: E402  (bench/ is on the path when this script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))           # the one reference pipeline, shared with the tests

STATS = ("peak", "background_std", "total_flux", "ring_radius")


def image_stats(img, pixel_scale):
    """The four statistics of one (H, W) image."""
    n = img.shape[-1]
    c = (np.arange(n) - (n - 1) / 2) * pixel_scale
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    w = max(1, n // 8)
    frame = np.ones_like(img, dtype=bool)
    frame[w:-w, w:-w] = False
    peak = float(img.max())
    bright = img > 0.1 * peak
    return dict(peak=peak, background_std=float(img[frame].std()), total_flux=float(img.sum()),
                ring_radius=float((img[bright] * r[bright]).sum() / img[bright].sum()))


def compare(ours, theirs):
    """Mean/std of each statistic for both pipelines, difference in standard errors, KS p-value."""
    from scipy.stats import ks_2samp
    out = {}
    for s in STATS:
        a, b = np.array([o[s] for o in ours]), np.array([t[s] for t in theirs])
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        out[s] = dict(ours_mean=float(a.mean()), ours_std=float(a.std(ddof=1)), lenstronomy_mean=float(b.mean()),
                      lenstronomy_std=float(b.std(ddof=1)), rel_diff_of_means=float(a.mean() / b.mean() - 1),
                      diff_in_se=float((a.mean() - b.mean()) / se) if se > 0 else 0.0,
                      ks_pvalue=float(ks_2samp(a, b).pvalue))
    return out


def versions():
    import importlib.metadata as md
    v = _results.versions()
    for pkg in ("scipy", "astropy"):
        try: v[pkg] = md.version(pkg)
        except md.PackageNotFoundError: v[pkg] = None
    return v


def lenstronomy_test_set(name="model_ii", n=2000, seed=99, log=print):
    """The test set `write_dataset(..., name, n, seed)` holds, made again by the lenstronomy reference pipeline (same
    draws, noise included, image b's noise seeded 10_000 + b), float32 (n, 1, H, W), and its labels (n, targets frame).
    Cached once as a .npy beside our cached test set (cache_dir('bench')/lenstronomy-<name>-n<n>-seed<seed>.npy): the
    one place benches (this --transfer, bench/online.py) get it from."""
    import _lenstronomy_ref as ref
    from deeplense_fastai.core import atomic_write, cache_dir
    from deeplense_fastai.simulate import PRESETS, draw_parameters, labels_frame
    prm = draw_parameters(PRESETS[name], np.arange(n), seed)
    path = cache_dir("bench") / f"lenstronomy-{name}-n{n}-seed{seed}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        images = np.stack([ref.deeplensesim_image(name, prm, b, noise=True, seed=10_000 + b) for b in range(n)])
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f: np.save(f, images.astype(np.float32)[:, None])
        log(f"# lenstronomy test set: {n} {name} images in {time.perf_counter() - t0:.0f} s -> {path}")
    return np.load(path), labels_frame(prm)


class _Images:
    "Raw images (n, 1, H, W) seen as a source: what `predict_source` reads (len and image(i))."
    def __init__(self, images): self.images = images
    def __len__(self): return len(self.images)
    def image(self, i): return np.ascontiguousarray(self.images[i])


def score_images(model, cfg, images, y, device=None, bs=256):
    """regression_report of `model` on raw images (n, 1, H, W), normalised as the run's DataLoaders did
    (predict_source)."""
    from deeplense_fastai.inference import predict_source
    from deeplense_fastai.interpret import regression_report
    mu, _ = predict_source(model, cfg, _Images(images), bs=bs)
    keep = np.isfinite(y).all(1)
    return regression_report(y[keep], mu[keep], baseline=cfg.target_mean)


def transfer(a):
    """Train on our images, evaluate on ours and on lenstronomy's (same draws): the accuracy protocol of
    bench/accuracy.py."""
    from deeplense_fastai.core import cache_dir, get_device, set_seed
    from deeplense_fastai.simulate import PRESETS
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import lens_dataloaders, open_source
    from deeplense_fastai.learner import regression_learner, fit
    name, n_train, n_test, arch = "model_ii", a.n_train, a.n_test, "resnet18"
    p, device = PRESETS[name], get_device(a.device)
    train_dir = cache_dir("bench") / f"fidelity-{name}-n{n_train}-seed0"
    test_dir = cache_dir("bench") / f"fidelity-{name}-n{n_test}-seed99"
    write_dataset(train_dir, p, n_train, 0, progress=False, log=lambda *x: None, device=device)
    write_dataset(test_dir, p, n_test, 99, progress=False, log=lambda *x: None, device=device)
    test = open_source(test_dir)
    t0 = time.perf_counter()
    ref_images, ref_labels = lenstronomy_test_set(name, n_test, 99)
    t_ref = time.perf_counter() - t0                   # the build time when not cached yet, else the load time
    set_seed(0)
    dls = lens_dataloaders(train_dir, bs=64, seed=0, device=device)
    learn = regression_learner(dls, arch, path=cache_dir("bench", "runs", f"fidelity-{name}-{arch}"))
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        fit(learn, a.epochs, 3e-3, log=None, checkpoint=False)
    t_fit = time.perf_counter() - t0
    cfg = learn.lens_config

    def score(images, y): return score_images(learn.model, cfg, images, y, device)

    y = test.labels[cfg.targets].to_numpy(dtype=np.float64)
    y_ref = ref_labels[cfg.targets].to_numpy(dtype=np.float64)
    assert np.allclose(y, y_ref, equal_nan=True), "test labels differ between the two test sets"
    ours_images = np.stack([test.image(i) for i in range(len(test))])
    r_ours, r_ref = score(ours_images, y), score(ref_images, y_ref)
    out = dict(preset=name, arch=arch, n_train=n_train, n_test=n_test, epochs=a.epochs, bs=64, lr=3e-3,
               optimiser="regression_learner default (Ranger) + one-cycle, as bench/accuracy.py", device=str(device),
               mae_ours_test=r_ours["mae"], mae_lenstronomy_test=r_ref["mae"], r2_ours_test=r_ours["r2"],
               r2_lenstronomy_test=r_ref["r2"], baseline_mae=r_ours["baseline_mae"],
               mae_ratio=r_ref["mae"] / r_ours["mae"], criterion="mae_lenstronomy_test <= 1.1 * mae_ours_test",
               passed=bool(r_ref["mae"] <= 1.1 * r_ours["mae"]),
               seconds=dict(fit=round(t_fit, 1), lenstronomy=round(t_ref, 1)),
               **dict(_results.header("fidelity"), versions=versions()))
    print(json.dumps(out, indent=1))
    path = Path(a.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["transfer"] = out
    _results.write_json(path, doc)
    print(f"# added 'transfer' to {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="images per preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--presets", default="model_i,model_ii,model_iii,fsub,euclid_2026")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity.json"))
    ap.add_argument("--transfer", action="store_true",
                    help="train on ours, evaluate on lenstronomy's images (Model II)")
    ap.add_argument("--epochs", type=int, default=8, help="--transfer: training epochs")
    ap.add_argument("--device", default=None, help="--transfer: torch device")
    ap.add_argument("--n-train", type=int, default=8000, help="--transfer: training images")
    ap.add_argument("--n-test", type=int, default=2000, help="--transfer: test images")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    if a.transfer:
        return transfer(a)
    import _lenstronomy_ref as ref
    from deeplense_fastai.simulate import PRESETS, draw_parameters, make_images
    t_start = time.time()
    results = {}
    print("| preset | variant | statistic | ours mean (std) | lenstronomy mean (std) | rel. diff of means | "
          "diff / s.e. | KS p |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.presets.split(","):
        p = PRESETS[name]
        classes = ("cdm",) if name == "fsub" else ("no_sub", "cdm", "axion")
        prm = draw_parameters(p, np.arange(a.n), a.seed, classes)
        results[name] = {"classes": list(classes), "source": p.source}
        for variant, noise in (("noiseless", False), ("noisy", True)):
            t0 = time.perf_counter()
            imgs, _ = make_images(p, 0, a.n, a.seed, classes, noise=noise)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs = [ref.deeplensesim_image(name, prm, b, noise=noise, seed=1000 * a.seed + b) for b in range(a.n)]
            t_ref = time.perf_counter() - t0
            ours = imgs.double().numpy()
            entry = compare([image_stats(o, p.instrument.pixel_scale) for o in ours],
                            [image_stats(t, p.instrument.pixel_scale) for t in theirs])
            if not noise:
                rel = [float(np.abs(o - t).max() / np.abs(t).max()) for o, t in zip(ours, theirs)]
                entry["paired_max_abs_diff_of_peak"] = dict(median=float(np.median(rel)), max=float(np.max(rel)))
            entry["seconds"] = dict(ours=round(t_ours, 3), lenstronomy=round(t_ref, 3))
            results[name][variant] = entry
            for s in STATS:
                e = entry[s]
                print(f"| {name} | {variant} | {s} | {e['ours_mean']:.5g} ({e['ours_std']:.3g}) | "
                      f"{e['lenstronomy_mean']:.5g} ({e['lenstronomy_std']:.3g}) | {e['rel_diff_of_means']:+.2%} | "
                      f"{e['diff_in_se']:+.2f} | {e['ks_pvalue']:.3f} |",
                      flush=True)
            if not noise:
                d = entry["paired_max_abs_diff_of_peak"]
                print(f"| {name} | {variant} | paired max pixel diff / peak | "
                      f"median {d['median']:.2e}, max {d['max']:.2e} | | | | |")
    doc = dict(_results.header("fidelity"), versions=versions(), n_per_preset=a.n, seed=a.seed,
               dtype_ours="float32", dtype_lenstronomy="float64",
               statistics=dict(peak="largest pixel", background_std="std of the outer frame of width npix/8",
                               total_flux="sum of all pixels",
                               ring_radius="flux-weighted mean distance from the centre "
                                           "of the pixels above 10% of the peak, arcsec"),
               units="Model I / fsub: counts (noisy) or counts/s (noiseless); Models II/III: counts/s",
               wall_seconds=round(time.time() - t_start, 1), results=results)
    out = Path(a.out)
    if out.exists() and "transfer" in json.loads(out.read_text()):       # keep a recorded --transfer run
        doc["transfer"] = json.loads(out.read_text())["transfer"]
    _results.write_json(out, doc)
    print(f"# wrote {out} ({doc['wall_seconds']} s)")


if __name__ == "__main__":
    main()
