"""Output a script can read (issue 25, item 6): every command run as a script runs it, a subprocess with no terminal
and default flags. stdout carries results only (lines, a CSV or JSON objects), never a progress bar's carriage returns
or block characters; `--quiet` prints nothing per epoch; `--log json` prints only JSON objects; `info` writes nothing."""
import json

import numpy as np
import pytest
from conftest import deeplense as run, user_env


def clean(text):
    "No bar: no carriage return, no block character, no raw Python list of a Recorder."
    assert "\r" not in text and "\u2588" not in text, text[-800:]
    assert not [l for l in text.splitlines() if l.startswith("[")], text[-800:]
    return text


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    e = user_env(root)
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "train", "model_ii", n=48, seed=0, progress=False)
    return root, e


TRAIN = ("train", "--arch", "xresnet_small", "--epochs", 2, "--bs", 8)


def test_train_default_prints_one_plain_line_per_epoch(env):
    root, e = env
    r = run(*TRAIN, "--data", root / "train", "--out", root / "plain", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    out = clean(r.stdout)
    epochs = [l for l in out.splitlines() if l.startswith("epoch ")]
    assert [l.split()[1] for l in epochs] == ["1/2", "2/2"] and all("valid_loss" in l and "mae" in l for l in epochs)
    assert "test images" in out and out.rstrip().endswith(f"run written to {root / 'plain'}")
    clean(r.stderr)


def test_train_quiet_prints_nothing_per_epoch(env):
    root, e = env
    r = run(*TRAIN, "--data", root / "train", "--out", root / "quiet", "--quiet", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [l for l in clean(r.stdout).splitlines() if l.startswith("epoch") or "loss" in l], r.stdout
    assert "test images" in r.stdout


def test_train_log_json_prints_only_json_objects(env):
    root, e = env
    r = run(*TRAIN, "--data", root / "train", "--out", root / "json", "--log", "json", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(l) for l in clean(r.stdout).splitlines()]          # every line of stdout is one JSON object
    assert [x["event"] for x in recs] == ["epoch", "epoch", "done"]
    assert recs[0]["epoch"] == 1 and np.isfinite(recs[1]["valid_loss"]) and recs[0]["best"] is True
    assert recs[-1]["run"] == str(root / "json") and recs[-1]["test"]["n"] > 0 and "mae" in recs[-1]["test"]
    assert "training xresnet_small" in r.stderr                               # the people's text went to stderr


def test_simulate_writes_no_bar_without_a_terminal(env, tmp_path):
    r = run("simulate", "--n", 20, "--out", tmp_path / "s", env=env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert clean(r.stdout).strip().startswith("wrote ") and len(r.stdout.strip().splitlines()) == 1
    clean(r.stderr)


def test_info_writes_nothing(env, tmp_path):
    "A DeepLense folder is read file by file: no cache appears in the user's home or in DEEPLENSE_CACHE."
    folder = tmp_path / "Model_II" / "axion"; folder.mkdir(parents=True)
    for i in range(3):
        np.save(folder / f"axion_sim_{i}.npy", np.array([np.random.rand(64, 64), 10.0 ** (-23 + i / 4)], dtype=object),
                allow_pickle=True)
    home = tmp_path / "home"; home.mkdir()
    e = {k: v for k, v in env[1].items() if k not in ("DEEPLENSE_CACHE", "XDG_CACHE_HOME")}
    e.update(HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = run("info", tmp_path / "Model_II", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert clean(r.stdout).startswith(f"{tmp_path / 'Model_II'}: 3 images of 64x64, deeplense") and "log10_m_axion" in r.stdout
    assert not list(home.rglob("*")), list(home.rglob("*"))
    assert sorted(p.name for p in folder.iterdir()) == [f"axion_sim_{i}.npy" for i in range(3)]


def test_pretrained_refusals_are_one_line(env, tmp_path):
    "--pretrained: only the torchvision ResNets, never with --init, and weights missing from torch's cache named in one line."
    root, e = env
    for args, words in [(("--arch", "xresnet_small"), "ImageNet weights exist for resnet18")]:
        r = run("train", "--data", root / "train", "--pretrained", *args, "--out", tmp_path / "p", env=e)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr[-1500:]
    (tmp_path / "file").write_text("")                      # a torch cache that cannot hold a download: offline
    r = run("train", "--data", root / "train", "--pretrained", "--epochs", 1, "--out", tmp_path / "p",
            env=dict(e, TORCH_HOME=str(tmp_path / "file" / "torch")))
    assert r.returncode == 2 and "not in torch's cache" in r.stderr.strip().splitlines()[-1], r.stderr[-1500:]
    assert not (tmp_path / "p").exists()
