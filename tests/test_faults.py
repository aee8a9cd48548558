"""Fault injection: every bad input and fault of the reliability issue, run as a user runs it (a subprocess, default
flags). Each must end in exit code 2 and one line naming the problem, before any work, with nothing on disk lost or
half-written; or, where the input is legal, in a clearly reported value instead of a silent wrong one.
(The NaN, complex and random-bytes images, and the free-space check, are in test_cli_matrix.py.)"""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def refused(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("note:") and "% [" not in l]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words: assert w in lines[0], lines[0]
    return lines[0]


def digest(d: Path):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    e = dict(os.environ, DEEPLENSE_CACHE=str(root / "cache"))
    return root, e


@pytest.fixture(scope="module")
def data(env):
    root, e = env
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "train", "model_ii", n=48, seed=0, progress=False)
    write_dataset(root / "test150", "model_i", n=4, seed=1, progress=False)
    return root


@pytest.fixture(scope="module")
def model(env, data):
    root, e = env
    r = run("train", "--data", root / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", root / "run", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run"


# ---- data loss -----------------------------------------------------------------------------------------------
def test_simulate_never_replaces_a_users_own_files(env, tmp_path):
    mine = tmp_path / "mine"; mine.mkdir()
    np.save(mine / "images.npy", np.ones((3, 8, 8))); (mine / "labels.csv").write_text("a\n1\n2\n3\n")
    before = digest(mine)
    refused(run("simulate", "--n", 8, "--out", mine, env=env[1]), "not a deeplense_fastai dataset")
    assert digest(mine) == before


def test_simulate_deeplense_layout_never_mixes_into_real_files(env, tmp_path):
    real = tmp_path / "real"; (real / "axion").mkdir(parents=True)
    np.save(real / "axion" / "axion_sim_1.npy", np.array([np.zeros((8, 8)), 1e-23], dtype=object), allow_pickle=True)
    before = digest(real)
    refused(run("simulate", "--n", 6, "--format", "deeplense", "--out", real, env=env[1]), "not a deeplense_fastai dataset")
    assert digest(real) == before


def test_two_writers_on_one_out_are_refused(env, tmp_path):
    out = tmp_path / "busy"; out.mkdir()
    with open(out / ".lock-0-1", "w") as f:                      # another `simulate` holds part 0/1
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(run("simulate", "--n", 4, "--out", out, env=env[1]), "another process is writing")
    assert not (out / "images.npy").exists()


# ---- silent wrong answers ------------------------------------------------------------------------------------
def test_batch_larger_than_the_training_set_still_trains(env, data, tmp_path):
    out = tmp_path / "tiny"
    np.save(tmp_path / "ten.npy", np.load(data / "train" / "images.npy")[:10])
    pd.DataFrame({"log10_m_axion": np.linspace(-24, -22, 10)}).to_csv(tmp_path / "ten.csv", index=False)
    r = run("train", "--data", tmp_path / "ten.npy", "--arch", "xresnet_small", "--epochs", 1, "--out", out, env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "batch size 64 is larger than" in r.stderr
    assert np.isfinite(pd.read_csv(out / "history.csv")["train_loss"]).all()


def test_evaluate_refuses_another_quantity(env, data, model):
    refused(run("evaluate", "--model", model, "--data", data / "train", "--target", "f_sub", env=env[1]),
            "the model predicts log10_m_axion")


def test_r2_of_one_image_is_undefined(env, model, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.load(model.parent / "train" / "images.npy")[:1])
    pd.DataFrame({"log10_m_axion": [-23.0]}).to_csv(tmp_path / "one.csv", index=False)
    r = run("evaluate", "--model", model, "--data", one, env=env[1])
    assert r.returncode == 0 and "R^2 undefined" in r.stdout, r.stdout + r.stderr


def test_run_directory_faults(env, model, data, tmp_path):
    good = json.loads((model / "config.json").read_text())
    cases = [(good | {"target_mean": [1e308]}, "target_mean"), ([good], "expected a JSON object"),
             ({k: v for k, v in good.items() if k != "arch"}, "missing the key 'arch'"),
             ({k: v for k, v in good.items() if k != "targets"}, "missing the key 'targets'"),
             (good | {"model_kw": {"nonsense": 3}}, "model_kw does not fit"), (good | {"n_out": -1}, "n_out"),
             (good | {"n_out": 10**12}, "n_out"), (good | {"norm": "zscore"}, "unknown norm"),
             (good | {"norm": "meanstd", "image_stats": None}, "image_stats"), (good | {"size": 100000}, "size must be")]
    for i, (cfg, words) in enumerate(cases):
        bad = tmp_path / f"run{i}"; shutil.copytree(model, bad)
        (bad / "config.json").write_text(json.dumps(cfg))
        refused(run("predict", "--model", bad, data / "train", env=env[1]), words)


# ---- tracebacks that became one line ----------------------------------------------------------------------
def test_bad_image_files(env, model, tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 64, 64), np.float32))
    refused(run("predict", "--model", model, tmp_path / "empty.npy", env=env[1]), "holds no images")
    (tmp_path / "zero.npy").write_bytes(b"")
    refused(run("predict", "--model", model, tmp_path / "zero.npy", env=env[1]), "no NumPy header")
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32)) | {"shape": (10**6, 10**6)}
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header); f.write(b"\0" * 64)
    refused(run("predict", "--model", model, tmp_path / "huge.npy", env=env[1]), "huge.npy")


