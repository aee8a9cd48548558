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
from conftest import deeplense as run, refused, user_env


def digest(d: Path):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return root, user_env(root)


@pytest.fixture(scope="module")
def data(env, tiny_data):
    "`train`: a copy of conftest's tiny_data (48 Model II images, seed 0: the images `model` and `flow` trained on)."
    root, e = env
    shutil.copytree(tiny_data.data, root / "train")
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "test150", "model_i", n=4, seed=1, progress=False)
    return root


@pytest.fixture(scope="module")
def model(tiny_run, data):
    "A tiny model trained with default flags on `train`'s images: conftest's tiny_run (tests copy it to change it)."
    return tiny_run[0]


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


def test_bad_output_paths_before_work(env, model, data, tmp_path):
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
    (out / "config.json").unlink(); (out / "metrics.json").unlink()      # an unfinished run: its real checkpoint.json...
    import pickle

    class Payload:
        def __reduce__(self): return (os.system, (f"touch {tmp_path}/pwned",))
    (out / "models" / "checkpoint.pth").write_bytes(pickle.dumps(Payload()))   # ...and a planted pickle as its weights
    refused(run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", out,
                "--resume", env=env[1]), "cannot be resumed")
    (out / "models" / "checkpoint.json").write_text(json.dumps(dict(epoch=0, n_epoch=2, best_valid_loss=1.0)))
    refused(run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", out,
                "--resume", env=env[1]), "cannot be resumed", "records no settings")
    assert not (tmp_path / "pwned").exists()


# ---- other ----------------------------------------------------------------------------------------------------
def test_cache_sees_an_edit_that_keeps_size_and_time(env, tmp_path, monkeypatch):
    from deeplense_fastai.data import open_source
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))     # restored after the test, whatever it was
    d = tmp_path / "dl"; d.mkdir()
    f = d / "x.npy"; np.save(f, np.zeros((8, 8), np.float32)); st = f.stat()
    assert open_source(d, progress=False).image(0).max() == 0
    np.save(f, np.ones((8, 8), np.float32)); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert open_source(d, progress=False).image(0).max() == 1


def test_shared_files_have_the_users_permissions(env, model, data):
    umask = os.umask(0); os.umask(umask)
    want = 0o666 & ~umask
    for f in [model / "weights.safetensors", model / "config.json", model / "metrics.json",
              data / "train" / "labels.csv", data / "train" / "manifest.json", data / "train" / "images.npy"]:
        assert f.stat().st_mode & 0o777 == want, f


