"""The reliability probe of issue 28, rerunnable: a few hundred tries of the `deeplense` commands on bad output paths,
finished and unfinished runs, stale calibrations, repeated lenses, unbounded sizes, non-regular files, full disks,
bad environments, diverging training and odd file names, each run as a user runs it (a subprocess, no TTY, default
flags) and judged from outside:

* clean: the expected outcome (exit 0 with the expected files, or exit 2 with one line and no traceback);
* data loss: a file the try did not name as its output changed or vanished (inputs, runs, other files);
* silent wrong answer: exit 0 where the input had to be refused, or a result that is not what the input says;
* traceback, hang (no answer within the try's time limit), and unclean refusal (exit 2 without exactly one line).

    python bench/probe.py [--jobs 2] [--only CATEGORY]      # -> bench/results/probe.json (every try and the counts)

The fixture (a Model II dataset of 48 images, a calibration split, a point-estimate run, a flow run, a calibrated flow
run) is built once with the command itself in a temporary folder; each try gets fresh copies of whatever it may touch.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from _results import save

PY = [sys.executable, "-m", "deeplense_fastai.cli"]
SMALL = ["--arch", "xresnet_small", "--epochs", "1", "--bs", "8"]


@dataclass
class Try:
    "One probe: a command line in a fresh copy of the fixture, what it must do, and what it must leave alone."
    category: str
    name: str
    argv: list                      # arguments after `deeplense`; '{X}' placeholders name fixture paths (see `paths`)
    expect: str = "refuse"          # 'refuse' (exit 2, one line) or 'ok' (exit 0)
    words: tuple = ()               # words the refusal's line must contain
    setup: object = None            # f(paths) run before the command (makes a bad file, a FIFO, ...)
    check: object = None            # f(paths, result) -> None or the reason the ok result is wrong
    outputs: tuple = ()             # fixture-relative paths the command may write (everything else must stay)
    env: dict = field(default_factory=dict)
    fsize: int | None = None        # RLIMIT_FSIZE in bytes: a full disk as `ulimit -f` makes one
    timeout: int = 240


def run(argv, env, cwd, fsize=None, timeout=240):
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    try:
        return subprocess.run([*PY, *map(str, argv)], capture_output=True, text=True, env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, preexec_fn=pre, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def tree_digest(root: Path) -> dict:
    "Every file (and link) under `root`: its bytes' SHA-256, or the link's target."
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("cache"): continue                   # the cache may grow; it is not the user's data
        if p.is_symlink(): out[rel] = "link:" + os.readlink(p)
        elif p.is_file(): out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(stderr: str) -> bool:
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith("note:") and "% [" not in l]
    return len(lines) == 1


def judge(t: Try, r, before: dict, after: dict, paths: dict) -> tuple[str, str]:
    "The try's verdict and a short reason."
    if r is None: return "hang", f"no answer within {t.timeout} s"
    if "Traceback" in r.stderr: return "traceback", r.stderr.strip().splitlines()[-1][:200]
    allowed = set(t.outputs)
    lost = [k for k in before if k not in allowed and after.get(k) != before[k]]
    if lost: return "data loss", f"changed or removed: {lost[:3]}"
    last = (r.stderr.strip().splitlines() or [""])[-1][:240]
    if t.expect == "refuse":
        if r.returncode == 0: return "silent wrong answer", "exit 0 where a refusal was due"
        if r.returncode != 2 or not one_line(r.stderr): return "unclean refusal", f"rc {r.returncode}: {last}"
        missing = [w for w in t.words if w not in last]
        return ("clean", last) if not missing else ("unclean refusal", f"line lacks {missing}: {last}")
    if r.returncode != 0: return "refused a legal input", f"rc {r.returncode}: {last}"
    why = t.check(paths, r) if t.check else None
    return ("silent wrong answer", why) if why else ("clean", "ok")


# ---- the fixture -------------------------------------------------------------------------------------------------
def build_fixture(root: Path, env: dict) -> None:
    "Datasets and runs made with the command itself, as a user makes them."
    def ok(*argv):
        r = run(argv, env, root, timeout=900)
        assert r is not None and r.returncode == 0, (argv, r and r.stderr[-2000:])
    ok("simulate", "--n", 48, "--seed", 0, "--out", root / "train")
    ok("simulate", "--n", 24, "--seed", 2, "--out", root / "cal")
    ok("simulate", "--preset", "model_i", "--n", 4, "--seed", 1, "--out", root / "test150")
    ok("train", "--data", root / "train", *SMALL, "--out", root / "run")
    ok("train", "--data", root / "train", *SMALL, "--loss", "flow", "--out", root / "flow")
    shutil.copytree(root / "flow", root / "calflow")
    ok("calibrate", "--model", root / "calflow", "--data", root / "cal")
    imgs = np.load(root / "train" / "images.npy")
    np.save(root / "stack.npy", imgs[:5])
    (root / "mine.json").write_text('{"precious": true}')


def paths_of(work: Path) -> dict:
    names = ["train", "cal", "test150", "run", "flow", "calflow", "stack.npy", "mine.json"]
    return {n.split(".")[0].upper(): work / n for n in names} | {"W": work}


def fill(argv, paths):
    out = []
    for a in argv:
        a = str(a)
        for k, v in paths.items(): a = a.replace("{" + k + "}", str(v))
        out.append(a)
    return out


# ---- the tries -----------------------------------------------------------------------------------------------------
def _link(src, dst):
    def f(p): os.symlink(fill([src], p)[0], fill([dst], p)[0])
    return f


def _file(path, content=b"x"):
    def f(p): Path(fill([path], p)[0]).write_bytes(content)
    return f


def _json_ok(rel):
    def f(p, r):
        try: json.loads((p["W"] / rel).read_text())
        except Exception as e: return f"{rel} not written as JSON ({e})"
    return f


def output_tries() -> list:
    "Every output flag against inputs, run files, existing files, links, directories and impossible parents, +-force."
    cmds = {"evaluate --json": ["evaluate", "--model", "{RUN}", "--data", "{CAL}", "--json"],
            "predict --out": ["predict", "--model", "{RUN}", "{CAL}", "--out"],
            "combine --json": ["combine", "--model", "{FLOW}", "{CAL}", "--json"],
            "combine --plot": ["combine", "--model", "{FLOW}", "{CAL}", "--plot"]}
    tries = []
    for cname, base in cmds.items():
        model = "{RUN}" if "{RUN}" in base else "{FLOW}"
        png = cname.endswith("--plot")
        targets = [(f"{model}/config.json", "refuse", ("reads",)),
                   (f"{model}/weights.safetensors", "refuse", ("reads",)),
                   (f"{model}/metrics.json", "refuse", ("reads",)),
                   (f"{model}/new.png" if png else f"{model}/new.json", "refuse", ("reads",)),
                   ("{CAL}/labels.csv", "refuse", ("reads",)), ("{CAL}/images.npy", "refuse", ("reads",)),
                   ("{CAL}/manifest.json", "refuse", ("reads",)),
                   ("{CAL}/new.png" if png else "{CAL}/new.json", "refuse", ("reads",)),
                   ("{W}/missing/x.png" if png else "{W}/missing/x.json", "refuse", ("does not exist",)),
                   ("{MINE}/x.png" if png else "{MINE}/x.json", "refuse", ("not a directory",)),
                   ("{W}", "refuse", ("is a directory",))]
        for tgt, exp, words in targets:
            for force in (False, True):
                tries.append(Try("output paths", f"{cname} {tgt}{' --force' if force else ''}",
                                 base + [tgt] + (["--force"] if force else []), exp, words))
        new = "{W}/out.png" if png else "{W}/out.csv" if "predict" in cname else "{W}/out.json"
        tries.append(Try("output paths", f"{cname} a new file", base + [new], "ok", outputs=(Path(new).name,)))
        old = "{W}/old.png" if png else "{W}/old.json"
        tries.append(Try("output paths", f"{cname} an existing file", base + [old], "refuse", ("exists", "--force"),
                         setup=_file(old)))
        tries.append(Try("output paths", f"{cname} an existing file --force", base + [old, "--force"], "ok",
                         setup=_file(old), outputs=(Path(old).name,)))
        for force in (False, True):
            lnk = "{W}/link.png" if png else "{W}/link.json"
            tries.append(Try("output paths", f"{cname} a link to the user's file{' --force' if force else ''}",
                             base + [lnk] + (["--force"] if force else []), "ok" if force else "refuse",
                             ("symbolic link",) if not force else (), setup=_link("{MINE}", lnk),
                             outputs=(Path(lnk).name,)))
            dang = "{W}/dangling.png" if png else "{W}/dangling.json"
            tries.append(Try("output paths", f"{cname} a dangling link{' --force' if force else ''}",
                             base + [dang] + (["--force"] if force else []), "ok" if force else "refuse",
                             ("symbolic link",) if not force else (), setup=_link("{W}/nowhere", dang),
                             outputs=(Path(dang).name,)))
    tries.append(Try("output paths", "combine --json and --plot on one path",
                     ["combine", "--model", "{FLOW}", "{CAL}", "--json", "{W}/x.png", "--plot", "{W}/x.png"], "refuse",
                     ("another output",)))
    tries.append(Try("output paths", "combine --plot of an unknown format",
                     ["combine", "--model", "{FLOW}", "{CAL}", "--plot",
                     "{W}/x.xyz"], "refuse", ("unknown image format",)))
    tries.append(Try("output paths", "train --out under a plain file",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{MINE}/r"],
                     "refuse", ("not a directory",)))
    tries.append(Try("output paths", "train --out a dangling link",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/dl"],
                     "refuse", ("dangling",), setup=_link("{W}/nowhere", "{W}/dl")))
    tries.append(Try("output paths", "simulate --out under a plain file", ["simulate", "--n", 4, "--out", "{MINE}/d"],
                     "refuse"))
    return tries


def _unfinish(run, *names):
    def f(p):
        for n in names: (Path(fill([run], p)[0]) / n).unlink()
    return f


def _same_run(name):
    """The resumed run equals the uninterrupted one in the fixture: config (prior range included), weights, a test
    report."""
    def f(p, r):
        a, b = p["W"] / name, p["FIX"] / name
        ca, cb = json.loads((a / "config.json").read_text()), json.loads((b / "config.json").read_text())
        # the copy lives in another folder
        diff = [k for k in set(ca) | set(cb) if k != "source" and ca.get(k) != cb.get(k)]
        if diff: return f"config.json differs: {diff}"
        if (a / "weights.safetensors").read_bytes() != (b / "weights.safetensors").read_bytes(): return "other weights"
        if not (a / "metrics.json").exists(): return "no metrics.json"
    return f


def resume_tries() -> list:
    "--resume and --force on finished, unfinished and foreign run directories."
    tries = []
    for run, loss in (("{RUN}", []), ("{FLOW}", ["--loss", "flow"])):
        base = ["train", "--data", "{TRAIN}", *SMALL, *loss, "--out", run]
        for extra, what in (([], "the same command"), (["--lr", "1e-3"], "another rate"),
                            (["--epochs", "2"], "more epochs"),
                            (["--target", "f_sub"], "another target")):
            tries.append(Try("resume", f"--resume a finished {run} with {what}", base + extra + ["--resume"], "refuse",
                             ("finished run",)))
        other = ["train", "--data", "{CAL}", *SMALL, *loss, "--out", run, "--resume"]
        tries.append(Try("resume", f"--resume a finished {run} on other data", other, "refuse", ("finished run",)))
        for n, what in ((("config.json", "metrics.json"), "killed during export"),
                        (("metrics.json",), "killed during the test")):
            tries.append(Try("resume", f"--resume {run} {what}, other data", other, "refuse",
                             ("cannot resume", "the data"),
                             setup=_unfinish(run, *n)))
            tries.append(Try("resume", f"--resume {run} {what}, other rate", base + ["--lr", "1e-3", "--resume"],
                             "refuse", ("cannot resume",), setup=_unfinish(run, *n)))
            tries.append(Try("resume", f"--resume {run} {what}", base + ["--resume"], "ok", setup=_unfinish(run, *n),
                             outputs=(f"{run[1:-1].lower()}/",), check=_same_run(run[1:-1].lower())))
        tries.append(Try("resume", f"train into finished {run} without a flag", base, "refuse", ("not empty",)))
        tries.append(Try("resume", f"--resume and --force on {run}", base + ["--resume", "--force"], "refuse",
                         ("not both",)))
    tries.append(Try("resume", "--resume with no checkpoint",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/empty", "--resume"],
                     "refuse", ("no checkpoint",)))
    tries.append(Try("resume", "--resume after a kill that left only a partial checkpoint",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/half", "--resume"], "refuse",
                     ("no checkpoint", "--force"),
                     setup=lambda p: ((p["W"] / "half" / "models").mkdir(parents=True),
                                      (p["W"] / "half" / "models" / "checkpoint.partial.pth").write_bytes(b"half"))))
    tries.append(Try("resume", "--force over a partial run",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/half", "--force"],
                     "ok", setup=lambda p: ((p["W"] / "half" / "models").mkdir(parents=True),
                                            (p["W"] / "half" / "models" / "checkpoint.partial.pth")
                                            .write_bytes(b"half")),
                     outputs=("half/",)))
    tries.append(Try("resume", "--force over a folder with the user's files",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/notes", "--force"], "refuse",
                     ("refusing to remove",),
                     setup=lambda p: ((p["W"] / "notes").mkdir(),
                                      (p["W"] / "notes" / "thesis.tex").write_text("mine"))))
    return tries


def calibration_tries() -> list:
    "Stale calibrations, tta, the run's own images, foreign populations, tiny population counts, bad seeds."
    flip = lambda p: _flip(p["CALFLOW"] / "weights.safetensors")
    tries = [Try("calibration", f"{c[0]} after the weights changed", c, "refuse", ("other weights",), setup=flip)
             for c in (["predict", "--model", "{CALFLOW}", "{CAL}"], ["combine", "--model", "{CALFLOW}", "{CAL}"],
                       ["evaluate", "--model", "{CALFLOW}", "--data", "{CAL}"])]
    tries += [Try("calibration", f"{c[0]} with --tta on a calibration fitted without", c + ["--tta"], "refuse",
                  ("test-time augmentation",))
              for c in (["predict", "--model", "{CALFLOW}", "{STACK}"], ["combine", "--model", "{CALFLOW}", "{STACK}"],
                        ["evaluate", "--model", "{CALFLOW}", "--data", "{CAL}"])]
    tries += [Try("calibration", f"{c[0]} with the calibration's own setting", c, "ok")
              for c in (["predict", "--model", "{CALFLOW}", "{STACK}"], ["combine", "--model", "{CALFLOW}", "{STACK}"])]
    base = ["calibrate", "--model", "{FLOW}", "--data"]
    tries += [Try("calibration", "calibrate on the training data", base + ["{TRAIN}"], "refuse", ("this run's own",)),
              Try("calibration", "calibrate on the test images in another file", base + ["{W}/held.npy"], "refuse",
                  ("this run's own",), setup=_held),
              Try("calibration", "calibrate on the training data with --force", base + ["{TRAIN}", "--force"], "ok",
                  outputs=("flow/calibration.json",)),
              Try("calibration", "calibrate populations of Model I for a Model II run",
                  base + ["{CAL}", "--populations", "model_i"], "refuse", ("150x150",)),
              Try("calibration", "calibrate populations of Model III for a Model II run",
                  base + ["{CAL}", "--populations", "model_iii"], "refuse", ("model_iii",)),
              Try("calibration", "calibrate populations of f_sub", base + ["{CAL}", "--populations", "fsub"], "refuse",
                  ("log10_m_axion",)),
              Try("calibration", "calibrate 1 trial of 1 lens",
                  base + ["{CAL}", "--populations", "model_ii", "--trials", 1, "--lenses", 1],
                  "refuse", ("cannot fit a floor",)),
              Try("calibration", "calibrate 19 trials",
                  base + ["{CAL}", "--populations", "model_ii", "--trials", 19, "--lenses", 5],
                  "refuse", ("cannot fit a floor",)),
              Try("calibration", "calibrate --seed -1", base + ["{CAL}", "--populations", "model_ii", "--seed", -1],
                  "refuse", ("--seed",)),
              Try("calibration", "calibrate over a corrupt calibration.json with --force",
                  ["calibrate", "--model", "{CALFLOW}", "--data",
                  "{CAL}", "--force"], "ok", setup=lambda p: (p["CALFLOW"] / "calibration.json").write_text("{corrupt"),
                  outputs=("calflow/calibration.json",)),
              Try("calibration", "calibrate a point-estimate run", ["calibrate", "--model", "{RUN}", "--data", "{CAL}"],
                  "refuse", ("flow",))]
    return tries


def _flip(f: Path):
    b = bytearray(f.read_bytes())
    b[-1] ^= 1
    f.write_bytes(bytes(b))


def _held(p):
    "The run's own images (train + held-out test) under another name, as a user might copy them."
    np.save(p["W"] / "held.npy", np.load(p["TRAIN"] / "images.npy"))
    shutil.copy(p["TRAIN"] / "labels.csv", p["W"] / "held.csv")


def duplicate_tries() -> list:
    def sub(p):
        np.save(p["W"] / "three.npy", np.load(p["CAL"] / "images.npy")[:3])
    def folder(p):
        (p["W"] / "f").mkdir()
        im = np.load(p["STACK"])[0]
        np.save(p["W"] / "f" / "a.npy", im)
        np.save(p["W"] / "f" / "b.npy", im)
    def n_lenses(n):
        return lambda p, r: None if f"from {n} lenses" in r.stdout else f"expected {n} lenses: {r.stdout.strip()[:120]}"
    base = ["combine", "--model", "{FLOW}"]
    return [Try("duplicates", "combine one dataset twice", base + ["{CAL}", "{CAL}"], "refuse", ("same image",)),
            Try("duplicates", "combine a dataset and its own images.npy", base + ["{CAL}", "{CAL}/images.npy"],
                "refuse", ("same image",)),
            Try("duplicates", "combine a dataset and a subset of it", base + ["{CAL}", "{W}/three.npy"], "refuse",
                ("same image",), setup=sub),
            Try("duplicates", "combine a folder holding one image twice", base + ["{W}/f"], "refuse", ("same image",),
                setup=folder),
            Try("duplicates", "combine one stack twice", base + ["{STACK}", "{STACK}"], "refuse", ("same image",)),
            Try("duplicates", "combine distinct lenses", base + ["{CAL}", "{STACK}"], "ok", check=n_lenses(29))]


def _fifo(p): os.mkfifo(p["W"] / "pipe.npy")


def _fits5(p):
    from astropy.io import fits
    imgs = np.load(p["TRAIN"] / "images.npy")[:5]
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(im) for im in imgs]).writeto(p["W"] / "five.fits")
    fits.HDUList([fits.PrimaryHDU(imgs[0]), fits.ImageHDU(imgs[0][:32, :32])]).writeto(p["W"] / "mixed.fits")


def bounded_tries() -> list:
    rows = lambda n: (lambda p, r: None if len(pd.read_csv(io.StringIO(r.stdout))) == n else "wrong number of rows")
    tries = [Try("bounded work", f"predict --samples {k}", ["predict", "--model", "{FLOW}", "{CAL}", "--samples", k],
                 "refuse", ("--samples",), timeout=120) for k in (100_000_000, 10_001, -1)]
    tries.append(Try("bounded work", "predict --samples 3", ["predict", "--model", "{FLOW}", "{STACK}", "--samples", 3],
                     "ok"))
    for c in (["info", "{W}/pipe.npy"], ["predict", "--model", "{RUN}", "{W}/pipe.npy"],
              ["evaluate", "--model", "{RUN}", "--data", "{W}/pipe.npy"],
              ["train", "--data", "{W}/pipe.npy", "--out", "{W}/r"], ["combine", "--model", "{FLOW}", "{W}/pipe.npy"],
              ["calibrate", "--model", "{FLOW}", "--data", "{W}/pipe.npy"]):
        tries.append(Try("bounded work", f"{c[0]} on a FIFO", c, "refuse", ("not a regular file",), setup=_fifo,
                         timeout=120))
    tries.append(Try("bounded work", "predict every extension of a FITS file",
                     ["predict", "--model", "{RUN}", "{W}/five.fits"], "ok",
                     setup=_fits5, check=rows(5)))
    tries.append(Try("bounded work", "predict a FITS file with extensions of two shapes",
                     ["predict", "--model", "{RUN}",
                     "{W}/mixed.fits"], "refuse", ("HDU 1",), setup=_fits5))
    tries.append(Try("bounded work", "info on every extension of a FITS file", ["info", "{W}/five.fits"], "ok",
                     setup=_fits5,
                     check=lambda p, r: None if "5 images" in r.stdout else r.stdout[:120]))
    return tries


def disk_tries() -> list:
    "A file-size limit (as `ulimit -f` sets) met while writing, for each command that writes, at several sizes."
    tries = []
    for lim in (2_000, 100_000, 1_000_000):
        tries.append(Try("disk full", f"train at a {lim:,}-byte file limit",
                         ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/full"],
                         "refuse", ("file size limit",), fsize=lim, outputs=("full/",)))
        tries.append(Try("disk full", f"simulate at a {lim:,}-byte file limit",
                         ["simulate", "--n", 64, "--out", "{W}/sim"], "refuse",
                         ("file size limit",), fsize=lim, outputs=("sim/",)))
    for lim in (100, 600):                  # the 24 rows take about 1,500 bytes
        tries.append(Try("disk full", f"predict --out at {lim:,} bytes",
                         ["predict", "--model", "{RUN}", "{CAL}", "--out", "{W}/p.csv"],
                         "refuse", ("file size limit",), fsize=lim))
    tries.append(Try("disk full", "evaluate --json at 50 bytes",
                     ["evaluate", "--model", "{RUN}", "--data", "{CAL}", "--json",
                     "{W}/e.json"], "refuse", ("file size limit",), fsize=50))
    tries.append(Try("disk full", "combine --plot at 500 bytes",
                     ["combine", "--model", "{FLOW}", "{CAL}", "--plot", "{W}/j.png"],
                     "refuse", ("file size limit",), fsize=500))
    tries.append(Try("disk full", "calibrate at 100 bytes", ["calibrate", "--model", "{FLOW}", "--data", "{CAL}"],
                     "refuse", ("file size limit",), fsize=100))
    def partial_train(p):
        r = run(["train", "--data", p["TRAIN"], *SMALL, "--out", p["W"] / "full"], dict(os.environ, **ENV), p["W"],
                fsize=100_000)
        assert r is not None and r.returncode == 2, r and r.stderr[-500:]
    tries.append(Try("disk full", "--force after a full disk",
                     ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/full", "--force"],
                     "ok", setup=partial_train, outputs=("full/",)))
    return tries


ENV: dict = {}


def environment_tries() -> list:
    tries = []
    for val, words in (("", ("set but empty",)), ("{MINE}", ("cache directory",)),
                       ("{MINE}/sub", ("cache directory",))):
        for c in (["train", *SMALL, "--out", "{W}/c"],
                  ["train", "--preset", "model_ii", "--n", 50, *SMALL, "--out", "{W}/c"]):
            tries.append(Try("environment", f"DEEPLENSE_CACHE={val!r}: {' '.join(c[:3])}", c, "refuse", words,
                             env={"DEEPLENSE_CACHE": val}))
    tries.append(Try("environment", "info on a DeepLense folder with DEEPLENSE_CACHE empty", ["info", "{W}/dl"],
                     "refuse", ("set but empty",), env={"DEEPLENSE_CACHE": ""}, setup=_dl_folder))
    tries.append(Try("environment", "info on a DeepLense folder", ["info", "{W}/dl"], "ok", setup=_dl_folder))
    return tries


def _dl_folder(p):
    (p["W"] / "dl" / "axion").mkdir(parents=True)
    for i, im in enumerate(np.load(p["STACK"])):
        np.save(p["W"] / "dl" / "axion" / f"axion_sim_{i}.npy", np.array([im.astype(np.float64), 1e-23], dtype=object),
                allow_pickle=True)


def training_tries() -> list:
    def trunc(p):
        shutil.copytree(p["RUN"], p["W"] / "trunc")
        f = p["W"] / "trunc" / "weights.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    def empty(p):
        shutil.copytree(p["RUN"], p["W"] / "trunc")
        (p["W"] / "trunc" / "weights.safetensors").write_bytes(b"")
    def const(p):
        np.save(p["W"] / "c.npy", np.load(p["TRAIN"] / "images.npy")[:20])
        pd.DataFrame({"log10_m_axion": [-23.0] * 20}).to_csv(p["W"] / "c.csv", index=False)
    def kw(p):
        shutil.copytree(p["RUN"], p["W"] / "kw")
        c = json.loads((p["W"] / "kw" / "config.json").read_text())
        c["model_kw"] = {"weights": "/etc/hostname"}
        (p["W"] / "kw" / "config.json").write_text(json.dumps(c))
    def odd(p):
        (p["W"] / "odd").mkdir()
        np.save(p["W"] / "odd" / os.fsdecode(b"lens_\xff.npy"), np.load(p["STACK"])[0])
    utf = lambda p, r: (None if "\\xff" in (r.stdout + (p["W"] / "o.csv").read_text() if (p["W"] / "o.csv").exists()
                                            else r.stdout)
                        else "the name is not in the CSV")
    t = [Try("training", f"train --lr {lr}", ["train", "--data", "{TRAIN}", *SMALL, "--lr", lr, "--out", "{W}/nan"],
             "refuse", ("diverged",), outputs=("nan/",)) for lr in ("1e10", "1e6")]
    t += [Try("training", "train --init from truncated weights",
              ["train", "--data", "{TRAIN}", *SMALL, "--init", "{W}/trunc", "--out",
               "{W}/i"], "refuse", ("cannot be loaded",), setup=trunc),
          Try("training", "train --init from empty weights",
              ["train", "--data", "{TRAIN}", *SMALL, "--init", "{W}/trunc", "--out",
              "{W}/i"], "refuse", ("cannot be loaded",), setup=empty),
          Try("training", "train --init from a folder that is no run",
              ["train", "--data", "{TRAIN}", *SMALL, "--init", "{CAL}", "--out",
              "{W}/i"], "refuse", ("not a deeplense_fastai run",)),
          Try("training", "flow on a constant target",
              ["train", "--data", "{W}/c.npy", "--loss", "flow", *SMALL, "--out", "{W}/cf"],
              "refuse", ("constant",), setup=const),
          Try("training", "config.json naming a weights file", ["predict", "--model", "{W}/kw", "{STACK}"], "refuse",
              ("weights file",),
              setup=kw),
          Try("training", "predict a file whose name is not UTF-8 (stdout)", ["predict", "--model", "{RUN}", "{W}/odd"],
              "ok",
              setup=odd, check=utf),
          Try("training", "predict a file whose name is not UTF-8 (--out)",
              ["predict", "--model", "{RUN}", "{W}/odd", "--out",
              "{W}/o.csv"], "ok", setup=odd, check=utf, outputs=("o.csv",)),
          Try("training", "info on a folder with a non-UTF-8 name", ["info", "{W}/odd"], "ok", setup=odd)]
    return t


def _killed(argv, wait_for, extra_wait=0.0):
    "Run `deeplense argv` and kill -9 it once `wait_for` (fixture-relative) exists: a crash in the middle of the work."
    def f(p):
        import signal
        proc = subprocess.Popen([*PY, *fill(argv, p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, **ENV), cwd=p["W"], stdin=subprocess.DEVNULL)
        target, t0 = Path(fill([wait_for], p)[0]), time.time()
        while not target.exists() and proc.poll() is None and time.time() - t0 < 300: time.sleep(0.05)
        time.sleep(extra_wait)
        if proc.poll() is None: proc.send_signal(signal.SIGKILL)
        proc.wait()
    return f


def _same_dataset(name, n, seed):
    "The resumed dataset has the bytes of one simulated without interruption."
    def f(p, r):
        ref = p["W"] / "ref"
        rr = run(["simulate", "--n", n, "--seed", seed, "--out", ref], dict(os.environ, **ENV), p["W"])
        if rr is None or rr.returncode: return "the reference could not be simulated"
        a, b = np.load(p["W"] / name / "images.npy"), np.load(ref / "images.npy")
        if not np.array_equal(a, b): return "images differ from an uninterrupted run"
        if (p["W"] / name / "labels.csv").read_text() != (ref / "labels.csv").read_text(): return "labels differ"
    return f


def kill_tries() -> list:
    "kill -9 in each phase of each command that writes, then what a user does next."
    train = ["train", "--data", "{TRAIN}", "--arch", "xresnet_small", "--epochs", 3, "--bs", 4, "--out", "{W}/k"]
    ck = "{W}/k/models/checkpoint.json"
    hist = lambda p, r: (None if list(pd.read_csv(p["W"] / "k" / "history.csv").epoch) == [0, 1, 2]
                         else "history is not epochs 0-2")
    t = [Try("kill -9", "train killed after an epoch, then --resume", train + ["--resume"], "ok",
             setup=_killed(train, ck),
             outputs=("k/",), check=hist),
         Try("kill -9", "train killed after an epoch, then --resume at another rate",
             train + ["--lr", "1e-2", "--resume"], "refuse", ("cannot resume",), setup=_killed(train, ck)),
         Try("kill -9", "train killed after an epoch, then the plain command", train, "refuse", ("not empty",),
             setup=_killed(train, ck)),
         Try("kill -9", "train killed after an epoch, then --force", train + ["--force"], "ok",
             setup=_killed(train, ck), outputs=("k/",)),
         Try("kill -9", "train killed while exporting, then --resume", train + ["--resume"], "ok",
             setup=_killed(train, "{W}/k/weights.safetensors"), outputs=("k/",), check=hist),
         Try("kill -9", "train killed while testing, then --resume", train + ["--resume"], "ok",
             setup=_killed(train, "{W}/k/config.json"), outputs=("k/",), check=hist)]
    sim = ["simulate", "--n", 600, "--seed", 5, "--out", "{W}/s"]
    t += [Try("kill -9", f"simulate killed {w:.1f} s in, then the same command", sim, "ok",
              setup=_killed(sim, "{W}/s", w),
              outputs=("s/",), check=_same_dataset("s", 600, 5)) for w in (1.0, 3.0)]
    for name, argv, out in (("predict --out", ["predict", "--model", "{RUN}", "{TRAIN}", "--out", "{W}/p.csv"],
                             "p.csv"),
                            ("calibrate", ["calibrate", "--model", "{FLOW}", "--data", "{CAL}"],
                             "flow/calibration.json"),
                            ("combine --json", ["combine", "--model", "{FLOW}", "{CAL}", "--json", "{W}/j.json"],
                             "j.json")):
        t.append(Try("kill -9", f"{name} killed at start, then the same command", argv, "ok",
                     setup=_killed(argv, "{W}", 2.5),
                     outputs=(out,)))
    return t


def directory_tries() -> list:
    "Output directories that hold something else: datasets, runs, the user's files."
    return [Try("output dirs", "simulate into another dataset", ["simulate", "--n", 8, "--out", "{CAL}"], "refuse"),
            Try("output dirs", "simulate into a run", ["simulate", "--n", 8, "--out", "{RUN}"], "refuse",
                ("not a deeplense_fastai dataset",)),
            Try("output dirs", "train into a dataset", ["train", "--data", "{TRAIN}", *SMALL, "--out", "{CAL}"],
                "refuse", ("not empty",)),
            Try("output dirs", "train --force into a dataset",
                ["train", "--data", "{TRAIN}", *SMALL, "--out", "{CAL}", "--force"],
                "refuse", ("refusing to remove",)),
            Try("output dirs", "train --force into its own data",
                ["train", "--data", "{TRAIN}", *SMALL, "--out", "{TRAIN}", "--force"],
                "refuse", ("--data",)),
            Try("output dirs", "train --resume into a dataset",
                ["train", "--data", "{TRAIN}", *SMALL, "--out", "{CAL}", "--resume"],
                "refuse", ("no checkpoint",)),
            Try("output dirs", "train into the folder that holds its data",
                ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}"],
                "refuse", ("--data",)),
            Try("output dirs", "train into the user's folder",
                ["train", "--data", "{TRAIN}", *SMALL, "--out", "{W}/notes"], "refuse",
                ("not empty",), setup=lambda p: ((p["W"] / "notes").mkdir(),
                                                 (p["W"] / "notes" / "thesis.tex").write_text("mine")))]


CATEGORIES = dict(outputs=output_tries, resume=resume_tries, calibration=calibration_tries, duplicates=duplicate_tries,
                  bounded=bounded_tries, disk=disk_tries, environment=environment_tries, training=training_tries,
                  kill=kill_tries, dirs=directory_tries)


def one(t: Try, fixture: Path, base_env: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=fixture.parent))
    try:
        for p in fixture.iterdir():
            if p.name == "cache": continue
            (shutil.copytree if p.is_dir() else shutil.copy)(p, work / p.name)
        paths = dict(paths_of(work), FIX=fixture)
        if t.setup: t.setup(paths)
        env = dict(base_env, **{k: fill([v], paths)[0] for k, v in t.env.items()})
        before = tree_digest(work)
        t0 = time.time()
        r = run(fill(t.argv, paths), env, work, t.fsize, t.timeout)
        secs = time.time() - t0
        after = tree_digest(work)
        if t.outputs:          # a directory output (trailing '/') allows everything under it
            dirs = [o for o in t.outputs if o.endswith("/")]
            allowed = [k for k in before if any(k.startswith(d) or k == d[:-1] for d in dirs)]
            t.outputs = tuple(t.outputs) + tuple(allowed)
        if r is not None:  # messages name the try's folder as {W}, not a path of this machine
            r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout, r.stderr.replace(str(work), "{W}"))
        verdict, why = judge(t, r, before, after, paths)
        return dict(category=t.category, name=t.name, argv=" ".join(map(str, t.argv)), expect=t.expect, verdict=verdict,
                    why=why, seconds=round(secs, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="tries run at once (each a subprocess)")
    ap.add_argument("--only", default=None, help=f"comma-separated categories: {', '.join(CATEGORIES)}")
    ap.add_argument("--keep", default=None,
                    help="build (or reuse) the fixture in this folder instead of a temporary one")
    a = ap.parse_args()
    root = Path(a.keep or tempfile.mkdtemp(prefix="deeplense-probe-"))
    fixture = root / "fixture"
    env = dict(os.environ, DEEPLENSE_CACHE=str(root / "cache"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    ENV.update(DEEPLENSE_CACHE=env["DEEPLENSE_CACHE"], OMP_NUM_THREADS=env["OMP_NUM_THREADS"])
    if not (fixture / "calflow" / "calibration.json").exists():
        shutil.rmtree(fixture, ignore_errors=True)
        fixture.mkdir(parents=True)
        t0 = time.time()
        build_fixture(fixture, env)
        print(f"fixture built in {time.time() - t0:.0f} s", flush=True)
    tries = [t for k, f in CATEGORIES.items() if not a.only or k in a.only.split(",") for t in f()]
    print(f"{len(tries)} tries, {a.jobs} at a time", flush=True)
    rows = []
    with ThreadPoolExecutor(a.jobs) as ex:
        for i, row in enumerate(ex.map(lambda t: one(t, fixture, env), tries)):
            rows.append(row)
            mark = "" if row["verdict"] == "clean" else f"  <-- {row['verdict']}: {row['why']}"
            print(f"[{i + 1}/{len(tries)}] {row['category']}: {row['name']} ({row['seconds']} s){mark}", flush=True)
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict()
    by_cat = pd.crosstab(pd.Series([r["category"] for r in rows], name="category"),
                         pd.Series([r["verdict"] for r in rows], name="verdict")).reset_index().to_dict("records")
    print(json.dumps(counts))
    if not a.only: save("probe", counts=counts, categories=by_cat, n=len(rows), table=rows)
    if not a.keep: shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
