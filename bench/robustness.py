"""When the sky is not the simulator: train on one world, test on another, with the OOD flag's detection rate.

    OMP_NUM_THREADS=1 nice -n 19 python bench/robustness.py train     # the training runs (resumable)
    OMP_NUM_THREADS=1 python bench/robustness.py score                 # every (train, test) pair -> results JSON
                                                                      # (pairs cached by weights digest)

Protocol (CPU; issue 22). Model II (64x64, Euclid VIS as DeepLenseSim ran it), axion images, target log10 m_axion.
Each training world A is trained by the user's command, exactly as a user runs it (a subprocess, default flags):

    deeplense train --preset A --n 8000 --arch xresnet_small --loss flow --epochs 8 --seed 0 --out RUN

(xresnet_small: the cheapest architecture that learns this task within 8 CPU epochs, bench/results/seeds.) A is one of
`model_ii` (DeepLenseSim's fixed lens and smooth source), `model_ii_nuisance` (main lens and source varied per image,
smooth source) and `model_ii_nuisance_clumpy` (varied, and 2-8 star-forming knots). Every run is scored on four test
worlds B of 2,000 images each (seed 99, never seen in training): {fixed, nuisance} x {Sersic, clumpy}. Per (A, B):
the MAE of the posterior median against the constant guess (the training mean), the share of 68% and 95% central
intervals holding the truth, the largest gap between nominal and empirical coverage over the levels 0.1..0.9, the median
68% half-width, the share of points outside the training range (`in_prior` false), and the share `ood` flags (its
threshold flags 5% of the run's own validation images: the false-alarm rate on A's world, by construction about 5%).
`coverage_error_unflagged` is the coverage error of the images `ood` lets through: what a user who drops the flagged
images is left with. `ood_rate_summary_only` is the share the summary alone would flag (the score before the
stem's features were added) with its threshold set to flag as many of the training world's own test images as `ood`
does (the same operating point), and `ood_auroc_summary_only` its AUROC; `ood_rate_by_knot_share` splits the flag
rate of a clumpy test world by the share of the source's light in its knots. Before scoring, each run's OOD reference is
refitted with the library's current score (the summary and the stem's channel statistics; see `refit_ood`), so runs
trained before that score existed are measured as a run trained today would be.

The varied world's run at that budget stays near the constant guess, so three longer recipes train on it too (run
names `model_ii_nuisance@RECIPE`): `init`, the same budget starting from the fixed world's run (`--init`: its network
already reads the vortex); `online`, new images every batch for 32 epochs of 8,000 (four times the optimiser steps);
and `init_online`, both; the clumpy varied world is trained `online` too (the issue's "train on clumpy as well").
For the MAE target (the varied world's run within 1.3x the fixed world's MAE), `init_online_seed1` repeats `init_online`
with training seed 1 (from the same fixed-world run: the spread of the fine-tuning, not of the whole chain) and
`init_online_long` trains it for 64 epochs (whether more optimiser steps close the gap), and `init_online_long_seed1`
repeats that with training seed 1.
Their commands are recorded in the results' settings (`{model_ii}` stands for the fixed
world's run directory).

The runs live in the cache (DEEPLENSE_CACHE or ~/.cache/deeplense_fastai/bench/robustness); a finished run is not
retrained. `score --worlds A,B` rescores those runs and keeps the file's rows of the others as they were (each row has
its weights digest; `settings.scored` says when, on which machine, with which versions and command each run was
scored; a kept run whose weights changed on disk is refused until it is rescored). The results file records each run's
weights digest and OOD threshold, the commands, the machine and the date (its header: the last scoring's).
"""
import argparse
import functools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import save

WORLDS = ("model_ii", "model_ii_nuisance", "model_ii_nuisance_clumpy")
TESTS = ("model_ii", "model_ii_clumpy", "model_ii_nuisance", "model_ii_nuisance_clumpy")
TRAIN = ["--n", "8000", "--arch", "xresnet_small", "--loss", "flow", "--epochs", "8", "--seed", "0"]
# Longer recipes for the varied world, whose run above stays near the constant guess (issue 22): fine-tuning the fixed
# world's run (its network already reads the vortex), online simulation for four times the optimiser steps, and both.
# A recipe is `WORLD@NAME`; `{model_ii}` stands for the fixed world's run directory.
RECIPES = {"init": ["--init", "{model_ii}", "--n", "8000", "--epochs", "8", "--seed", "0"],
           "online": ["--online", "--epoch-size", "8000", "--arch", "xresnet_small", "--loss", "flow", "--epochs", "32",
                      "--seed", "0"],
           "init_online": ["--init", "{model_ii}", "--online", "--epoch-size", "8000", "--epochs", "32", "--seed", "0"],
           "init_online_seed1": ["--init", "{model_ii}", "--online", "--epoch-size", "8000", "--epochs", "32", "--seed",
                                 "1"],
           "init_online_long": ["--init", "{model_ii}", "--online", "--epoch-size", "8000", "--epochs", "64", "--seed",
                                "0"],
           "init_online_long_seed1": ["--init", "{model_ii}", "--online", "--epoch-size", "8000", "--epochs", "64",
                                      "--seed", "1"]}
