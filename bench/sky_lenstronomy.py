"""Knowing the limits on images this library did not make (issue 22): the fixed world's run on lenstronomy's renders.

    OMP_NUM_THREADS=1 nice -n 19 python bench/robustness.py train --worlds model_ii    # the run, if not trained yet
    OMP_NUM_THREADS=1 python bench/sky_lenstronomy.py [--n 1000]     # bench/results/sky_lenstronomy.json

bench/robustness.py measures the OOD flag and the posteriors on skies this library rendered, with every run's OOD
reference refitted by the bench. Here the robustness bench's fixed-world run

    deeplense train --preset model_ii --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed 0

is used as a user gets it: its own OOD reference, fitted when it was trained (threshold: 5% of its held-out images
flagged). It predicts on test sets that lenstronomy renders from raw draws with lenstronomy's own noise
(tests/_lenstronomy_ref.py, written independently of the library: DeepLenseSim's Model II recipe, SimAPI with
DeepLenseSim's Euclid VIS numbers; `varied_image` for the presets with parts), for four skies (axion images, seed 99,
the first --n of the robustness bench's test draws): the recipe as is (`model_ii`), the fixed lens with 2-8
star-forming knots in the source (`model_ii_clumpy`), the main lens and source varied (`model_ii_nuisance`) and both
(`model_ii_nuisance_clumpy`). Beside each, the same draws rendered by this library (its cached test set), so that a gap
between the two renderers is the renderer's and a gap between skies is the sky's. Per (sky, renderer): the share `ood`
flags, the MAE of the posterior median of log10 m_axion against the constant guess (the training mean), the share of
68% intervals holding the truth, the largest gap between nominal and empirical coverage of central intervals over
0.1..0.9 (from the grid posteriors' PIT values), and the median 68% half-width. Also the share `ood` flags among the
run's own training-world images read through `predict` (training and validation images apart), and whether the
validation images score the same through the training DataLoaders (where the reference was fitted) as through
`predict`.

The run's OOD reference is the one `deeplense train` fits today: a reference written before the threshold became the
conformal quantile of all held-out images (`OOD_SPLIT_FIT`: scales on one random half of the validation images, the
threshold on the other) is refitted once by the library's `fit_ood` on DataLoaders built as `deeplense train` built the
run's (the same 8,000 images, 10% held out, seed 0) and written into the run in its place; the earlier file is kept
as ood-split.safetensors, and `run.ood.before` in the results gives the share the earlier reference flags among the
fresh images of the run's own world and among its own images, beside the current one's. (A reference that
bench/robustness.py refitted on other images is refitted again the same way.)

The lenstronomy renders are cached beside the library's test sets (cache_dir('bench')/lenstronomy-<sky>-n<n>-seed99.npy;
bench/fidelity.py's file for model_ii). The results record the run's weights digest and OOD threshold.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _results import save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))      # the reference pipeline

SKIES = ("model_ii", "model_ii_clumpy", "model_ii_nuisance", "model_ii_nuisance_clumpy")
SEED, LEVELS = 99, np.round(np.arange(0.1, 1.0, 0.1), 2)


def lenstronomy_set(sky, n, log=print):
    "lenstronomy's render of the first n test draws of `sky` (noise seeded 10_000 + b), cached; and their labels."
    import _lenstronomy_ref as ref
    from deeplense_fastai.core import atomic_write, cache_dir
    from deeplense_fastai.simulate import PRESETS, draw_parameters, labels_frame
    if sky == "model_ii":
        from fidelity import lenstronomy_test_set
        return lenstronomy_test_set(sky, n, SEED, log)
    prm = draw_parameters(PRESETS[sky], np.arange(n), SEED)
    path = cache_dir("bench") / f"lenstronomy-{sky}-n{n}-seed{SEED}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        images = np.stack([ref.varied_image(prm, b, noise=True, seed=10_000 + b) for b in range(n)])
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f: np.save(f, images.astype(np.float32)[:, None])
        log(f"# lenstronomy test set: {n} {sky} images in {time.perf_counter() - t0:.0f} s -> {path}")
    return np.load(path), labels_frame(prm)


def library_set(sky, n):
    "The library's render of the same draws: the first n images of its cached test set (the robustness bench's)."
    from deeplense_fastai.dataset import cached_simulation
    from deeplense_fastai.sources import open_source
    src = open_source(cached_simulation(sky, 2000, SEED))
    return np.stack([src.image(i) for i in range(n)]).astype(np.float32), src.labels.iloc[:n].reset_index(drop=True)


def score(run, images, labels):
    "The figures of one (sky, renderer): predict's columns and the grid posteriors' PIT values."
    import torch
    from deeplense_fastai.inference import predict, run_posteriors
    from deeplense_fastai.posterior import grid_pit
    quiet = lambda m: None
    pred = predict(run, images, notice=quiet)
    grid, logp, _, cfg = run_posteriors(run, images, notice=quiet)
    y = labels["log10_m_axion"].to_numpy(dtype=np.float64)
    pit = grid_pit(logp[:, 0], grid[0], torch.as_tensor(y, dtype=logp.dtype)).numpy()
    lo, hi = pred["q16_log10_m_axion"].to_numpy(), pred["q84_log10_m_axion"].to_numpy()
    return dict(n=len(y), ood_rate=float(pred["ood"].astype(float).mean()),
                mae=float(np.mean(np.abs(pred["pred_log10_m_axion"].to_numpy() - y))),
                baseline_mae=float(np.mean(np.abs(cfg.target_mean[0] - y))),
                coverage_68=float(np.mean((lo <= y) & (y <= hi))),
                coverage_error=float(max(abs(np.mean(np.abs(pit - 0.5) <= c / 2) - c) for c in LEVELS)),
                half_width_68=float(np.median((hi - lo) / 2)),
                out_of_prior=float((~pred["in_prior"].astype(bool)).mean()))


def own_training_set_ood(run, ref):
    """The share `ood` flags among the run's own 8,000 training-world images (`cached_simulation('model_ii', 8000, 0)`)
    read through `predict`, as a user's images are: its training images and its validation images apart (the split
    `deeplense train` made: 10%, seed 0), and the validation images' scores through the training DataLoaders (the
    path the reference was fitted on) against `predict`'s (the largest relative difference)."""
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.dataset import cached_simulation
    from deeplense_fastai.inference import load_run, predict
    from deeplense_fastai.learner import ood_features
    data = cached_simulation("model_ii", 8000, 0)
    pred = predict(run, data, notice=lambda m: None)
    dls = lens_dataloaders(data, "log10_m_axion", valid_pct=0.1, seed=0, progress=False)
    valid = np.sort(np.asarray(dls.valid.items))
    flags, scores = pred["ood"].to_numpy(bool), pred["ood_score"].to_numpy()
    via_dls = ref.score(ood_features(load_run(run)[0], dls.valid))[np.argsort(np.asarray(dls.valid.items))]
    return dict(n=len(pred), ood_rate=float(flags.mean()), n_valid=len(valid),
                ood_rate_valid=float(flags[valid].mean()), ood_rate_train=float(np.delete(flags, valid).mean()),
                valid_score_largest_relative_difference=float(np.max(np.abs(via_dls - scores[valid]) / scores[valid])))