def test_bad_label_files(env, data, tmp_path):
    imgs = np.load(data / "train" / "images.npy")[:12]
    for name, text, words in [("words", "log10_m_axion\n" + "heavy\n" * 12, "non-numbers"), ("blank", "", "not a readable CSV"),
                              ("binary", None, "not a readable CSV")]:
        np.save(tmp_path / f"{name}.npy", imgs)
        csv = tmp_path / f"{name}.csv"
        if text is None: csv.write_bytes(os.urandom(400) + b"\xff\xfe")
        else: csv.write_text(text)
        refused(run("train", "--data", tmp_path / f"{name}.npy", "--target", "log10_m_axion", "--out", tmp_path / f"o{name}",
                    env=env[1]), words)
        assert not (tmp_path / f"o{name}").exists()


def test_bad_deeplense_directories(env, tmp_path):
    d = tmp_path / "dl"; (d / "axion").mkdir(parents=True)
    for i in range(4):
        np.save(d / "axion" / f"a{i}.npy", np.array([np.ones((8, 8)), 1e-23], dtype=object), allow_pickle=True)
    os.symlink(tmp_path / "gone.npy", d / "axion" / "dangling.npy")
    refused(run("train", "--data", d, "--out", tmp_path / "o1", env=env[1]), "dangling.npy", "dangling link")
    (d / "axion" / "dangling.npy").unlink()
    np.save(d / "axion" / "word.npy", np.array([np.ones((8, 8)), "heavy"], dtype=object), allow_pickle=True)
    refused(run("train", "--data", d, "--out", tmp_path / "o2", env=env[1]), "word.npy", "not a number")


def test_bad_simulate_arguments_leave_nothing(env, tmp_path):
    for args, words in [(["--seed", "-5"], "non-negative"), (["--device", "meta"], "cannot run models"),
                        (["--n", "1000000000000"], "GB free")]:
        out = tmp_path / "s"
        refused(run("simulate", "--n", 8, "--out", out, *args, env=env[1]), words)
        assert not out.exists() or not list(out.iterdir())