LONGER = ("model_ii_nuisance@init", "model_ii_nuisance@online", "model_ii_nuisance@init_online",
          "model_ii_nuisance_clumpy@online", "model_ii_nuisance@init_online_seed1",
          "model_ii_nuisance@init_online_long", "model_ii_nuisance@init_online_long_seed1")
N_TEST, TEST_SEED = 2000, 99
LEVELS = np.round(np.arange(0.1, 1.0, 0.1), 2)


def run_dir(world: str) -> Path:
    from deeplense_fastai.core import cache_dir
    return cache_dir("bench", "robustness") / world


def recipe(run: str) -> tuple:
    "The training world of a run name (`WORLD` or `WORLD@RECIPE`) and its `deeplense train` arguments."
    world, _, name = run.partition("@")
    args = RECIPES[name] if name else TRAIN
    return world, [a.format(model_ii=run_dir("model_ii")) for a in args]


def train_run(name: str, out: Path, args) -> None:
    """`deeplense train ARGS --out OUT --quiet` as a subprocess (the user's command, no TTY), unless the run finished
    before (weights and config on disk); an unfinished one is replaced (`--force`)."""
    if (out / "weights.safetensors").exists() and (out / "config.json").exists():
        print(f"{name}: trained before ({out})", flush=True)
        return
    cmd = [str(Path(sys.executable).with_name("deeplense")), "train", *args, "--out", str(out), "--quiet"]
    cmd += ["--force"] if out.exists() else []
    t0 = time.time()
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)


def train(worlds) -> None:
    "Train each world's run with the CLI unless it finished before."
    for w in worlds:
        world, args = recipe(w)
        train_run(w, run_dir(w), ["--preset", world, *args])


def test_set(world: str) -> Path:
    from deeplense_fastai.dataset import cached_simulation
    return cached_simulation(world, N_TEST, TEST_SEED)


REF_IMAGES, CAL_N, CAL_SEED = 4000, 1000, 10_000     # the OOD refit: training images of the world, held-out images


def _batches(cfg, path, n: int = None):
    "The images of a dataset path, normalised as the run's DataLoaders did, in batches of 256."
    import torch
    from deeplense_fastai.data import open_source
    src = open_source(path)
    n = len(src) if n is None else min(n, len(src))
    for s in range(0, n, 256):
        yield cfg.normalise(torch.from_numpy(np.stack([src.image(i) for i in range(s, min(s + 256, n))])))


@functools.lru_cache(maxsize=1)
def _loaded(run: Path, ood_sha256: str):
    "`load_run(run)`, once for all the pairs of a run (`ood_sha256`, its OOD reference's digest, keys a refit apart)."
    from deeplense_fastai.inference import load_run
    return load_run(run)


def summary_distances(run: Path, test: Path) -> np.ndarray:
    "The summary's Mahalanobis distance from the training summaries (the score before the stem was added)."
    from deeplense_fastai.core import file_digest
    from deeplense_fastai.learner import mahalanobis, ood_features
    model, cfg = _loaded(run, file_digest(run / "ood.safetensors"))
    mean, prec, scale = model.ood_reference.parts["summary"]
    return mahalanobis(ood_features(model, _batches(cfg, test), stem=False)["summary"], mean, prec)


def refit_ood(w: str) -> None:
    """Refit a run's OOD reference with the library's current score (`learner.fit_ood`'s `OODReference.fit` on
    `ood_features`): 4,000 images of the run's training world (the cached 8,000-image set, seed 0: the fixed-world runs
    trained on it, the online runs on images of the same world) and 1,000 held-out images (seed 10,000). Runs trained
    before the stem features existed carry a summary-only reference; training today writes this one."""
    import json
    import torch
    from deeplense_fastai.core import atomic_write, file_digest
    from deeplense_fastai.dataset import cached_simulation
    from deeplense_fastai.inference import load_run
    from deeplense_fastai.learner import OODReference, ood_features
    run = run_dir(w)
    world = recipe(w)[0]
    model, cfg = load_run(run)       # refitted every time: the same images give the same file (and cached pairs)
    ref = OODReference.fit(ood_features(model, _batches(cfg, cached_simulation(world, 8000, 0), REF_IMAGES)),
                           ood_features(model, _batches(cfg, cached_simulation(world, CAL_N, CAL_SEED), CAL_N)))
    ref.save(run / "ood.safetensors", file_digest(run / "weights.safetensors"))
    raw = json.loads((run / "config.json").read_text())
    raw["ood"] = dict(ref.info(), refit="bench/robustness.py refit_ood")
    with atomic_write(run / "config.json") as tmp: tmp.write_text(json.dumps(raw, indent=1))
    print(f"{w}: OOD reference refitted ({ref.info()['score']}; threshold {ref.threshold:.3f})", flush=True)


