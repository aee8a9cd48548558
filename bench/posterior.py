"""Posteriors you can trust: per-lens calibration, recalibration, and what N lenses say together.

    python bench/posterior.py                      # Model II log10 m (ResNet18, 8k protocol) and the fsub preset
    python bench/posterior.py --skip-fsub --epochs 8
    python bench/posterior.py --trials 200 --ns 1,10,50

Protocol (CPU scale, issue 13): Model II, ResNet18, the 8k-image accuracy protocol (8,000 training images, 10% of them
for validation and epoch choice, 8 epochs, Ranger + one-cycle 3e-3). Two runs on the same data: the flow posterior
head (`--loss flow`) and the MSE-trained point regressor it is compared with. Separate simulated sets (disjoint seeds):
a 1,000-image calibration split (the recalibration and the network's own prior) and a 1,000-image test set (every
per-lens number); the joint posterior's systematic floor is fitted on 200 simulated populations of 50 lenses (seed
20,000, `calibrate(populations='model_ii', bank=0)`: the aggregate and floor). Then 200 test trials per N in {1, 10, 50}
(seed 5,000): the true log10 m drawn from the prior U[-24, -22], N images simulated with that one mass, their joint
posterior with the joint calibration (the network's prior divided out, the floor applied) and without it (the plain
product of the recalibrated per-lens posteriors, flat prior divided out); how often the truth lies inside the joint 68%
and 95% intervals, and the interval widths. The same per-lens calibration for f_sub with the fsub preset (Model I
instrument, resized to 64x64 for the CPU), with the posterior of the mean f_sub of N lenses.

Trained runs are cached (DEEPLENSE_CACHE/bench/posterior-*) so a second call only re-scores. Results:
bench/results/posterior.json (machine, versions, date, command).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, save

TARGETS = dict(coverage_error=0.03, mae_ratio=1.05, joint68=(0.68, 0.07), joint95=(0.95, 0.04), halfwidth50=0.05)


def simulated(preset, n, seed, tag):
    "A cached .npy + .csv pair of `n` simulated images."
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.simulate import simulate
    d = cache_dir("bench", "posterior-data")
    x_path, y_path = d / f"{tag}-n{n}-seed{seed}.npy", d / f"{tag}-n{n}-seed{seed}.csv"
    if not (x_path.exists() and y_path.exists()):
        x, lab = simulate(preset, n, seed=seed, batch_size=256)
        np.save(x_path, x[:, 0].numpy())
        lab.to_csv(y_path, index=False)
    return x_path


def trained(tag, train, target, loss, epochs, size, log):
    "A cached run directory: ResNet18 trained on `train` with `loss`."
    from deeplense_fastai.core import cache_dir, set_seed
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner, fit, export_run
    run = cache_dir("bench", f"posterior-{tag}-{loss}-e{epochs}")
    if (run / "weights.safetensors").exists(): return run, None
    set_seed(0)
    dls = lens_dataloaders(train, target, labels=train.with_suffix(".csv"), bs=64, seed=0, size=size)
    learn = regression_learner(dls, "resnet18", loss=loss, path=run)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): fit(learn, epochs, 3e-3, log=None, checkpoint=False)
    dt = time.perf_counter() - t0
    export_run(learn, run, pickle=False)
    log(f"  trained {tag} {loss}: {epochs} epochs in {dt / 60:.1f} min")
    return run, dt


def per_lens(run, test, cal, log, populations=None):
    "Calibration on the test set before and after recalibration on the calibration split (and the joint calibration)."
    from deeplense_fastai.evaluate import calibration_report
    from deeplense_fastai.combine import calibrate
    (run / "calibration.json").unlink(missing_ok=True)       # a rerun starts from the raw posteriors
    before = calibration_report(run, test, raw=True)
    widths = dict(raw=float(np.median(_halfwidths(run, test, before))))
    # the aggregate and floor this bench measures
    fitted = calibrate(run, cal, force=True, populations=populations, **({'bank': 0} if populations else {}))
    after = calibration_report(run, test)
    widths["recalibrated"] = float(np.median(_halfwidths(run, test, after)))
    out = {}
    for name, r in (("raw", before), ("recalibrated", after)):
        t = r["targets"][0]
        out[name] = dict(coverage=r["coverage"][t].round(4).tolist(), max_coverage_error=r["max_coverage_error"],
                         sbc_hist=np.histogram(r["sbc"][:, 0], bins=20, range=(0, 201))[0].tolist(),
                         tarp_ecp=np.asarray(r["tarp"][0]).round(4).tolist(),
                         tarp_alpha=np.asarray(r["tarp"][1]).round(4).tolist(),
                         binned=r["binned"][t].round(4).to_dict("records"), points=r["points"],
                         interval68_halfwidth=widths[name])
        log(f"  {name}: max |coverage - nominal| {r['max_coverage_error']:.3f}; median MAE {r['points']['mae']:.4f}")
    if fitted["floor"] is not None:
        j = fitted["joint"]["log10_m_axion"]
        out["joint_calibration"] = dict(systematic=j["systematic"], populations=j["populations"],
                                        fit=fitted["floor"][fitted["floor"].width
                                                            == j["systematic"]].round(4).to_dict("records"))
        log(f"  joint calibration: systematic floor {j['systematic']:.4f} dex on {j['populations']}")
    return out


def _halfwidths(run, test, rep):
    "Per-image half-widths of the central 68% intervals."
    from deeplense_fastai.inference import predict
    t = rep["targets"][0]
    df = predict(run, test, notice=lambda *_: None)
    return (df[f"q84_{t}"] - df[f"q16_{t}"]).to_numpy() / 2


def point_mae(run, test, target):
    from deeplense_fastai.inference import predict
    import pandas as pd
    df = predict(run, test, notice=lambda *_: None)
    y = pd.read_csv(test.with_suffix(".csv"))[target].to_numpy()
    return float(np.abs(df[f"pred_{target}"].to_numpy() - y).mean())


def _trial_summaries(grid, logp, cfg, n, joint_posterior):
    "Joint medians and intervals (arrays over the trials) of the first n lenses of each trial."
    s = [joint_posterior(grid, logp[k, :n], cfg, "log10_m_axion").summary for k in range(len(logp))]
    return (np.array([d[key] for d in s]) for key in ("lo68", "hi68", "lo95", "hi95", "median"))


def joint_trials(run, preset, trials, ns, seed, log):
    """Coverage of the joint 68% and 95% intervals and their widths, for N lenses sharing one true log10 m: with the
    run's joint calibration (its own prior divided out, the fitted systematic floor) and without it (the plain product
    of the recalibrated per-lens posteriors, the flat prior divided out)."""
    from deeplense_fastai.simulate import get_preset
    from deeplense_fastai.inference import run_posteriors
    from deeplense_fastai.combine import joint_posterior, population_images
    p, n_max = get_preset(preset), max(ns)
    truths = np.random.default_rng(seed).uniform(*p.axion.log10_m, trials)
    imgs = population_images(p, truths, n_max, seed)
    out = {}
    for mode, raw in (("calibrated", True), ("uncalibrated", False)):
        grid, logp, _, cfg = run_posteriors(run, imgs, bs=256, raw=raw)
        if not raw: cfg.joint_calibration = None
        logp = logp.reshape(trials, n_max, *logp.shape[1:])
        for n in ns:
            lo68, hi68, lo95, hi95, med = _trial_summaries(grid, logp, cfg, n, joint_posterior)
            r = dict(n=n, trials=trials, coverage68=float(((truths >= lo68) & (truths <= hi68)).mean()),
                     coverage95=float(((truths >= lo95) & (truths <= hi95)).mean()),
                     halfwidth68_median=float(np.median((hi68 - lo68) / 2)),
                     halfwidth95_median=float(np.median((hi95 - lo95) / 2)),
                     mae_median=float(np.abs(med - truths).mean()),
                     truth=truths.round(4).tolist(), median=med.round(4).tolist(), lo68=lo68.round(4).tolist(),
                     hi68=hi68.round(4).tolist())
            out.setdefault(mode, {})[str(n)] = r
            log(f"  {mode} N={n}: joint 68% covers {r['coverage68']:.3f}, 95% covers {r['coverage95']:.3f}, "
                f"68% half-width {r['halfwidth68_median']:.4f} dex")
    return out


def fsub_population(run, test, ns, trials, seed):
    "Posterior of the mean f_sub of N lenses (Monte Carlo over per-lens posteriors) against the true mean, per N."
    import pandas as pd
    from deeplense_fastai.inference import run_posteriors
    from deeplense_fastai.posterior import grid_sample
    grid, logp, _, _ = run_posteriors(run, test, bs=256)
    y = pd.read_csv(test.with_suffix(".csv"))["f_sub"].to_numpy()
    draws = grid_sample(logp[:, 0], grid[0], 400, torch.Generator().manual_seed(0)).numpy()     # (400, N_test)
    rng, out = np.random.default_rng(seed), {}
    for n in ns:
        inside68, inside95, widths = [], [], []
        for _ in range(trials):
            idx = rng.choice(len(y), n, replace=False)
            m = draws[:, idx].mean(1)
            lo68, hi68, lo95, hi95 = np.quantile(m, [0.16, 0.84, 0.025, 0.975])
            inside68.append(lo68 <= y[idx].mean() <= hi68)
            inside95.append(lo95 <= y[idx].mean() <= hi95)
            widths.append((hi68 - lo68) / 2)
        out[str(n)] = dict(n=n, trials=trials, coverage68=float(np.mean(inside68)), coverage95=float(np.mean(inside95)),
                           halfwidth68_median=float(np.median(widths)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--ns", default="1,10,50")
    ap.add_argument("--skip-fsub", action="store_true")
    ap.add_argument("--part", choices=["all", "model_ii", "fsub"], default="all",
                    help="model_ii -> posterior.json, fsub -> posterior_fsub.json (all: both, in one file)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/posterior.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    import platform
    ns = [int(v) for v in a.ns.split(",")]
    log = lambda *x: print(*x, flush=True)
    res = dict(protocol=dict(preset="model_ii", arch="resnet18", n_train=a.n_train, n_test=a.n_test,
                             n_calibration=a.n_test,
                             epochs=a.epochs, trials=a.trials, ns=ns), targets=TARGETS)
    t0 = time.perf_counter()
    if a.part == "fsub": return run_fsub(a, ns, log, t0)
    train, cal, test = (simulated("model_ii", n, s, "model_ii")
                        for n, s in ((a.n_train, 0), (a.n_test, 98), (a.n_test, 99)))
    log(f"model_ii data ready ({time.perf_counter() - t0:.0f} s)")
    flow, t_flow = trained("model_ii", train, "log10_m_axion", "flow", a.epochs, None, log)
    mse, t_mse = trained("model_ii", train, "log10_m_axion", "mse", a.epochs, None, log)
    res["train_seconds"] = dict(flow=t_flow, mse=t_mse)
    if t_flow is None or t_mse is None:            # cached runs: the training time measured when they were trained
        res["train_seconds"] = json.loads((RESULTS / "posterior.json").read_text())["train_seconds"]
    res["per_lens"] = per_lens(flow, test, cal, log, populations="model_ii")
    res["mse_mae"] = point_mae(mse, test, "log10_m_axion")
    res["flow_median_mae"] = res["per_lens"]["recalibrated"]["points"]["mae"]
    res["mae_ratio"] = res["flow_median_mae"] / res["mse_mae"]
    log(f"  posterior-median MAE {res['flow_median_mae']:.4f} vs MSE ResNet18 {res['mse_mae']:.4f}: ratio "
        f"{res['mae_ratio']:.3f}")
    res["joint"] = joint_trials(flow, "model_ii", a.trials, ns, 5000, log)
    save("posterior", a.json, **res)
    if not a.skip_fsub and a.part == "all":
        ftrain, fcal, ftest = (simulated("fsub", n, s, "fsub")
                               for n, s in ((a.n_train, 0), (a.n_test, 98), (a.n_test, 99)))
        frun, t_f = trained("fsub", ftrain, "f_sub", "flow", a.epochs, 64, log)
        res["fsub"] = dict(size=64, train_seconds=t_f, per_lens=per_lens(frun, ftest, fcal, log),
                           population_mean=fsub_population(frun, ftest, [n for n in ns if n <= a.n_test // 4], a.trials,
                                                           7),
                           published="ResNet18 MSE 6.1e-5, R^2 0.72 (GSoC test III, PyAutoLens set, 150x150)")
        save("posterior", a.json, **res)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min")


def run_fsub(a, ns, log, t0):
    "The f_sub part alone, written to bench/results/posterior_fsub.json."
    ftrain, fcal, ftest = (simulated("fsub", n, s, "fsub") for n, s in ((a.n_train, 0), (a.n_test, 98), (a.n_test, 99)))
    log(f"fsub data ready ({time.perf_counter() - t0:.0f} s)")
    frun, t_f = trained("fsub", ftrain, "f_sub", "flow", a.epochs, 64, log)
    res = dict(protocol=dict(preset="fsub", arch="resnet18", size=64, n_train=a.n_train, n_test=a.n_test,
                             n_calibration=a.n_test,
                             epochs=a.epochs, trials=a.trials, ns=ns), train_seconds=t_f,
               per_lens=per_lens(frun, ftest, fcal, log),
               population_mean=fsub_population(frun, ftest, [n for n in ns if n <= a.n_test // 4], a.trials, 7),
               published="ResNet18 MSE 6.1e-5, R^2 0.72 (GSoC test III, PyAutoLens set, 150x150)")
    save("posterior_fsub", a.json, **res)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
