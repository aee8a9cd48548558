"""Data sources end to end: DeepLense files written by the simulator, the cache, bad input, and malicious pickles."""
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deeplense_fastai.core import DeepLenseError
from deeplense_fastai.data import lens_dataloaders, load_deeplense_file, open_source, convert_deeplense_dir
from deeplense_fastai.dataset import write_dataset


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def dl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dl") / "model_i"
    write_dataset(d, "model_i", n=24, seed=2, fmt="deeplense", classes=("no_sub", "cdm", "axion"), progress=False)
    return d


def digest(path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def test_deeplense_files_load_and_train_targets(dl_dir):
    before = digest(dl_dir)
    dls = lens_dataloaders(dl_dir, bs=4, valid_pct=0.25, progress=False)
    assert dls.lens_config.targets == ["log10_m_axion"] and dls.lens_config.n_train + dls.lens_config.n_valid == 8
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 1, 150, 150) and xb.dtype == torch.float32 and yb.shape == (4, 1)
    labels = pd.read_csv(dl_dir / "labels.csv")
    src = open_source(dl_dir, progress=False)
    axion = src.labels[src.labels["class"] == "axion"].sort_values("file")
    want = labels[labels["class"] == "axion"].sort_values("index").log10_m_axion.to_numpy()
    np.testing.assert_allclose(axion.log10_m_axion.to_numpy(), want, rtol=1e-12)
    img, lab = load_deeplense_file(sorted((dl_dir / "axion").glob("*.npy"))[0])
    np.testing.assert_array_equal(src.image(int(axion.index[0]))[0], img.astype(np.float32))
    assert digest(dl_dir) == before, "reading must not modify the user's directory"


def test_cache_is_reused_and_rebuilt_when_directory_changes(dl_dir, tmp_path):
    d = tmp_path / "copy"
    write_dataset(d, "model_ii", n=6, seed=0, fmt="deeplense", classes=("axion",), progress=False)
    c1 = convert_deeplense_dir(d, progress=False)
    t1 = (c1 / "images.npy").stat().st_mtime_ns
    assert convert_deeplense_dir(d, progress=False) == c1 and (c1 / "images.npy").stat().st_mtime_ns == t1
    f = sorted(d.rglob("*.npy"))[0]
    np.save(f, np.array([np.ones((64, 64)), 1e-23], dtype=object), allow_pickle=True)
    os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    c2 = convert_deeplense_dir(d, progress=False)
    assert c2 != c1 and np.load(c2 / "images.npy")[0, 0].max() == 1.0


def test_malicious_pickle_creates_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = tmp_path / "data" / "axion"
    d.mkdir(parents=True)
    np.save(d / "a.npy", np.array([np.zeros((8, 8)), 1e-23], dtype=object), allow_pickle=True)
    np.save(d / "b.npy", np.array([np.zeros((8, 8)), Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(DeepLenseError, match=r"b\.npy.*refusing to load posix\.system"):
        lens_dataloaders(tmp_path / "data", progress=False)
    assert not marker.exists()

    class Opener:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    np.save(d / "b.npy", np.array([np.zeros((8, 8)), Opener()], dtype=object), allow_pickle=True)
    with pytest.raises(DeepLenseError, match=r"refusing to load (builtins|io)\.open"):
        load_deeplense_file(d / "b.npy")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["empty", "mixed_sizes", "nan_pixels", "length_mismatch", "missing_target", "truncated"])
def test_bad_input_is_named_before_training(tmp_path, case):
    d = tmp_path / case
    d.mkdir()
    kw = {}
    if case == "empty":
        path, msg = d, "no .npy or FITS files"
    elif case == "mixed_sizes":
        np.save(d / "a.npy", np.array([np.zeros((8, 8)), 1e-23], dtype=object), allow_pickle=True)
        np.save(d / "b.npy", np.array([np.zeros((9, 9)), 1e-23], dtype=object), allow_pickle=True)
        path, msg = d, "b.npy: image of shape (9, 9), but a.npy is (8, 8): mixed image sizes"
    elif case == "nan_pixels":
        imgs = np.zeros((5, 8, 8), np.float32); imgs[3, 2, 2] = np.nan
        np.save(d / "x.npy", imgs); pd.DataFrame({"y": np.arange(5.)}).to_csv(d / "x.csv", index=False)
        path, msg = d / "x.npy", "image index 3 has NaN or Inf pixels"
    elif case == "length_mismatch":
        np.save(d / "x.npy", np.zeros((5, 8, 8), np.float32)); pd.DataFrame({"y": np.arange(4.)}).to_csv(d / "x.csv", index=False)
        path, msg = d / "x.npy", "4 rows of labels for 5 images"
    elif case == "missing_target":
        np.save(d / "x.npy", np.zeros((5, 8, 8), np.float32)); pd.DataFrame({"y": np.arange(5.)}).to_csv(d / "x.csv", index=False)
        path, msg, kw = d / "x.npy", "target column 'f_sub' does not exist", {"targets": "f_sub"}
    else:
        np.save(d / "x.npy", np.zeros((5, 8, 8), np.float32)); pd.DataFrame({"y": np.arange(5.)}).to_csv(d / "x.csv", index=False)
        (d / "x.npy").write_bytes((d / "x.npy").read_bytes()[:300])
        path, msg = d / "x.npy", "unreadable or truncated"
    before = digest(d)
    with pytest.raises(DeepLenseError, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        lens_dataloaders(path, progress=False, **kw)
    assert digest(d) == before


def test_symmetry_augmentation_is_exactly_label_preserving(tmp_path):
    write_dataset(tmp_path / "n", "model_ii", n=16, seed=0, progress=False)
    dls = lens_dataloaders(tmp_path / "n", bs=16, valid_pct=0.0, augment=True, seed=0)
    plain = lens_dataloaders(tmp_path / "n", bs=16, valid_pct=0.0, augment=False, seed=0)
    xa, ya = dls.train.new(shuffle=False).one_batch()
    xp, yp = plain.train.new(shuffle=False).one_batch()
    assert torch.equal(ya, yp)
    def orbit(img):
        out = []
        for k in range(4):
            r = torch.rot90(img, k, (-2, -1))
            out += [r, r.flip(-1)]
        return out
    moved = 0
    for a, p in zip(xa, xp):
        assert any(torch.equal(a, o) for o in orbit(p)), "augmented image is not a symmetry of the original"
        moved += not torch.equal(a, p)
    assert moved > 8, "most images should have been transformed"


def test_explicit_validation_source_and_meanstd(tmp_path):
    write_dataset(tmp_path / "train", "model_ii", n=24, seed=0, progress=False)
    write_dataset(tmp_path / "test", "model_ii", n=8, seed=1, progress=False)
    dls = lens_dataloaders(tmp_path / "train", valid=tmp_path / "test", bs=4, norm="meanstd")
    cfg = dls.lens_config
    assert cfg.n_train == 24 and cfg.n_valid == 8 and cfg.image_stats is not None
    assert len(dls.valid_ds) == 8