def score_pair(run: Path, test: Path, cfg) -> dict:
    "Every figure of one (run, test world) pair, from predict's columns and the grid posteriors' PIT values."
    import torch
    from deeplense_fastai.inference import predict, run_posteriors
    from deeplense_fastai.posterior import grid_pit
    pred = predict(run, test, notice=lambda m: None)
    grid, logp, srcs, _ = run_posteriors(run, test, notice=lambda m: None)
    y = srcs[0].labels["log10_m_axion"].to_numpy(dtype=np.float64)
    pit = grid_pit(logp[:, 0], grid[0], torch.as_tensor(y, dtype=logp.dtype)).numpy()
    cover = {f"{c:.1f}": float(np.mean(np.abs(pit - 0.5) <= c / 2)) for c in LEVELS}
    med = pred["pred_log10_m_axion"].to_numpy()
    return dict(mae=float(np.mean(np.abs(med - y))), baseline_mae=float(np.mean(np.abs(cfg.target_mean[0] - y))),
                coverage_68=float(np.mean((pred["q16_log10_m_axion"] <= y) & (y <= pred["q84_log10_m_axion"]))),
                coverage_95=float(np.mean(np.abs(pit - 0.5) <= 0.475)),
                coverage_error=float(max(abs(v - float(k)) for k, v in cover.items())), coverage=cover,
                half_width_68=float(np.median((pred["q84_log10_m_axion"] - pred["q16_log10_m_axion"]) / 2)),
                ood_rate=float(pred["ood"].astype(float).mean()),
                coverage_error_unflagged=_coverage_error(pit[~pred["ood"].to_numpy(dtype=bool)]),
                ood_rate_by_knot_share=_by_knot_share(srcs[0].labels, pred["ood"].to_numpy(dtype=bool)),
                summary_scores=summary_distances(run, test),
                out_of_prior=float((~pred["in_prior"]).astype(float).mean()),
                ood_scores=pred["ood_score"].to_numpy())


KNOT_SHARES = (0.1, 0.2, 0.3, 0.4)    # thirds of the Knots part's flux_fraction range (the clumpy presets' default)


def _by_knot_share(labels, flags: np.ndarray):
    "The share `ood` flags among images whose knots carry [a, b) of the source's light (None without knots)."
    if "knot_fraction" not in labels: return None
    f = labels["knot_fraction"].to_numpy()
    return {f"[{a}, {b})": float(flags[(f >= a) & (f < b)].mean()) for a, b in zip(KNOT_SHARES, KNOT_SHARES[1:])}


def _coverage_error(pit: np.ndarray):
    "Largest gap between nominal and empirical coverage of central intervals over LEVELS (None without images)."
    if not len(pit): return None
    return float(max(abs(np.mean(np.abs(pit - 0.5) <= c / 2) - c) for c in LEVELS))


ARRAYS = ("ood_scores", "summary_scores")     # per-image scores kept with a cached pair


def cached_pair(run: str, test: str, digest: str, compute) -> dict:
    """One (run, test world) pair's figures, cached under the run's weights and OOD reference digests and the test set's
    seed and size."""
    import json
    from deeplense_fastai.core import cache_dir, file_digest
    f = cache_dir("bench", "robustness_scores") / f"{run}__{test}.json"
    key = dict(weights_sha256=digest, ood_sha256=file_digest(run_dir(run) / "ood.safetensors"), n_test=N_TEST,
               test_seed=TEST_SEED, levels=LEVELS.tolist(), columns=4)
    if f.is_file() and (old := json.loads(f.read_text()))["key"] == key:
        return dict(old["pair"], **{k: np.asarray(old["pair"][k]) for k in ARRAYS})
    pair = compute()
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(key=key, pair=dict(pair, **{k: pair[k].tolist() for k in ARRAYS}))))
    tmp.replace(f)
    return pair


