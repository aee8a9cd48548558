"""`deeplense split` as a user runs it (a subprocess, no terminal, default flags): split files list a dataset's images
without copying them, every command takes them as data, overlap with the training images is said, and a dataset edited
after splitting is refused in one line."""
import io
import json

import pandas as pd
import pytest
from conftest import deeplense as run, refused, user_env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "data", "model_ii", n=60, seed=0, progress=False)
    return root, user_env(root)


def test_split_train_evaluate(env):
    root, e = env
    before = sorted(p.name for p in (root / "data").iterdir())
    r = run("split", root / "data", "--out", root / "sp", "--seed", 1, env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [l.split(":")[0] for l in r.stdout.splitlines()] == ["train", "calib", "test"]
    docs = {n: json.loads((root / "sp" / f"{n}.json").read_text()) for n in ("train", "calib", "test")}
    idx = [set(d["indices"]) for d in docs.values()]
    assert [len(s) for s in idx] == [48, 6, 6] and set.union(*idx) == set(range(60))     # a partition of the dataset
    assert sum(len(s) for s in idx) == 60 and sorted(p.name for p in (root / "data").iterdir()) == before   # nothing copied
    r = run("train", "--data", root / "sp" / "train.json", "--test", root / "sp" / "test.json", "--arch", "xresnet_small",
            "--epochs", 1, "--bs", 8, "--out", root / "run", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test images: 6" in r.stdout and "on 44 images, validating on 4" in r.stdout
    r = run("predict", "--model", root / "run", root / "sp" / "test.json", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_csv(io.StringIO(r.stdout))["index"].tolist() == docs["test"]["indices"]     # positions in the dataset itself
    r = run("evaluate", "--model", root / "run", "--data", root / "sp" / "calib.json", env=e)
    assert r.returncode == 0 and "test images: 6" in r.stdout and "note:" not in r.stderr, r.stderr
    r = run("evaluate", "--model", root / "run", "--data", root / "sp" / "train.json", env=e)
    assert r.returncode == 0 and "note: 48 of these 48 images are ones the run trained or validated on" in r.stderr, r.stderr


def test_split_refusals(env, tmp_path):
    root, e = env
    refused(run("split", root / "data", "--out", tmp_path / "a", "--fractions", "0.5,0.6", env=e), "sum to 1")
    refused(run("split", root / "data", "--out", tmp_path / "a", "--fractions", "0.5,0.5", env=e), "--names")
    assert run("split", root / "data", "--out", tmp_path / "a", env=e).returncode == 0
    refused(run("split", root / "data", "--out", tmp_path / "a", env=e), "exists", "--force")
    refused(run("split", tmp_path / "a" / "train.json", "--out", tmp_path / "b", env=e), "already a split")
    from deeplense_fastai.dataset import write_dataset
    write_dataset(tmp_path / "d", "model_ii", n=20, seed=0, progress=False)
    assert run("split", tmp_path / "d", "--out", tmp_path / "c", env=e).returncode == 0
    lab = pd.read_csv(tmp_path / "d" / "labels.csv"); lab.loc[0, "log10_m_axion"] = -22.0; lab.to_csv(tmp_path / "d" / "labels.csv", index=False)
    refused(run("info", tmp_path / "c" / "test.json", env=e), "not the dataset this split was made from")


def test_split_protects_its_dataset_and_replaces_all_or_nothing(env, tmp_path):
    """An output inside the dataset behind a split file is refused; `split --force` writes every file whole or none."""
    root, e = env
    from deeplense_fastai.dataset import write_dataset
    write_dataset(tmp_path / "d", "model_ii", n=20, seed=0, progress=False)
    assert run("split", tmp_path / "d", "--out", tmp_path / "sp", env=e).returncode == 0
    r = run("train", "--data", tmp_path / "sp" / "train.json", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8,
            "--out", tmp_path / "run", env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    before = sorted(p.name for p in (tmp_path / "d").iterdir())
    refused(run("evaluate", "--model", tmp_path / "run", "--data", tmp_path / "sp" / "test.json", "--json",
                tmp_path / "d" / "metrics.json", env=e), "inside", str(tmp_path / "d"))
    refused(run("predict", "--model", tmp_path / "run", tmp_path / "sp" / "test.json", "--out", tmp_path / "d" / "p.csv", env=e),
            "inside", str(tmp_path / "d"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before
    old = {n: (tmp_path / "sp" / f"{n}.json").read_text() for n in ("train", "calib")}
    (tmp_path / "sp" / "test.json").unlink(); (tmp_path / "sp" / "test.json").mkdir()        # one target cannot be replaced
    refused(run("split", tmp_path / "d", "--out", tmp_path / "sp", "--seed", 7, "--force", env=e), "test.json", "not a regular file")
    assert {n: (tmp_path / "sp" / f"{n}.json").read_text() for n in old} == old                 # none was replaced
    (tmp_path / "sp" / "test.json").rmdir()
    assert run("split", tmp_path / "d", "--out", tmp_path / "sp", "--seed", 7, "--force", env=e).returncode == 0
    assert json.loads((tmp_path / "sp" / "train.json").read_text())["seed"] == 7
    assert not [p for p in (tmp_path / "sp").iterdir() if p.name.endswith(".tmp")]


def test_split_of_a_split_and_a_run_inside_its_dataset_are_refused(env, tmp_path):
    root, e = env
    (tmp_path / "self.json").write_text(json.dumps({"format": "deeplense_fastai/split", "source": "self.json"}))
    refused(run("info", tmp_path / "self.json", env=e), "names a split file")
    from deeplense_fastai.dataset import write_dataset
    write_dataset(tmp_path / "d", "model_ii", n=20, seed=0, progress=False)
    assert run("split", tmp_path / "d", "--out", tmp_path / "sp", env=e).returncode == 0
    refused(run("train", "--data", tmp_path / "sp" / "train.json", "--out", tmp_path / "d" / "run", env=e), "--data reads")
    assert not (tmp_path / "d" / "run").exists()