def _dataloaders():
    "DataLoaders as `deeplense train` built the run's: its 8,000 images, 10% held out, seed 0, augmented batches."
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.dataset import cached_simulation
    return lens_dataloaders(cached_simulation("model_ii", 8000, 0), "log10_m_axion", valid_pct=0.1, seed=0,
                            norm="minmax", augment=True, progress=False)


def current_reference(run):
    """The run's OOD reference as `deeplense train` fits it today, refitted and written into the run (once) if it was
    fitted the earlier way; and the earlier reference (None if the run's was current)."""
    import shutil
    from types import SimpleNamespace
    from deeplense_fastai.config import RunConfig
    from deeplense_fastai.core import file_digest
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.learner import OOD_THRESHOLD_FIT, OODReference, fit_ood
    digest, old = file_digest(run / "weights.safetensors"), run / "ood-split.safetensors"
    ref, cfg = OODReference.load(run / "ood.safetensors", digest), RunConfig.read(run)
    by_bench = "refit" in (cfg.extra.get("ood") or {})     # robustness.py's refit (other images) is not training's
    if ref.threshold_fit == OOD_THRESHOLD_FIT and not by_bench:
        return ref, (OODReference.load(old, digest) if old.exists() else None)
    import torch
    torch.manual_seed(0)                                    # the augmentations of the training batches
    new = fit_ood(SimpleNamespace(dls=_dataloaders(), model=load_run(run)[0]))
    if not old.exists(): shutil.copy2(run / "ood.safetensors", old)
    before = OODReference.load(old, digest)
    new.save(run / "ood.safetensors", digest)
    cfg.extra["ood"] = new.info()
    cfg.write(run)
    return new, before


