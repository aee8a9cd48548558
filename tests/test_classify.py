"""Classification, DeepLense's own task, on the user's path: `deeplense train --task classify` on a three-class DeepLense
layout (class sub-folders, written by the simulator's DeepLense writer) and on a simulated preset, then `predict`
(fixed columns, one probability per class) and `evaluate`, every command a subprocess without a terminal and with
default flags. The oracles are independent of the code: probabilities must sum to one, the predicted class must be the
most probable one, the confusion matrix must count every test image once, and the AUC of a class is recomputed here
from the probabilities with scikit-learn.
"""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import deeplense as cli, user_env

CLASSES = ["axion", "cdm", "no_sub"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("classify")
    return user_env(home, OMP_NUM_THREADS=1), home


@pytest.fixture(scope="module")
def three(env):
    e, home = env
    r = cli("simulate", "--preset", "model_ii", "--n", 240, "--seed", 5, "--format", "deeplense", "--classes",
            "no_sub,cdm,axion", "--out", home / "three", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    return home / "three"


@pytest.fixture(scope="module")
def run(env, three):
    e, home = env
    r = cli("train", "--task", "classify", "--data", three, "--arch", "xresnet_small", "--epochs", 2, "--bs", 32,
            "--out", home / "run", env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    return home / "run", r


def test_train_writes_a_classifier_run(run):
    out, r = run
    assert "\r" not in r.stdout and "█" not in r.stdout              # no progress bar on stdout without a terminal
    assert "accuracy" in r.stdout and "ROC AUC one-vs-rest" in r.stdout and "confusion" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"] == CLASSES and cfg["loss"] == "cross_entropy" and cfg["n_out"] == 3
    for f in ("roc.png", "confusion.png", "metrics.json", "ood.safetensors", "weights.safetensors"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == CLASSES and sum(map(sum, m["confusion"])) == m["n"] == 24     # the held-out tenth of 240
    assert 0 <= m["accuracy"] <= 1 and set(m["auc_per_class"]) == set(CLASSES)


def test_predict_gives_one_probability_per_class(run, three, env):
    e, _ = env
    out, _ = run
    r = cli("predict", "--model", out, three / "cdm", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(pd.io.common.StringIO(r.stdout))
    assert list(df.columns) == ["source", "index", "file", "status", "pred_class", "p_axion", "p_cdm", "p_no_sub",
                                "ood_score", "ood", "in_prior"]
    assert len(df) == 80 and (df["status"] == "ok").all()
    p = df[["p_axion", "p_cdm", "p_no_sub"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (df["pred_class"].to_numpy() == np.array(CLASSES)[p.argmax(1)]).all()
    assert df["in_prior"].isna().all()                                       # a classifier has no target range


def test_evaluate_scores_and_says_what_it_trained_on(run, three, env):
    from sklearn.metrics import roc_auc_score
    e, home = env
    out, _ = run
    r = cli("evaluate", "--model", out, "--data", three, "--json", home / "eval.json", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "images are ones the run trained or validated on" in r.stderr          # its own training folder
    rep = json.loads((home / "eval.json").read_text())
    assert rep["n"] == 240 and sum(map(sum, rep["confusion"])) == 240 and rep["seen_by_run"]["train"] == 216
    p = cli("predict", "--model", out, three, env=e)
    df = pd.read_csv(pd.io.common.StringIO(p.stdout))
    truth = df["file"].str.split("/").str[0].to_numpy()                            # the class sub-folder of each file
    for c in CLASSES:                                                              # AUC recomputed from the probabilities
        assert abs(roc_auc_score(truth == c, df[f"p_{c}"]) - rep["auc_per_class"][c]) < 1e-6


def test_fine_tune_implies_task_and_force_replaces_a_finished_run(run, three, env):
    e, home = env
    out, _ = run
    r = cli("train", "--init", out, "--data", three, "--epochs", 1, "--bs", 32, "--out", home / "tuned", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((home / "tuned" / "config.json").read_text())
    assert cfg["classes"] == CLASSES and cfg["arch"] == "xresnet_small" and cfg["init"] == str(out)
    r = cli("train", "--init", out, "--data", three, "--epochs", 1, "--bs", 32, "--out", home / "tuned", "--force", env=e)
    assert r.returncode == 0, r.stderr[-2000:]                                   # a finished run (with ood.safetensors) is replaced


def test_classify_a_simulated_preset(env):
    e, home = env
    r = cli("train", "--task", "classify", "--preset", "model_ii", "--n", 150, "--arch", "xresnet_small", "--epochs", 1,
            "--bs", 32, "--out", home / "sim", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((home / "sim" / "config.json").read_text())["classes"] == CLASSES
    m = json.loads((home / "sim" / "metrics.json").read_text())
    assert m["n"] == 1000 and sorted(np.sum(m["confusion"], 1)) == [333, 333, 334]   # the simulated test set cycles the classes


@pytest.mark.parametrize("args,message", [
    (["--task", "classify", "--loss", "mse"], "--loss mse: a classifier trains with cross-entropy"),
    (["--task", "classify", "--online"], "--task classify trains on a fixed set"),
    (["--loss", "cross_entropy"], "--loss cross_entropy: give --task classify"),
    (["--task", "classify", "--target", "a", "--target", "b"], "give one --target"),
])
def test_classify_refusals_are_one_line(args, message, env, tmp_path):
    e, _ = env
    r = cli("train", *args, "--out", tmp_path / "r", env=e)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()


def test_one_class_data_and_a_regression_init_are_refused(run, env, tmp_path):
    e, home = env
    r = cli("simulate", "--preset", "model_ii", "--n", 20, "--out", tmp_path / "axions", env=e)      # axion images only
    assert r.returncode == 0
    r = cli("train", "--task", "classify", "--data", tmp_path / "axions", "--epochs", 1, "--out", tmp_path / "r", env=e)
    assert r.returncode == 2 and "two or more classes" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    out, _ = run
    r = cli("train", "--init", out, "--task", "regress", "--data", tmp_path / "axions", "--out", tmp_path / "r2", env=e)
    assert r.returncode == 2 and "it is a classifier" in r.stderr, r.stderr


def shapes(n_per: int, seed: int = 0):
    """Three classes no network can confuse once trained, each unchanged by the square's symmetries (the training
    augmentation): a disk, a ring and a plus sign, with noise; returned as images (N, 32, 32) and their names."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-16:16, -16:16] + 0.5
    r = np.hypot(xx, yy)
    proto = {"disk": (r < 6).astype(float), "ring": ((r > 9) & (r < 12)).astype(float),
             "plus": ((np.abs(xx) < 2.5) | (np.abs(yy) < 2.5)).astype(float) * (r < 13)}
    names = np.repeat(list(proto), n_per)
    imgs = np.stack([proto[k] + 0.15 * rng.standard_normal((32, 32)) for k in names]).astype(np.float32)
    return imgs, names


def test_class_order_survives_training_export_and_predict(env, tmp_path):
    """Trained on a user's .npy stack with a CSV column of words, the exported run names new images of each shape
    correctly: the class order of training, config.json, predict's columns and evaluate's confusion matrix agree."""
    e, _ = env
    imgs, names = shapes(40)
    np.save(tmp_path / "toy.npy", imgs)
    pd.DataFrame({"kind": names}).to_csv(tmp_path / "toy.csv", index=False)
    r = cli("train", "--task", "classify", "--data", tmp_path / "toy.npy", "--target", "kind", "--arch", "xresnet_small",
            "--epochs", 6, "--bs", 16, "--out", tmp_path / "run", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "classes disk, plus, ring (column kind)" in r.stdout
    new, truth = shapes(10, seed=1)
    np.save(tmp_path / "new.npy", new)
    df = pd.read_csv(pd.io.common.StringIO(cli("predict", "--model", tmp_path / "run", tmp_path / "new.npy", env=e).stdout))
    assert (df["pred_class"].to_numpy() == truth).mean() >= 0.9, df["pred_class"].tolist()
    pd.DataFrame({"kind": truth}).to_csv(tmp_path / "new.csv", index=False)
    r = cli("evaluate", "--model", tmp_path / "run", "--data", tmp_path / "new.npy", "--json", tmp_path / "e.json", env=e)
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["classes"] == ["disk", "plus", "ring"] and np.trace(rep["confusion"]) >= 27     # the diagonal: right names


def test_classifier_inputs_checked_before_any_work(run, three, env, tmp_path):
    e, home = env
    out, _ = run
    cache = tmp_path / "cache"
    e2 = dict(e, DEEPLENSE_CACHE=str(cache))
    for args, message in [(["--preset", "bogus"], "unknown preset 'bogus'"),
                          (["--preset", "model_ii", "--target", "f_sub"], "names its classes in the column 'class'"),
                          (["--data", three, "--target", "f_sub"], "holds measured numbers, not class names")]:
        r = cli("train", "--task", "classify", *args, "--out", tmp_path / "r", env=e2)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (cache / "sims").exists() or not any((cache / "sims").iterdir())   # nothing was simulated
    bad = np.zeros((3, 64, 64), np.float32); bad[0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad); pd.DataFrame({"class": ["cdm", "axion", "no_sub"]}).to_csv(tmp_path / "bad.csv", index=False)
    r = cli("train", "--task", "classify", "--data", three, "--test", tmp_path / "bad.npy", "--epochs", 1, "--out", tmp_path / "r", env=e)
    assert r.returncode == 2 and "NaN or Inf" in r.stderr and not (tmp_path / "r").exists(), r.stderr
    r = cli("evaluate", "--model", out, "--data", tmp_path / "bad.npy", "--target", "nosuch", env=e)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr                 # no note before the refusal


def test_resume_continues_a_classifier_without_task(three, env, tmp_path):
    e, _ = env
    args = ["--data", three, "--arch", "xresnet_small", "--epochs", 2, "--bs", 32, "--out", tmp_path / "r"]
    r = cli("train", "--task", "classify", *args, env=e)
    assert r.returncode == 0
    (tmp_path / "r" / "metrics.json").unlink(); (tmp_path / "r" / "config.json").unlink()     # as if killed before export
    r = cli("train", "--data", three, "--epochs", 2, "--bs", 32, "--out", tmp_path / "r", "--resume", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["classes"] == CLASSES