def test_bad_train_arguments(env, data, tmp_path):
    f = tmp_path / "afile"; f.write_text("x")
    refused(run("train", "--data", data / "train", "--out", f, env=env[1]), "not a directory")
    refused(run("train", "--data", data / "train", "--workers", "-1", "--out", tmp_path / "w", env=env[1]), "--workers")
    refused(run("train", "--data", data / "train", "--lr", "inf", "--out", tmp_path / "l", env=env[1]), "--lr")
    refused(run("train", "--data", data / "train", "--out", "", env=env[1]), "empty path")
    refused(run("train", "--data", data / "train", "--test", data / "test150", "--out", tmp_path / "t", env=env[1]),
            "150x150", "--size")
    assert not (tmp_path / "t").exists()


def test_bad_output_paths(env, model, data, tmp_path):
    refused(run("evaluate", "--model", model, "--data", data / "train", "--json", tmp_path, env=env[1]), "is a directory")
    refused(run("predict", "--model", model, data / "train", "--out", tmp_path / "no" / "p.csv", env=env[1]), "does not exist")


def test_malformed_manifest_and_sidecar(env, data, tmp_path):
    d = tmp_path / "ds"; shutil.copytree(data / "train", d)
    (d / "manifest.json").write_text("{not json")
    refused(run("info", d, env=env[1]), "manifest")
    refused(run("simulate", "--n", 48, "--out", d, env=env[1]), "manifest.json")
    mm = tmp_path / "mm"; mm.mkdir()
    np.zeros((2, 8, 8), np.int16).tofile(mm / "images_mmep.npy"); np.zeros(2, np.float32).tofile(mm / "masses_mmep.npy")
    (mm / "images_mmep.npy.json").write_text("[1, 2")
    refused(run("info", mm, env=env[1]), "images_mmep.npy.json")


def test_pickled_checkpoint_is_refused_and_not_run(env, data, model, tmp_path):
    out = tmp_path / "res"; shutil.copytree(model, out)
    (out / "models").mkdir(exist_ok=True)
    (out / "models" / "checkpoint.json").write_text(json.dumps(dict(epoch=0, n_epoch=2, best_valid_loss=1.0)))
    import pickle

    class Payload:
        def __reduce__(self): return (os.system, (f"touch {tmp_path}/pwned",))
    (out / "models" / "checkpoint.pth").write_bytes(pickle.dumps(Payload()))
    refused(run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 2, "--bs", 8, "--out", out,
                "--resume", env=env[1]), "cannot be resumed")
    assert not (tmp_path / "pwned").exists()


# ---- other ----------------------------------------------------------------------------------------------------
def test_cache_sees_an_edit_that_keeps_size_and_time(env, tmp_path):
    from deeplense_fastai.data import open_source
    os.environ["DEEPLENSE_CACHE"] = str(tmp_path / "cache")
    try:
        d = tmp_path / "dl"; d.mkdir()
        f = d / "x.npy"; np.save(f, np.zeros((8, 8), np.float32)); st = f.stat()
        assert open_source(d, progress=False).image(0).max() == 0
        np.save(f, np.ones((8, 8), np.float32)); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
        assert open_source(d, progress=False).image(0).max() == 1
    finally: del os.environ["DEEPLENSE_CACHE"]


def test_shared_files_have_the_users_permissions(env, model, data):
    umask = os.umask(0); os.umask(umask)
    want = 0o666 & ~umask
    for f in [model / "weights.safetensors", model / "config.json", model / "metrics.json",
              data / "train" / "labels.csv", data / "train" / "manifest.json", data / "train" / "images.npy"]:
        assert f.stat().st_mode & 0o777 == want, f


def test_interrupted_training_says_how_to_resume(env, data, tmp_path):
    out = tmp_path / "int"
    args = ["train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 50, "--bs", 8, "--out", out]
    p = subprocess.Popen([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env[1])
    t0 = time.time()
    while not (out / "models" / "checkpoint.json").exists() and time.time() - t0 < 120: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err, err[-2000:]
    r = run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 2, "--bs", 8, "--out", out, "--resume",
            env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
