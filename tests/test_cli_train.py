"""`deeplense train / evaluate / predict` end to end, the one-line errors, and data-parallel training with Accelerate."""
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import deeplense
from deeplense_fastai.dataset import write_dataset

ENV = dict(os.environ, PYTHONWARNINGS="ignore")


run = functools.partial(deeplense, check=True, env=ENV)        # `check=False` where the test reads a failure itself


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    write_dataset(d / "train", "model_ii", n=240, seed=0, progress=False)
    write_dataset(d / "test", "model_ii", n=40, seed=1, progress=False)
    write_dataset(d / "big", "model_i", n=4, seed=1, progress=False)
    return d


@pytest.fixture(scope="module")
def run_dir(data):
    out = data / "run"
    r = run("train", "--data", data / "train", "--test", data / "test", "--arch", "xresnet_small", "--epochs", 2,
            "--bs", 32, "--out", out, "--quiet")
    assert "MAE" in r.stdout and "baseline" in r.stdout
    return out


def test_run_directory_contents(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.pkl", "weights.safetensors", "config.json", "metrics.json", "history.csv",
            "pred_vs_true_log10_m_axion.png", "residuals_log10_m_axion.png", "binned_mae_log10_m_axion.png"} <= names
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["n"] == 40 and {"mae", "mse", "rmse", "r2", "baseline_mae", "baseline_mse"} <= set(m)
    assert len(pd.read_csv(run_dir / "history.csv")) == 2


def test_evaluate_json_and_tta(run_dir, data, tmp_path):
    r = run("evaluate", "--model", run_dir, "--data", data / "test", "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"n", "mae", "mse", "rmse", "r2", "baseline_mae", "baseline_mse", "baseline_rmse", "baseline_r2"} <= set(m)
    assert m["n"] == 40 and abs(m["rmse"] ** 2 - m["mse"]) < 1e-9
    assert abs(m["mae"] - json.loads((run_dir / "metrics.json").read_text())["mae"]) < 1e-5
    run("evaluate", "--model", run_dir, "--data", data / "test", "--tta", "--json", tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["tta"] is True


def test_predict_rows_and_no_overwrite(run_dir, data, tmp_path):
    out = tmp_path / "preds.csv"
    run("predict", "--model", run_dir, data / "test", data / "train", "--out", out)
    p = pd.read_csv(out)
    assert len(p) == 280 and "pred_log10_m_axion" in p and p.pred_log10_m_axion.between(-26, -20).all()
    r = run("predict", "--model", run_dir, data / "test", "--out", out, check=False)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--arch", "vit_giant"], "unknown architecture 'vit_giant'"),
    (["train", "--data", "/nonexistent/x"], "no such file or directory"),
    (["train", "--loss", "l4"], "unknown loss"),
    (["train", "--opt", "ranger21", "--schedule", "one_cycle"], "goes with --opt ranger21"),
    (["train", "--epochs", "0"], "must be positive"),
    (["calibrate", "--model", "/nonexistent", "--data", ".", "--bank", "400"], "--bank goes with --populations"),
    (["calibrate", "--model", "/nonexistent", "--data", ".", "--shift-populations", "100"],
     "--shift-populations goes with --populations"),
    (["calibrate", "--model", "/nonexistent", "--data", ".", "--populations", "model_ii", "--shift-lenses", "50"],
     "--shift-lenses goes with --shift-populations"),
    (["evaluate", "--model", "/nonexistent", "--data", "."], "no such run directory"),
])
def test_train_errors_are_one_line(args, message, tmp_path):
    r = run(*args, check=False, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_data_specific_errors(run_dir, data, tmp_path):
    r = run("train", "--data", data / "train", "--target", "mass_of_the_sun", "--out", tmp_path / "x", check=False)
    assert r.returncode == 2 and "target column 'mass_of_the_sun' does not exist" in r.stderr
    r = run("predict", "--model", run_dir, data / "big")         # Model I (0.05"/px) onto a Model II run's grid (0.101"/px)
    assert "images are 150x150, the run was trained on 64x64" in r.stderr and "resampled from 0.05 to 0.101" in r.stderr
    assert len(r.stdout.splitlines()) == 5
    r = run("train", "--data", data / "train", "--out", run_dir, check=False)
    assert r.returncode == 2 and "exists and is not empty" in r.stderr


def test_accelerate_launch_two_cpu_processes(data, tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    out = tmp_path / "ddp"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "29518",
           "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "deeplense_fastai.cli", "train", "--data", str(data / "train"), "--arch",
           "xresnet_small", "--epochs", "1", "--bs", "32", "--out", str(out), "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, CUDA_VISIBLE_DEVICES=""), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) final weights sha256 ([0-9a-f]{64})", r.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], r.stdout
    assert r.stdout.count("run written to") == 1, "only rank 0 writes the run"
    assert (out / "weights.safetensors").exists() and len(pd.read_csv(out / "history.csv")) == 1