def flagged(run, ref, images) -> float:
    "The share of `images` (N, 1, H, W) that the OOD reference `ref` flags, through the run's network."
    import torch
    from deeplense_fastai.config import RunConfig
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.learner import ood_features
    model, cfg = load_run(run)[0], RunConfig.read(run)
    x = torch.from_numpy(np.asarray(images, np.float32))
    feats = ood_features(model, (cfg.normalise(x[s:s + 256]) for s in range(0, len(x), 256)))
    return float(np.mean(ref.score(feats) > ref.threshold))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="test images per sky (at most 2000; default 1000)")
    a = ap.parse_args(argv)
    from deeplense_fastai.config import RunConfig
    from deeplense_fastai.core import file_digest
    from robustness import TRAIN, run_dir
    run = run_dir("model_ii")
    if not (run / "weights.safetensors").exists():
        sys.exit(f"no trained run at {run}: OMP_NUM_THREADS=1 python bench/robustness.py train --worlds model_ii")
    digest = file_digest(run / "weights.safetensors")
    ref, before = current_reference(run)
    ood = dict(parts=sorted(ref.parts), threshold=ref.threshold, false_alarm=ref.false_alarm,
               n_reference=ref.n_reference, n_calibration=ref.n_calibration, threshold_fit=ref.threshold_fit)
    cfg = RunConfig.read(run)
    table = []
    for sky in SKIES:
        for renderer, (images, labels) in (("lenstronomy", lenstronomy_set(sky, a.n)), ("deeplense_fastai",
                                                                                       library_set(sky, a.n))):
            row = dict(sky=sky, renderer=renderer, **score(run, images, labels))
            print(f"{sky:26s} {renderer:17s} ood {row['ood_rate']:.3f}  MAE {row['mae']:.3f} (constant "
                  f"{row['baseline_mae']:.3f})  68% coverage {row['coverage_68']:.3f}  coverage error "
                  f"{row['coverage_error']:.3f}  half-width {row['half_width_68']:.3f}", flush=True)
            table.append(row)
    own = own_training_set_ood(run, ref)
    print(f"the run's own images through predict: ood flags {own['ood_rate']:.3f} of {own['n']} (training "
          f"{own['ood_rate_train']:.3f}, validation {own['ood_rate_valid']:.3f}); validation scores through the "
          f"DataLoaders differ from predict's by at most {own['valid_score_largest_relative_difference']:.1e}",
          flush=True)
    if before is not None:
        from deeplense_fastai.dataset import cached_simulation
        from deeplense_fastai.sources import open_source
        src = open_source(cached_simulation("model_ii", 8000, 0))
        own_images = np.stack([src.image(i) for i in range(len(src))])
        fresh = dict(lenstronomy=lenstronomy_set("model_ii", a.n)[0], deeplense_fastai=library_set("model_ii", a.n)[0])
        ood["before"] = dict(threshold=before.threshold, threshold_fit=before.threshold_fit,
                             **{f"fresh_{k}": flagged(run, before, v) for k, v in fresh.items()},
                             own_images=flagged(run, before, own_images))
        print(f"the earlier reference ({before.threshold_fit}) flags {ood['before']['fresh_lenstronomy']:.3f} / "
              f"{ood['before']['fresh_deeplense_fastai']:.3f} of the fresh model_ii images and "
              f"{ood['before']['own_images']:.3f} of the run's own", flush=True)
    trained = dict(train=["deeplense", "train", "--preset", "model_ii", *TRAIN], weights_sha256=digest, ood=ood,
                   target_mean=list(map(float, cfg.target_mean)))
    save("sky_lenstronomy", table=table, training_set=own, run=trained,
         settings=dict(vars(a), seed=SEED, skies=list(SKIES),
                       command="OMP_NUM_THREADS=1 python bench/sky_lenstronomy.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
