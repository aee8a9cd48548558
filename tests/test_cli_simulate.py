"""`deeplense simulate` end to end in subprocesses: files on disk, shards, resume after a kill, one-line errors."""
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import deeplense

ENV = dict(os.environ, PYTHONWARNINGS="ignore")


run = functools.partial(deeplense, check=True, env=ENV)        # `check=False` where the test reads a failure itself


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_cli_import_is_light():
    code = "import sys, deeplense_fastai.cli; assert 'torch' not in sys.modules and 'fastai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    r = deeplense("--help")
    assert r.returncode == 0 and "simulate" in r.stdout


def test_native_dataset_on_disk(tmp_path):
    out = tmp_path / "ds"
    run("simulate", "--preset", "model_ii", "--n", 12, "--seed", 3, "--out", out, "--classes", "no_sub,cdm,axion", "--quiet")
    m = json.loads((out / "manifest.json").read_text())
    assert m["n"] == 12 and m["seed"] == 3 and m["preset"]["name"] == "model_ii" and m["package_version"]
    for name, digest in m["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    images = np.load(out / "images.npy", mmap_mode="r")
    assert images.shape == (12, 1, 64, 64) and images.dtype == np.float32 and np.isfinite(images).all()
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 12 and (labels["class"].value_counts() == 4).all()
    ax = labels[labels["class"] == "axion"]
    assert ax.log10_m_axion.between(-24, -22).all() and labels[labels["class"] != "axion"].log10_m_axion.isna().all()
    assert not list(out.glob(".*")), "no temporary or progress files are left behind"
    info = run("info", out)
    assert "12 images" in info.stdout and "axion 4" in info.stdout
    again = run("simulate", "--preset", "model_ii", "--n", 12, "--seed", 3, "--out", out, "--classes", "no_sub,cdm,axion")
    assert "verified" in again.stderr


def test_shards_reassemble_into_the_same_dataset(tmp_path):
    run("simulate", "--preset", "model_i", "--n", 20, "--seed", 7, "--out", tmp_path / "whole", "--quiet")
    for i in (3, 1, 0, 2):
        run("simulate", "--preset", "model_i", "--n", 20, "--seed", 7, "--out", tmp_path / "parts", "--shard", f"{i}/4",
            "--batch-size", 3, "--quiet")
    from deeplense_fastai.dataset import open_dataset
    a, b = open_dataset(tmp_path / "whole"), open_dataset(tmp_path / "parts")
    assert len(b.parts) == 4
    np.testing.assert_array_equal(a.images(), b.images())
    pd.testing.assert_frame_equal(a.labels, b.labels)


def test_incomplete_shards_are_reported(tmp_path):
    run("simulate", "--preset", "model_ii", "--n", 8, "--out", tmp_path / "p", "--shard", "0/2", "--quiet")
    r = run("info", tmp_path / "p", check=False)
    assert r.returncode == 2 and "parts [1] of 2 are missing" in r.stderr


def test_killed_run_resumes_to_identical_result(tmp_path):
    args = ["simulate", "--preset", "model_i", "--n", 480, "--seed", 1, "--batch-size", 16, "--quiet"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / ".images.npy.progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.exists() and json.loads(progress.read_text())["done"] >= 32):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and not (out / "images.npy").exists(), "a killed run must not look complete"
    done = json.loads(progress.read_text())["done"]
    assert 0 < done < 480
    r = run(*args, "--out", out)
    run(*args, "--out", tmp_path / "clean")
    np.testing.assert_array_equal(np.load(out / "images.npy"), np.load(tmp_path / "clean" / "images.npy"))
    assert (out / "labels.csv").read_text() == (tmp_path / "clean" / "labels.csv").read_text()


def test_deeplense_layout(tmp_path):
    out = tmp_path / "dl"
    run("simulate", "--preset", "model_i", "--n", 6, "--out", out, "--format", "deeplense", "--classes", "cdm,axion", "--quiet")
    files = sorted(out.rglob("*.npy"))
    assert [f.parent.name for f in files] == ["axion"] * 3 + ["cdm"] * 3
    labels = pd.read_csv(out / "labels.csv").set_index("index")
    for f in files:
        i = int(f.stem.split("_")[-1])
        if f.parent.name == "axion":               # DeepLenseSim: np.array([image, axion mass in eV], dtype=object)
            image, label = np.load(f, allow_pickle=True)   # our own freshly written file, read as DeepLense tools read it
            assert np.isclose(label, 10 ** labels.loc[i, "log10_m_axion"])
        else:                                      # DeepLenseSim's sim_cdm.py / sim_no_sub.py: the bare image
            image = np.load(f, allow_pickle=False)
        assert image.shape == (150, 150) and image.dtype == np.int64 and (image >= 0).all()


@pytest.mark.parametrize("args,message", [
    (["--preset", "model_v"], "unknown preset 'model_v'"),
    (["--n", "0"], "must be positive"),
    (["--n", "ten"], "expected a positive integer"),
    (["--shard", "4/4"], "need 0 <= I < K"),
    (["--classes", "wimp"], "classes are a comma-separated subset"),
    (["--format", "hdf5"], "invalid choice"),
    (["--device", "quantum"], "unknown device"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    base = {"--preset": "model_ii", "--n": "4", "--out": str(tmp_path / "x")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    r = run("simulate", *[a for kv in base.items() for a in kv], check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists(), "nothing is written when the arguments are bad"


def test_existing_different_dataset_is_refused_and_untouched(tmp_path):
    out = tmp_path / "ds"
    run("simulate", "--preset", "model_ii", "--n", 4, "--out", out, "--quiet")
    before = tree_digest(out)
    r = run("simulate", "--preset", "model_i", "--n", 4, "--out", out, check=False)
    assert r.returncode == 2 and "holds a different dataset" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert tree_digest(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("precious")
    r = run("simulate", "--n", 4, "--out", tmp_path / "other", check=False)
    assert r.returncode == 2 and "not a deeplense_fastai dataset" in r.stderr
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["thesis.tex"]


def test_corrupted_dataset_is_reported_not_rewritten(tmp_path):
    out = tmp_path / "ds"
    run("simulate", "--preset", "model_ii", "--n", 4, "--out", out, "--quiet")
    data = bytearray((out / "images.npy").read_bytes())
    data[-1] ^= 0xFF
    (out / "images.npy").write_bytes(bytes(data))
    r = run("simulate", "--preset", "model_ii", "--n", 4, "--out", out, check=False)
    assert r.returncode == 2 and "sha256 mismatch" in r.stderr
    assert (out / "images.npy").read_bytes() == bytes(data)
