"""Transfer to a user's own files: pretrain on simulated Model II, fine-tune on a few hundred DeepLense-layout files,
and compare with training from scratch on the same files, all scored on the same held-out files.

    OMP_NUM_THREADS=1 nice -n 19 python bench/transfer.py          # the CPU protocol (about 50 CPU-minutes), resumable
    python bench/transfer.py --smoke                               # a minute: checks that the script works

Pretraining, twice: on 4,000 Model II images as DeepLense stored them, noiseless (DeepLenseSim wrote `model + model`,
see REFERENCES.md), and on 4,000 images of the same recipe *with* Model II's noise; 64x64, axion class only (the only
class with a mass), one seed each (pretraining seed noise is not measured: a pretraining run costs 40 fine-tunings).
The "user's files" are written by the simulator in the DeepLense per-file layout with other seeds, in two scenarios:
noiseless like the first pretraining set, and with Model II's noise (a shift the noiseless model never saw; the noisy
pretraining is the honest comparison there: it is what a user who knows their noise would train on).

Recipe: xresnet_small, Ranger, one-cycle, the files' own 10% validation split (the same for every seed). Fine-tuning
starts from a pretrained run (`init=`), trains the head alone for one epoch (`freeze_epochs=1`), then the whole network
at a third of the rate. From scratch gets what it needs to train rather than the fine-tuning's budget: its rate is
chosen among --scratch-rates by the files' validation loss (seed 0; the test files are never looked at), and it trains
--scratch-epochs epochs.

Working baselines. A run from scratch whose best validation loss never fell below its first epoch's did not train; it
is marked `trained: false`, and a comparison with it is refused (the summary says so instead of printing a ratio). A
fine-tuning starts from a working model, so it counts as trained when its pretraining did (`improved` records whether
its validation loss fell below its first recorded epoch's: fastai's Recorder restarts after the head-only epoch, so
that is the first epoch of the whole network). Fine-tuning
and scratch run at --seeds training seeds; the summary gives mean +- sd over seeds and calls a difference only when it
exceeds twice the larger seed sd (a fine-tuning's seed sd leaves out its pretraining's seed: calls that involve a
pretrained model hold for that one pretraining run, two pretrainings are never compared, and zero-shot rows, one
seed, are never called). The summary also counts the runs whose best validation epoch was their last (still improving).
Every run also counts its test predictions outside the training range of the mass (`in_prior` false: a prediction the
prior says is impossible) and the images the run's OOD check flags.

Each run is cached as JSON under the cache (bench_transfer/runs/) with the protocol it was measured on, so a stopped
bench resumes; the results go to --json with machine, versions, command and date.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import header, mean_sd, trained, versus, write_json   # bench/ is on the path when this script runs

PRE = {"noiseless": False, "noisy": True}
SCENARIOS = {"clean": ("files like the simulations (noiseless)", False),
             "noisy": ("noisy files (a shift from the noiseless simulations)", True)}


def train(src, epochs, lr, path, seed, init=None, freeze=0):
    "Train xresnet_small on `src`; the exported run, the per-epoch validation loss and MAE, and the seconds taken."
    from deeplense_fastai.core import set_seed
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import export_run, fit, regression_learner
    set_seed(seed)
    dls = lens_dataloaders(src, bs=64, seed=0, progress=False)           # the same validation split for every seed
    learn = regression_learner(dls, "xresnet_small", path=path, init=init)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): fit(learn, epochs, lr, freeze_epochs=freeze, log=None, checkpoint=False)
    names = learn.recorder.metric_names[1:-1]
    vals = learn.recorder.values
    hist = dict(valid_loss=[float(v[1]) for v in vals], valid_mae=[float(v[names.index("mae")]) for v in vals])
    return export_run(learn, Path(path) / "run", pickle=False), dict(hist, train_seconds=round(time.time() - t0, 1),
                                                                     trained=trained(hist["valid_loss"]))


def score(run, test_src):
    "Test MAE/RMSE/R^2 beside the constant-mean baseline, and the predictions outside the prior or flagged OOD."
    from deeplense_fastai.inference import predict
    from deeplense_fastai.interpret import regression_report
    df = predict(run, test_src, notice=lambda *_: None)
    y = test_src.labels["log10_m_axion"].to_numpy()
    return dict(test=regression_report(y, df["pred_log10_m_axion"].to_numpy()),
                out_of_prior=int((df["in_prior"] == False).sum()), ood_flagged=int(df["ood"].fillna(False).sum()),  # noqa: E712
                n_test=len(df))


def cached(path, proto, make):
    "The run at `path` if it was measured on `proto`, else `make()` written there and returned (resumable)."
    if path.exists() and (doc := json.loads(path.read_text())).get("protocol") == proto: return doc
    doc = dict(make(), protocol=proto)
    write_json(path, doc)
    return doc


def data(root, a):
    "Write (once) the two pretraining sets and each scenario's files and test files."
    from deeplense_fastai.dataset import write_dataset
    sets = {f"pre-{k}": root / f"pre-{k}-n{a.pretrain}" for k in PRE}
    for k, noise in PRE.items():
        write_dataset(sets[f"pre-{k}"], "model_ii", n=a.pretrain, seed=0, noise=noise, progress=False)
    for tag, (_, noise) in SCENARIOS.items():
        for kind, n, seed in (("files", a.files, 101), ("test", a.test, 202)):
            sets[f"{kind}-{tag}"] = root / f"{kind}-{tag}-n{n}"
            write_dataset(sets[f"{kind}-{tag}"], "model_ii", n=n, seed=seed, fmt="deeplense", classes=("axion",),
                          noise=noise, progress=False)
    return sets


def scenario_runs(tag, a, sets, runs_dir, work, tests):
    "Every run of one scenario: zero-shot, scratch (rate sweep, then seeds) and fine-tuned, as cached documents."
    proto = dict(vars(a), json=None)
    def run(name, make):
        doc = cached(runs_dir / f"{name}.json", proto, make)
        print(f"{name:40s} test MAE {doc['test']['mae']:.3f}  out of prior {doc['out_of_prior']}/{doc['n_test']}  "
              f"OOD {doc['ood_flagged']}  trained {doc['trained']}", flush=True)
        return doc
    def fresh(name, src, epochs, lr, seed, **kw):
        path, hist = train(src, epochs, lr, work / name, seed, **kw)
        if kw.get("init"):   # a fine-tuning starts from a working model: it trained if its pretraining did
            pre = json.loads((runs_dir / f"{Path(kw['init']).parent.name}.json").read_text())
            hist = dict(hist, improved=hist["trained"], trained=pre["fit"]["trained"])
        return dict(hist, lr=lr, seed=seed, **score(path, tests[tag]))
    out = {f"pretrained on {k} simulations, zero-shot": run(f"{tag}-zeroshot-{k}", lambda k=k: dict(
        json.loads((runs_dir / f"pre-{k}.json").read_text())["fit"], **score(work / f"pre-{k}" / "run", tests[tag])))
        for k in PRE}
    sweep = [run(f"{tag}-scratch-rate{lr:g}", lambda lr=lr: fresh(f"{tag}-scratch-rate{lr:g}", sets[f"files-{tag}"],
                                                                     a.scratch_epochs, lr, 0))
             for lr in a.scratch_rates]
    ok = [r for r in sweep if r["trained"]] or sweep
    lr = min(ok, key=lambda r: min(r["valid_loss"]))["lr"]
    out["from scratch on the files"] = [sweep[a.scratch_rates.index(lr)]] + [
        run(f"{tag}-scratch-seed{s}",
            lambda s=s: fresh(f"{tag}-scratch-seed{s}", sets[f"files-{tag}"], a.scratch_epochs, lr, s))
        for s in a.seeds if s != 0]
    for k in PRE:
        out[f"pretrained on {k} simulations, fine-tuned on the files"] = [
            run(f"{tag}-finetune-{k}-seed{s}",
                lambda s=s, k=k: fresh(f"{tag}-finetune-{k}-seed{s}", sets[f"files-{tag}"], a.epochs, a.lr / 3, s,
                                       init=work / f"pre-{k}" / "run", freeze=1)) for s in a.seeds]
    return out, dict(scratch_rate=lr, scratch_sweep={f"{r['lr']:g}": min(r["valid_loss"]) for r in sweep})


def summary(runs):
    "Mean +- sd of the test MAE over seeds per run kind, whether every seed trained, and its flagged predictions."
    rows = {}
    for name, docs in runs.items():
        docs = docs if isinstance(docs, list) else [docs]
        rows[name] = dict(mean_sd([d["test"]["mae"] for d in docs]), trained=all(d["trained"] for d in docs),
                          pretraining=next((k for k in PRE if f"on {k} simulations" in name), None),
                          best_at_last_epoch=sum(int(np.argmin(d["valid_loss"])) == len(d["valid_loss"]) - 1
                                                 for d in docs),
                          out_of_prior=sum(d["out_of_prior"] for d in docs),
                          ood_flagged=sum(d["ood_flagged"] for d in docs),
                          n_test=sum(d["n_test"] for d in docs), baseline_mae=docs[0]["test"]["baseline_mae"])
    return rows


def call(a, b):
    """`versus`, except between runs built on two different pretrainings: one pretraining run each measures no seed
    noise."""
    if a["pretraining"] and b["pretraining"] and a["pretraining"] != b["pretraining"]:
        return "one pretraining run each: not called"
    return versus(a, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain", type=int, default=4000)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=8, help="pretraining and fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=3e-3, help="pretraining rate (fine-tuning: a third of it)")
    ap.add_argument("--scratch-epochs", type=int, default=24)
    ap.add_argument("--scratch-rates", default="3e-3,1e-2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, results into a temporary file")
    ap.add_argument("--json", default="bench/results/transfer.json")
    a = ap.parse_args()
    a.scratch_rates = [float(r) for r in a.scratch_rates.split(",")]
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if a.smoke:
        a.pretrain, a.files, a.test, a.epochs, a.scratch_epochs = 200, 60, 40, 2, 2
        a.seeds, a.json = [0, 1], tempfile.mktemp(suffix=".json")
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.data import open_source
    root = cache_dir("bench_transfer") / ("smoke" if a.smoke else "")
    runs_dir, work = root / "runs", root / "work"
    sets = data(root, a)
    proto = dict(vars(a), json=None)
    for k in PRE:   # pretraining: one run each, kept in the cache (weights under work/, its record under runs/)
        cached(runs_dir / f"pre-{k}.json", proto,
               lambda k=k: dict(fit=dict(train(sets[f"pre-{k}"], a.epochs, a.lr, work / f"pre-{k}", 0)[1], lr=a.lr,
                                         seed=0)))
    tests = {tag: open_source(sets[f"test-{tag}"], progress=False) for tag in SCENARIOS}
    out = dict(header("transfer"), settings=dict(vars(a), json=None), scenarios={}, summary={}, comparisons={},
               choices={})
    for tag, (scenario, _) in SCENARIOS.items():
        out["scenarios"][scenario], out["choices"][scenario] = scenario_runs(tag, a, sets, runs_dir, work, tests)
        rows = out["summary"][scenario] = summary(out["scenarios"][scenario])
        names = list(rows)
        out["comparisons"][scenario] = {f"{x} vs {y}": call(rows[x], rows[y]) for i, x in enumerate(names)
                                        for y in names[i + 1:]}
    write_json(a.json, out)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