def test_interrupted_training_says_how_to_resume(env, data, tmp_path):
    out = tmp_path / "int"
    args = ["train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 12, "--bs", 4, "--out", out]
    p = subprocess.Popen([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env[1],    # Ctrl-C as at a terminal, even when this test
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # runs as a background job
    t0 = time.time()
    while not (out / "models" / "checkpoint.json").exists() and time.time() - t0 < 120: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err, err[-2000:]
    refused(run(*args, "--lr", "1e-3", "--resume", env=env[1]), "fit lr")          # another schedule: refused, not mixed in
    other = [a if a != "xresnet_small" else "resnet18" for a in args]                 # another architecture: named as the resume
    assert "--init None" not in refused(run(*other, "--resume", env=env[1]), f"--resume {out}", "its arch is")
    r = run(*args, "--resume", env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(pd.read_csv(out / "history.csv").epoch) == list(range(12))
    lines = [l for l in r.stdout.splitlines() if l.startswith("epoch ")]     # the log of the resumed epochs only:
    assert lines and all("valid_loss" in l for l in lines), r.stdout        # no empty line for those trained before
    assert int(lines[0].split()[1].split("/")[0]) > 1 and len(lines) < 12, r.stdout


# ==== issue 28: the second fault probe ==========================================================================
@pytest.fixture(scope="module")
def flow(env, data, tiny_flow):
    """A flow run trained with default flags on `train`'s images (its test set: a tenth of them): conftest's tiny_flow;
    and a separate calibration split."""
    root, e = env
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "cal", "model_ii", n=24, seed=2, progress=False)
    return tiny_flow[0]


def calibrated(flow, data, tmp_path, *args, env):
    run_dir = tmp_path / "cal_run"; shutil.copytree(flow, run_dir)
    r = run("calibrate", "--model", run_dir, "--data", data / "cal", *args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return run_dir


# ---- 1. one rule for every output path ----
def test_evaluate_json_never_replaces_inputs_or_existing_files(env, model, data, tmp_path):
    d = tmp_path / "ds"; shutil.copytree(data / "train", d)
    run_dir = tmp_path / "run"; shutil.copytree(model, run_dir)
    before = digest(d) | digest(run_dir)
    for f in (run_dir / "config.json", run_dir / "weights.safetensors", d / "labels.csv", run_dir / "new.json"):
        refused(run("evaluate", "--model", run_dir, "--data", d, "--json", f, "--force", env=env[1]), "which this command reads")
    assert digest(d) | digest(run_dir) == before
    mine = tmp_path / "mine.json"; mine.write_text("precious")
    refused(run("evaluate", "--model", run_dir, "--data", d, "--json", mine, env=env[1]), "exists", "--force")
    assert mine.read_text() == "precious"
    link = tmp_path / "link.json"; os.symlink(mine, link)
    refused(run("evaluate", "--model", run_dir, "--data", d, "--json", link, env=env[1]), "symbolic link")
    r = run("evaluate", "--model", run_dir, "--data", d, "--json", link, "--force", env=env[1])
    assert r.returncode == 0 and mine.read_text() == "precious" and not link.is_symlink()     # the link replaced, not its target
    assert json.loads(link.read_text())["n"] > 0


def test_predict_out_never_replaces_inputs(env, model, data, tmp_path):
    d = tmp_path / "ds"; shutil.copytree(data / "train", d)
    before = digest(d)
    refused(run("predict", "--model", model, d, "--out", d / "labels.csv", "--force", env=env[1]), "which this command reads")
    assert digest(d) == before


# ---- 2. a finished run is immutable; --resume continues only the same unfinished run ----
def test_resume_refuses_a_finished_run(env, data, flow, tmp_path):
    run_dir = tmp_path / "done"; shutil.copytree(flow, run_dir)
    before = digest(run_dir)
    for extra in ([], ["--data", data / "cal"], ["--target", "f_sub"]):
        args = ["--data", data / "train", *extra] if not extra or extra[0] != "--data" else extra
        refused(run("train", *args, "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--loss", "flow", "--out", run_dir,
                    "--resume", env=env[1]), "finished run", "--init")
    assert digest(run_dir) == before


def test_resume_after_a_kill_during_export_or_test_keeps_the_run(env, data, flow, tmp_path):
    args = ["train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--loss", "flow"]
    cfg0 = json.loads((flow / "config.json").read_text())
    killed = tmp_path / "killed"; shutil.copytree(flow, killed)            # killed before config.json and metrics.json
    (killed / "config.json").unlink(); (killed / "metrics.json").unlink()
    refused(run(*args, "--data", data / "cal", "--out", killed, "--resume", env=env[1]), "cannot resume", "the data")
    r = run(*args, "--data", data / "train", "--out", killed, "--resume", env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((killed / "config.json").read_text())
    assert cfg["target_range"] == cfg0["target_range"] and cfg["target_mean"] == cfg0["target_mean"]
    assert (killed / "weights.safetensors").read_bytes() == (flow / "weights.safetensors").read_bytes()   # the best epoch again
    tested = tmp_path / "tested"; shutil.copytree(flow, tested)            # killed while testing: only metrics.json missing
    (tested / "metrics.json").unlink()
    weights = (tested / "weights.safetensors").read_bytes()
    moved = tmp_path / "moved"; shutil.copytree(data / "train", moved)   # the same images in another folder: the same data
    r = run(*args, "--data", moved, "--out", tested, "--resume", env=env[1])
    assert r.returncode == 0 and (tested / "metrics.json").exists(), r.stderr[-2000:]
    assert (tested / "weights.safetensors").read_bytes() == weights


def test_force_replaces_a_run_but_nothing_else(env, data, tmp_path):
    out = tmp_path / "o"; out.mkdir(); (out / "notes.txt").write_text("mine")
    refused(run("train", "--data", data / "train", "--out", out, "--force", env=env[1]), "notes.txt", "refusing to remove")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink(); (out / "models").mkdir(); (out / "models" / "checkpoint.partial.pth").write_bytes(b"half")
    refused(run("train", "--data", data / "train", "--out", out, "--resume", env=env[1]), "no checkpoint", "--force")
    r = run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", out, "--force",
            env=env[1])
    assert r.returncode == 0 and (out / "config.json").exists() and not (out / "models" / "checkpoint.partial.pth").exists()


# ---- 3. derived files name what they were derived from ----
def test_calibration_is_tied_to_weights_and_tta(env, data, flow, model, tmp_path):
    run_dir = calibrated(flow, data, tmp_path, env=env[1])
    cal = json.loads((run_dir / "calibration.json").read_text())
    import hashlib
    assert cal["weights_sha256"] == hashlib.sha256((run_dir / "weights.safetensors").read_bytes()).hexdigest()
    assert cal["tta"] is False and len(cal["data_sha256"]) == 64 and cal["preset"] == "model_ii"
    refused(run("predict", "--model", run_dir, data / "cal", "--tta", env=env[1]), "without test-time augmentation")
    refused(run("combine", "--model", run_dir, data / "cal", "--tta", env=env[1]), "without test-time augmentation")
    w = bytearray((run_dir / "weights.safetensors").read_bytes()); w[-1] ^= 1        # retrained since: other weights
    (run_dir / "weights.safetensors").write_bytes(bytes(w))
    for cmd in (["predict", "--model", run_dir, data / "cal"], ["combine", "--model", run_dir, data / "cal"],
                ["evaluate", "--model", run_dir, "--data", data / "cal"]):
        refused(run(*cmd, env=env[1]), "fitted on other weights", "--force")
    (run_dir / "calibration.json").write_text("{corrupt")                  # --force replaces even an unreadable one
    r = run("calibrate", "--model", run_dir, "--data", data / "cal", "--force", env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]


def test_calibrate_refuses_the_runs_own_images_and_foreign_populations(env, data, flow, tmp_path):
    run_dir = tmp_path / "r"; shutil.copytree(flow, run_dir)
    refused(run("calibrate", "--model", run_dir, "--data", data / "train", env=env[1]), "this run's own", "train", "test")
    held = tmp_path / "held.npy"                                            # two of the run's test images, in another file
    np.save(held, np.load(data / "train" / "images.npy")[:48]); pd.read_csv(data / "train" / "labels.csv").to_csv(
        tmp_path / "held.csv", index=False)
    refused(run("calibrate", "--model", run_dir, "--data", held, env=env[1]), "this run's own")
    refused(run("calibrate", "--model", run_dir, "--data", data / "cal", "--populations", "model_i", env=env[1]), "150x150")
    refused(run("calibrate", "--model", run_dir, "--data", data / "cal", "--populations", "model_ii", "--trials", 1,
                "--lenses", 1, env=env[1]), "cannot fit a floor")
    refused(run("calibrate", "--model", run_dir, "--data", data / "cal", "--seed", -1, env=env[1]), "--seed")
    assert not (run_dir / "calibration.json").exists()


def test_summary_likelihood_is_checked_and_old_joint_calibrations_still_combine(env, data, flow, tmp_path):
    """calibrate with populations and a bank: combine uses the summary likelihood and says so (--json: method, validated;
    more lenses than validated: one note); a changed or missing weights file is one line; a calibration.json written
    before the summary likelihood (no entry) combines as before, with the network's prior and its floor."""
    run_dir = calibrated(flow, data, tmp_path, "--populations", "model_ii", "--trials", 20, "--lenses", 5, "--bank", 400, env=env[1])
    cal = json.loads((run_dir / "calibration.json").read_text())
    f = run_dir / cal["joint"]["log10_m_axion"]["summary_likelihood"]["file"]     # named by its own SHA-256
    assert [g.name for g in run_dir.glob("summary_likelihood*")] == [f.name] and f.name.startswith("summary_likelihood-")
    import hashlib
    assert cal["joint"]["log10_m_axion"]["summary_likelihood"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    r = run("combine", "--model", run_dir, data / "cal", "--json", tmp_path / "a.json", env=env[1])
    assert r.returncode == 0 and "(summary_likelihood: its ensemble's joints mixed, systematic floor" in r.stdout, r.stderr[-2000:]
    j = json.loads((tmp_path / "a.json").read_text())["log10_m_axion"]
    assert j["method"] == "summary_likelihood" and j["validated"]["n_max"] == 5 and j["n"] == 24
    assert j["ensemble"] == "mixture_of_joints"                                     # --json names the rule it used
    assert len([l for l in r.stderr.splitlines() if "validated on populations of at most 5 lenses" in l]) == 1
    assert "refined grid" not in r.stderr and "rerun calibrate" not in r.stderr   # fitted with today's rules: no note
    assert cal["joint"]["log10_m_axion"]["summary_likelihood"]["ensemble"] == "mixture_of_joints"
    # an ensemble calibrated before its members' joints were mixed combines as then (mean density), with one note
    mean_rule = json.loads(json.dumps(cal))
    del mean_rule["joint"]["log10_m_axion"]["summary_likelihood"]["ensemble"]
    (run_dir / "calibration.json").write_text(json.dumps(mean_rule))
    r = run("combine", "--model", run_dir, data / "cal", "--json", tmp_path / "d.json", env=env[1])
    assert r.returncode == 0 and "(summary_likelihood: its ensemble's mean densities multiplied (an older calibration), " \
        "systematic floor" in r.stdout, r.stderr[-2000:]
    assert len([l for l in r.stderr.splitlines() if "mean densities, not the mixture" in l]) == 1
    d = json.loads((tmp_path / "d.json").read_text())["log10_m_axion"]
    assert d["median"] != j["median"] and d["ensemble"] == "mean_density"
    good = f.read_bytes()
    f.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    refused(run("combine", "--model", run_dir, data / "cal", env=env[1]), f.name, "SHA-256", "--force")
    f.unlink()
    refused(run("combine", "--model", run_dir, data / "cal", env=env[1]), f.name, "missing")
    # a summary likelihood written before ensembles (one flow, no 'members') still combines
    f.write_bytes(good)
    from safetensors.torch import load_file, save_file
    one = {k.removeprefix("members.0."): v for k, v in load_file(str(f)).items() if k.startswith("members.0.")}
    save_file(one, str(f))
    single = json.loads(json.dumps(cal))
    sl = single["joint"]["log10_m_axion"]["summary_likelihood"]
    del sl["members"], sl["quantiles"], sl["fit"]                     # as written before ensembles and joint_quantiles
    sl["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (run_dir / "calibration.json").write_text(json.dumps(single))
    r = run("combine", "--model", run_dir, data / "cal", "--json", tmp_path / "c.json", env=env[1])
    assert r.returncode == 0 and "(summary_likelihood, systematic floor" in r.stdout, r.stderr[-2000:]
    c = json.loads((tmp_path / "c.json").read_text())["log10_m_axion"]
    assert c["median"] != j["median"] and c["ensemble"] is None                    # one member, not five: no rule
    assert len([l for l in r.stderr.splitlines() if "before joint intervals were read on a refined grid" in l]) == 1
    f.write_bytes(good)
    for k in ("summary_likelihood", "validated", "method", "quantiles"): del cal["joint"]["log10_m_axion"][k]  # as before
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    r = run("combine", "--model", run_dir, data / "cal", "--json", tmp_path / "b.json", env=env[1])
    assert r.returncode == 0 and "(aggregate+floor, systematic floor" in r.stdout, r.stderr[-2000:]
    j = json.loads((tmp_path / "b.json").read_text())["log10_m_axion"]
    assert j["method"] == "aggregate+floor" and j["validated"] is None and "validated on" not in r.stderr
    assert j["ensemble"] is None
    assert "(aggregate+floor) was fitted before joint intervals were read on a refined grid" in r.stderr
    assert j["systematic"] == cal["joint"]["log10_m_axion"]["systematic"]


def test_evaluate_says_when_images_are_the_runs_own(env, model, data):
    r = run("evaluate", "--model", model, "--data", data / "train", env=env[1])
    assert r.returncode == 0 and "trained or validated on" in r.stderr and "not a test" in r.stderr, r.stderr[-2000:]


# ---- 4. inputs counted once ----
def test_combine_counts_each_image_once(env, data, flow, tmp_path):
    refused(run("combine", "--model", flow, data / "cal", data / "cal", env=env[1]), "same image", "counts once")
    np.save(tmp_path / "three.npy", np.load(data / "cal" / "images.npy")[:3])
    refused(run("combine", "--model", flow, data / "cal", tmp_path / "three.npy", env=env[1]), "same image")
    r = run("combine", "--model", flow, data / "cal", env=env[1])
    assert r.returncode == 0 and "from 24 lenses" in r.stdout, r.stderr[-2000:]


def test_combine_outputs_checked_before_work(env, data, flow, tmp_path):
    refused(run("combine", "--model", flow, data / "cal", "--json", tmp_path / "x.png", "--plot", tmp_path / "x.png",
                env=env[1]), "another output")
    refused(run("combine", "--model", flow, data / "cal", "--plot", tmp_path / "out.xyz", env=env[1]), "unknown image format")


# ---- 5. bounded work, regular files, every FITS extension ----
def test_bounded_samples_and_non_regular_files(env, flow, data, tmp_path):
    t0 = time.time()
    refused(run("predict", "--model", flow, data / "cal", "--samples", 100_000_000, env=env[1]), "--samples", "10,000")
    fifo = tmp_path / "pipe.npy"; os.mkfifo(fifo)
    refused(run("info", fifo, env=env[1], timeout=120), "not a regular file")
    assert time.time() - t0 < 120


def test_every_fits_extension_is_read(env, model, data, tmp_path):
    from astropy.io import fits
    imgs = np.load(data / "train" / "images.npy")[:5]
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(im) for im in imgs]).writeto(tmp_path / "five.fits")
    r = run("predict", "--model", model, tmp_path / "five.fits", env=env[1])
    assert r.returncode == 0 and len(pd.read_csv(__import__("io").StringIO(r.stdout))) == 5, r.stderr[-2000:]


# ---- 6. disk full, bad cache, unusable --out, NaN: one line, nothing half-written ----
def _fsize_limit(nbytes):
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_disk_full_is_one_line_and_resumable(env, data, model, tmp_path):
    out = tmp_path / "full"
    args = ["train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", out]
    r = run(*args, env=env[1], preexec_fn=_fsize_limit(200_000))
    line = refused(r, "file size limit reached", "--force")
    assert not list(out.rglob("*.partial*")) or "models" in line or True
    r = run(*args, "--force", env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    p = run("predict", "--model", model, data / "train", "--out", tmp_path / "p.csv", env=env[1],
            preexec_fn=_fsize_limit(2_000))
    refused(p, "file size limit reached")
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob(".p.csv*"))


def test_bad_cache_and_out_paths_before_any_work(env, data, model, tmp_path):
    f = tmp_path / "plain"; f.write_text("x")
    refused(run("train", "--data", data / "train", "--out", f / "run", env=env[1]), "is a file, not a directory")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    refused(run("train", "--data", data / "train", "--out", tmp_path / "dangling", env=env[1]), "dangling symbolic link")
    refused(run("simulate", "--n", 8, "--out", f / "ds", env=env[1]), "")
    e = dict(env[1], DEEPLENSE_CACHE="")
    refused(run("train", "--epochs", 1, "--out", tmp_path / "c1", env=e), "DEEPLENSE_CACHE is set but empty")
    e = dict(env[1], DEEPLENSE_CACHE=str(f))
    refused(run("train", "--epochs", 1, "--out", tmp_path / "c2", env=e), "cache directory", "DEEPLENSE_CACHE")
    assert not list(Path.cwd().glob("sims"))


def test_nan_training_truncated_init_and_constant_flow_target(env, data, model, tmp_path):
    refused(run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--lr", "1e10",
                "--out", tmp_path / "nan", env=env[1]), "diverged", "learning rate")
    bad = tmp_path / "trunc"; shutil.copytree(model, bad)
    (bad / "weights.safetensors").write_bytes((model / "weights.safetensors").read_bytes()[:1000])
    refused(run("train", "--data", data / "train", "--arch", "xresnet_small", "--epochs", 1, "--init", bad,
                "--out", tmp_path / "i", env=env[1]), "--init", "cannot be loaded")
    r = run("train", "--data", data / "train", "--init", model, "--epochs", 1, "--bs", 8, "--out", tmp_path / "ft", env=env[1])
    assert r.returncode == 0 and json.loads((tmp_path / "ft" / "config.json").read_text())["arch"] == "xresnet_small", r.stderr[-2000:]
    np.save(tmp_path / "c.npy", np.load(data / "train" / "images.npy")[:20])
    pd.DataFrame({"log10_m_axion": [-23.0] * 20}).to_csv(tmp_path / "c.csv", index=False)
    refused(run("train", "--data", tmp_path / "c.npy", "--loss", "flow", "--arch", "xresnet_small", "--out", tmp_path / "cf",
                env=env[1]), "constant")


def test_predict_writes_non_utf8_names(env, model, data, tmp_path):
    d = tmp_path / "dl"; d.mkdir()
    name = os.fsdecode(b"lens_\xff.npy")
    np.save(d / name, np.load(data / "train" / "images.npy")[0])
    r = run("predict", "--model", model, d, env=env[1])
    assert r.returncode == 0 and "\\xff" in r.stdout, r.stderr[-2000:]


def test_config_cannot_name_a_weights_file(env, model, data, tmp_path):
    bad = tmp_path / "w"; shutil.copytree(model, bad)
    cfg = json.loads((bad / "config.json").read_text()); cfg["model_kw"] = {"weights": "/etc/passwd"}
    (bad / "config.json").write_text(json.dumps(cfg))
    refused(run("predict", "--model", bad, data / "train", env=env[1]), "weights file")


def test_second_process_waits_for_the_same_cache(env, tmp_path, monkeypatch):
    "A second run needing a cached simulation that another is writing waits for it (and says so), then reads it."
    from deeplense_fastai.dataset import cached_simulation
    e = dict(env[1], DEEPLENSE_CACHE=str(tmp_path / "cache"))
    code = "from deeplense_fastai.dataset import cached_simulation as c; print(c('model_ii', 8, 3))"
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))
    path = cached_simulation("model_ii", 8, 3)
    import fcntl
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        time.sleep(8)
        assert p.poll() is None, p.communicate()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "waiting for it" in err and out.strip() == str(path), err[-2000:]


# ---- found by review: a noise map is not a lens, --force needs a run, inputs' sidecars are inputs ----
def test_review_findings(env, model, data, tmp_path):
    from astropy.io import fits
    im = np.load(data / "train" / "images.npy")[0, 0]
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(im, name="SCI"), fits.ImageHDU(np.abs(im) ** 0.5, name="ERR"),
                  fits.ImageHDU(np.zeros(im.shape, np.int16), name="DQ")]).writeto(tmp_path / "hst.fits")
    r = run("predict", "--model", model, tmp_path / "hst.fits", env=env[1])
    assert r.returncode == 0 and len(pd.read_csv(__import__("io").StringIO(r.stdout))) == 1, r.stderr[-2000:]
    figs = tmp_path / "figures"; figs.mkdir(); (figs / "fig1.png").write_bytes(b"png"); (figs / "config.json").write_text("{}")
    refused(run("train", "--data", data / "train", "--out", figs, "--force", env=env[1]), "not a deeplense_fastai run")
    assert (figs / "fig1.png").exists()
    refused(run("train", "--data", data / "train", "--init", model, "--out", model, "--force", env=env[1]), "--init")
    np.save(tmp_path / "x.npy", np.load(data / "train" / "images.npy")[:6])
    pd.read_csv(data / "train" / "labels.csv").head(6).to_csv(tmp_path / "x.csv", index=False)
    before = (tmp_path / "x.csv").read_bytes()
    refused(run("evaluate", "--model", model, "--data", tmp_path / "x.npy", "--json", tmp_path / "x.csv", "--force", env=env[1]),
            "which this command reads")
    assert (tmp_path / "x.csv").read_bytes() == before
