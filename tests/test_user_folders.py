"""Folders of images as a new user hands them to `deeplense`: FITS cutouts (each with its own WCS pixel scale and size)
read exactly as the same files named one by one; masked images counted in the OOD note; stacks and datasets met where
one image per file is expected, and .npy arrays of the wrong shape, named for what they are."""
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import deeplense, ok, refused

fits = pytest.importorskip("astropy.io.fits", reason="FITS cutouts need astropy (the fits extra)")


def write_fits(path, img, scale=None):
    "A FITS cutout; with `scale` (arcsec/px) a celestial TAN WCS whose CDELT says it."
    h = fits.PrimaryHDU(np.asarray(img, dtype=np.float32))
    if scale:
        h.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CDELT1=-scale / 3600, CDELT2=scale / 3600,
                        CRPIX1=img.shape[1] / 2, CRPIX2=img.shape[0] / 2, CRVAL1=150.0, CRVAL2=2.0)
    h.writeto(path)


def finer(img, own, scale, npix):
    "`img` (at `own` arcsec/px) resampled to `scale` arcsec/px (flux per pixel kept physical), padded to npix x npix."
    m = round(img.shape[0] * own / scale)
    y = F.interpolate(torch.from_numpy(np.asarray(img, np.float32))[None, None], size=(m, m), mode="bilinear",
                      align_corners=False)[0, 0].numpy() * (scale / own) ** 2
    out = np.full((npix, npix), np.median(y[0]), np.float32)
    o = (npix - m) // 2
    out[o:o + m, o:o + m] = y
    return out


@pytest.fixture(scope="module")
def cutouts(tiny_run, tiny_data, tmp_path_factory):
    "Folders of FITS cutouts made from the run's own kind of images: (run, env, {name: folder}, run's pixel scale)."
    run, _ = tiny_run
    own = json.loads((run / "config.json").read_text())["pixel_scale"]
    imgs = np.load(tiny_data.data / "images.npy").reshape(-1, 64, 64)[:6]
    root = tmp_path_factory.mktemp("cutouts")
    d = {k: root / k for k in ("cut2", "mixed", "nowcs", "partwcs")}
    for p in d.values(): p.mkdir()
    for i in range(2): write_fits(d["cut2"] / f"c{i}.fits", finer(imgs[i], own, 0.05, 150), 0.05)   # 150x150 at 0.05
    write_fits(d["mixed"] / "a.fits", finer(imgs[2], own, 0.05, 150), 0.05)
    write_fits(d["mixed"] / "b.fits", imgs[3], own)                                                   # the run's grid
    write_fits(d["mixed"] / "c.fits", finer(imgs[4], own, 0.06, 120), 0.06)
    for i in range(2): write_fits(d["nowcs"] / f"n{i}.fits", finer(imgs[i], own, 0.05, 150))        # no WCS
    write_fits(d["partwcs"] / "a.fits", finer(imgs[0], own, 0.05, 150), 0.05)       # a WCS, sorted first
    write_fits(d["partwcs"] / "z.fits", finer(imgs[1], own, 0.05, 130))             # none: at --pixel-scale
    return run, tiny_data.env, d, own


def predict_csv(*args, env):
    r = ok(deeplense("predict", *args, env=env))
    return pd.read_csv(io.StringIO(r.stdout)), r.stderr


def same_as_one_by_one(run, folder, env, *extra):
    "`predict FOLDER` gives each file what `predict FILE1 FILE2 ...` gives it; returns the folder's stderr."
    files = sorted(folder.glob("*.fits"))
    whole, said = predict_csv("--model", run, folder, *extra, env=env)
    alone, _ = predict_csv("--model", run, *files, *extra, env=env)
    assert list(whole["file"]) == [f.name for f in files]
    for c in ("pred_log10_m_axion", "ood_score"):
        np.testing.assert_allclose(whole[c].to_numpy(), alone[c].to_numpy(), rtol=1e-4, err_msg=c)
    return said