def score(worlds) -> None:
    "Score every trained run on every test world; AUROC of ood_score against the run's own world's test images."
    from sklearn.metrics import roc_auc_score
    from deeplense_fastai.core import file_digest
    from deeplense_fastai.learner import read_run_config
    kept, scored = _kept_rows(worlds)      # refuses before any work when a kept row's run changed on disk
    rows = []
    for w in worlds:
        run = run_dir(w)
        cfg = read_run_config(run)
        world = recipe(w)[0]
        refit_ood(w)
        cfg = read_run_config(run)
        digest = file_digest(run / "weights.safetensors")
        pairs = {t: cached_pair(w, t, digest, lambda: score_pair(run, test_set(t), cfg)) for t in TESTS}
        own, own_s = pairs[world]["ood_scores"], pairs[world]["summary_scores"]
        # the summary alone at the same operating point: its threshold flags as many of the own world's test images
        thr_s = np.quantile(own_s, 1 - pairs[world]["ood_rate"])
        for t, r in pairs.items():
            s, ss = r.pop("ood_scores"), r.pop("summary_scores")
            auc = None if t == world else float(roc_auc_score(np.r_[np.zeros(len(own)), np.ones(len(s))],
                                                              np.r_[own, s]))
            auc_s = None if t == world else float(roc_auc_score(np.r_[np.zeros(len(own_s)), np.ones(len(ss))],
                                                                np.r_[own_s, ss]))
            rows.append(dict(train=w, test=t, **r, ood_rate_summary_only=float(np.mean(ss > thr_s)), ood_auroc=auc,
                             ood_auroc_summary_only=auc_s, n_test=N_TEST, ood_threshold=cfg.extra["ood"]["threshold"],
                             weights_sha256=digest))
            shown = {k: v for k, v in rows[-1].items() if k not in ("coverage", "weights_sha256")}
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in shown.items()}, flush=True)
    recipes = {k: " ".join(["deeplense train --preset WORLD", *v]) for k, v in RECIPES.items()}
    from _results import header
    now = {k: v for k, v in header("robustness").items() if k in ("date", "machine", "versions", "command")}
    table = sorted(kept + rows, key=lambda r: (_order(r["train"]), TESTS.index(r["test"])))
    settings = dict(train=" ".join(["deeplense train --preset WORLD", *TRAIN]), recipes=recipes,
                    ood_refit=" ".join(refit_ood.__doc__.split()),
                    model_ii="the fixed world's run, bench/robustness.py's model_ii",
                    worlds=sorted({r["train"] for r in table}, key=_order), **_shared(),
                    scored=dict(scored, **{w: now for w in worlds}))
    save("robustness", table=table, settings=settings)


def _order(run: str) -> int:
    "A run's place in the table: the worlds, then the longer recipes, in the order they are listed here."
    names = [*WORLDS, *LONGER]
    return names.index(run) if run in names else len(names)


def _shared() -> dict:
    "The settings every row of the results file must share: the test worlds, their size and seed, the levels."
    return dict(tests=list(TESTS), n_test=N_TEST, test_seed=TEST_SEED, levels=LEVELS.tolist())


def _kept_rows(worlds) -> tuple:
    """The rows of the results file for runs not scored now, kept as they were, and when and how each kept run was
    scored (`settings.scored`; else the file's date, versions and command): scoring a subset of runs adds to the file.
    Refused (SystemExit) when the kept rows were scored on other test sets, or when a kept run's weights on disk are not
    the ones its rows were scored with (rescore it; a run no longer on disk keeps its rows, a record of what it was)."""
    import json
    from deeplense_fastai.core import file_digest
    from _results import RESULTS
    f = RESULTS / "robustness.json"
    if not f.is_file(): return [], {}
    old = json.loads(f.read_text())
    here = _shared()
    if (diff := [k for k in here if old["settings"].get(k) != here[k]]):
        sys.exit(f"{f}: its rows were scored with other {', '.join(diff)}; score every run (--worlds with all of them)")
    kept = [r for r in old["table"] if r["train"] not in worlds]
    for run, digest in {r["train"]: r["weights_sha256"] for r in kept}.items():      # each run's weights read once
        w = run_dir(run) / "weights.safetensors"
        if w.is_file() and file_digest(w) != digest:
            sys.exit(f"{run}: its weights changed since its rows were scored; add it to --worlds to rescore it")
    when = old["settings"].get("scored", {})
    first = {k: old[k] for k in ("date", "machine", "versions", "command")}
    return kept, {r["train"]: when.get(r["train"], first) for r in kept}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "score"])
    ap.add_argument("--worlds", default=",".join(WORLDS + LONGER))
    a = ap.parse_args()
    worlds = a.worlds.split(",")
    if a.stage == "train": train(worlds)
    else: score(worlds)


if __name__ == "__main__":
    main()