def test_fits_folder_uses_each_files_wcs_pixel_scale(cutouts):
    run, env, d, own = cutouts
    said = same_as_one_by_one(run, d["cut2"], env)
    assert f"resampled from 0.05 to {own:.4g} arcsec/px" in said and "taken to be at the run's" not in said, said
    out = ok(deeplense("info", d["cut2"], env=env)).stdout
    assert f"{d['cut2']}: 2 images of 150x150, fits, unlabelled" in out, out


def test_fits_folder_of_mixed_sizes_and_scales(cutouts):
    run, env, d, own = cutouts
    said = same_as_one_by_one(run, d["mixed"], env)
    assert "mixed image sizes" not in said
    assert f"resampled from 0.05 to {own:.4g}" in said and f"resampled from 0.06 to {own:.4g}" in said, said
    assert "c.fits: images are 120x120" in said, said


def test_fits_folder_without_wcs_takes_the_given_pixel_scale(cutouts):
    run, env, d, own = cutouts
    said = same_as_one_by_one(run, d["nowcs"], env)
    assert "taken to be at the run's" in said, said
    said = same_as_one_by_one(run, d["nowcs"], env, "--pixel-scale", 0.05)
    assert f"resampled from 0.05 to {own:.4g}" in said, said


def test_fits_folder_with_and_without_wcs_takes_the_given_scale_where_none(cutouts):
    """The first file has a WCS, the second none: `--pixel-scale` still applies to the second (as named alone)."""
    run, env, d, own = cutouts
    said = same_as_one_by_one(run, d["partwcs"], env, "--pixel-scale", 0.05)
    assert "z.fits: images are 130x130" in said and "taken to be at the run's" not in said, said


def ood_note(stderr):
    m = re.search(r"note: (\d+) of (\d+) (images are|image is) unlike", stderr)
    assert m, stderr
    return int(m[1]), int(m[2]), m[3]


def test_masked_images_count_in_the_ood_note(tiny_run, tiny_data, tmp_path):
    run, env = tiny_run[0], tiny_data.env
    noise = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32) * 50
    noise[:, 5, 5] = np.nan                                      # each masked, and each far from the training images
    np.save(tmp_path / "one.npy", noise[:1])
    df, said = predict_csv("--model", run, tmp_path / "one.npy", "--bad-pixels", "mask", env=env)
    assert df["status"].str.startswith("masked").all()
    assert ood_note(said) == (1, 1, "image is"), said
    good = np.load(tiny_data.data / "images.npy").reshape(-1, 64, 64)[:5].astype(np.float32)
    np.save(tmp_path / "eight.npy", np.concatenate([noise, good]))
    df, said = predict_csv("--model", run, tmp_path / "eight.npy", "--bad-pixels", "mask", env=env)
    k, n, _ = ood_note(said)
    assert n == 8 and 3 <= k <= n and k == int(df["ood"].sum()), said


@pytest.mark.parametrize("shape", [(10,), (2, 3, 16, 16)])
def test_an_npy_of_the_wrong_shape_is_named(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    line = refused(deeplense("info", tmp_path / "x.npy"),
                   "x.npy: an image stack must have shape (H, W), (N, H, W) or (N, 1, H, W); got", str(shape))
    assert "unreadable" not in line and "truncated" not in line


def test_a_stack_or_dataset_in_a_folder_of_images_is_named(tiny_data, tmp_path):
    (tmp_path / "data" / "cls").mkdir(parents=True)
    np.save(tmp_path / "data" / "cls" / "images.npy", np.zeros((150, 1, 16, 16), np.float32))
    line = refused(deeplense("info", tmp_path / "data"), "cls/images.npy", "holds 150 images", "one image per file")
    assert "expected a 2-d image" not in line and "images.npy (an image stack) itself" in line, line
    shutil.copytree(tiny_data.data, tmp_path / "runs" / "ds")                   # one of our datasets, inside a folder
    refused(deeplense("info", tmp_path / "runs"), "one image per file", f"the dataset {tmp_path / 'runs' / 'ds'} itself")
