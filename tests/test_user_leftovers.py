"""What a new user following the README still met (a plain shell, default flags): `combine` without `--bad-pixels`,
"1 epochs", a fine-tune that did not say which layers train, and torch's `torch.jit.script` FutureWarning on importing
the library. Each runs `deeplense` (or Python) as a script does: a subprocess with no terminal."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import deeplense, ok, refused, user_env


@pytest.fixture(scope="module")
def holed(tiny_data, tmp_path_factory):
    "Eight training-like lenses, the third with one NaN pixel (a masked star, a dead column): lenses.npy."
    f = tmp_path_factory.mktemp("holed") / "lenses.npy"
    x = np.load(tiny_data.data / "images.npy")[:8].astype(np.float32).reshape(8, 64, 64)
    x[2, 10, 10] = np.nan
    np.save(f, x)
    return f


def test_combine_skips_a_lens_with_bad_pixels_by_default_as_predict_does(tiny_flow, tiny_data, holed):
    r = ok(deeplense("combine", "--model", tiny_flow[0], holed, env=tiny_data.env))
    assert "log10_m_axion from 7 lenses: median" in r.stdout, r.stdout
    said = [l for l in r.stderr.splitlines() if "NaN or Inf" in l]
    assert said == [f"note: 1 of 8 lenses has NaN or Inf pixels: 1 skipped, not combined ({holed} image index 2) "
                    "(--bad-pixels mask reads them as the image's median, refuse stops)"], r.stderr


def test_combine_bad_pixels_mask_and_refuse(tiny_flow, tiny_data, holed):
    r = ok(deeplense("combine", "--model", tiny_flow[0], holed, "--bad-pixels", "mask", env=tiny_data.env))
    assert "log10_m_axion from 8 lenses: median" in r.stdout and "1 masked" in r.stderr, r.stderr
    refused(deeplense("combine", "--model", tiny_flow[0], holed, "--bad-pixels", "refuse", env=tiny_data.env),
            "deeplense combine: error:", f"{holed}: image index 2 has NaN or Inf pixels")


def test_one_image_is_one_image(tmp_path):
    "Counts agree with their nouns: `simulate --n 1` and `info` say '1 image' and '1 part'."
    e, out = user_env(tmp_path), tmp_path / "one"
    r = ok(deeplense("simulate", "--n", 1, "--out", out, "--quiet", env=e))
    assert r.stdout == f"wrote {out}: 1 image [0, 1) of 1, preset model_ii, format native\n"
    first = ok(deeplense("info", out, env=e)).stdout.splitlines()[0]
    assert first == f"{out}: 1 image of 64x64, preset model_ii, seed 0, 1 part, noise on", first


def test_fine_tuning_says_which_layers_train(tiny_run, tiny_data, tmp_path):
    "`train --init RUN` with default flags trains every layer (said); --freeze-epochs 1 trains the head first (said)."
    run = tiny_run[0]
    plain = ok(deeplense("train", "--data", tiny_data.data, "--init", run, "--epochs", 1, "--bs", 8,
                         "--out", tmp_path / "ft", env=tiny_data.env)).stdout
    assert ", 1 epoch on cpu" in plain and "1 epochs" not in plain, plain
    assert f"fine-tuning {run}: every layer trains from the first epoch" in plain, plain
    frozen = ok(deeplense("train", "--data", tiny_data.data, "--init", run, "--epochs", 1, "--bs", 8,
                          "--freeze-epochs", 1, "--out", tmp_path / "frozen", env=tiny_data.env)).stdout
    assert (f"fine-tuning {run}: first 1 epoch of the head alone (the fully connected layers, and the batch-norm "
            "layers, which fastai's freeze leaves trainable) on a frozen body, then every layer for the 1 epoch "
            "above") in frozen, frozen


@pytest.mark.parametrize("module", ["inference", "combine"])
def test_importing_the_library_hides_only_the_jit_warning(module):
    "`import deeplense_fastai.<module>` from Python with every warning shown: no torch.jit.script FutureWarning, and "
    "a FutureWarning of the user's own is still shown."
    code = (f"import warnings, deeplense_fastai.{module}\n"
            "warnings.warn('a warning of my own', FutureWarning)\n")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.jit.script" not in r.stderr and "FutureWarning: a warning of my own" in r.stderr, r.stderr


def test_force_never_replaces_a_file_of_another_run_or_dataset(tiny_run, tiny_flow, tiny_data, holed, tmp_path):
    "`predict --out OTHER_RUN/weights.safetensors --force` once wrote predictions over a run the command did not read."
    import shutil
    other, data = tmp_path / "other", tmp_path / "data"
    shutil.copytree(tiny_flow[0], other); shutil.copytree(tiny_data.data, data)
    before = {p: p.read_bytes() for d in (other, data) for p in d.rglob("*") if p.is_file()}
    for out, what in ((other / "weights.safetensors", "a file of a run"), (data / "labels.csv", "a file of a dataset")):
        refused(deeplense("predict", "--model", tiny_run[0], holed, "--out", out, "--force", env=tiny_data.env),
                what, "never replaced, even with --force")
    assert {p: p.read_bytes() for p in before} == before
    r = ok(deeplense("predict", "--model", tiny_run[0], holed, "--out", other / "preds.csv", env=tiny_data.env))
    assert (other / "preds.csv").exists(), r.stderr          # a new file beside a run is the user's to write


def test_train_says_which_images_it_leaves_out(tmp_path):
    "Training log10 m_axion on three classes uses the axion images only, and says so (the test set already did)."
    e, d = user_env(tmp_path), tmp_path / "three"
    ok(deeplense("simulate", "--n", 60, "--classes", "no_sub,cdm,axion", "--out", d, "--quiet", env=e))
    r = ok(deeplense("train", "--data", d, "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", tmp_path / "r",
                     env=e))
    # 54 images after the test's tenth, 18 of them axion: 36 left out, in one note naming the target
    assert "note: 36 images of 54 in the training data have no log10_m_axion (another class)" in r.stdout, r.stdout


def test_info_names_every_size_of_a_mixed_fits_folder(tmp_path):
    "`info` on a folder of FITS cutouts of several sizes said '3 images of 64x64' (the first file's size)."
    from astropy.io import fits
    d = tmp_path / "cutouts"; d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("a", 64), ("b", 80), ("c", 64)):
        fits.PrimaryHDU(rng.random((n, n)).astype(np.float32)).writeto(d / f"{name}.fits")
    r = ok(deeplense("info", d, env=user_env(tmp_path)))
    assert f"{d}: 3 images of mixed sizes (2 of 64x64, 1 of 80x80), fits, unlabelled" in r.stdout, r.stdout


def test_a_folder_without_images_says_what_it_is(tiny_run, tiny_data, tmp_path):
    "A run given as data, an interrupted simulation and an interrupted training run were all 'empty directory?'."
    import shutil
    e = tiny_data.env
    refused(deeplense("info", tiny_run[0], env=e), "a trained run: give it as --model")
    part = tmp_path / "part"; part.mkdir(); (part / ".images.npy.progress.json").write_text("{}")
    refused(deeplense("info", part, env=e), "an unfinished simulation: rerun the same `deeplense simulate`")
    half = tmp_path / "half"; shutil.copytree(tiny_run[0], half)
    (half / "config.json").unlink(); (half / "models").mkdir(exist_ok=True); (half / "models" / "checkpoint.json").write_text("{}")
    refused(deeplense("predict", "--model", half, tiny_data.data, env=e), "an unfinished training run", "--resume")
    empty = tmp_path / "empty"; empty.mkdir()
    refused(deeplense("info", empty, env=e), "empty directory?")


def test_pixel_scale_for_files_that_record_their_own_says_so(tiny_run, tiny_data, tmp_path):
    "`--pixel-scale` applies to files without a scale; on a FITS file with a WCS it was ignored without a word."
    from astropy.io import fits
    from astropy.wcs import WCS
    w = WCS(naxis=2); w.wcs.cdelt = [-0.101 / 3600, 0.101 / 3600]; w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    f = tmp_path / "c.fits"
    fits.PrimaryHDU(np.load(tiny_data.data / "images.npy")[0].reshape(64, 64).astype(np.float32),
                    header=w.to_header()).writeto(f)
    r = ok(deeplense("predict", "--model", tiny_run[0], f, "--pixel-scale", 0.05, env=tiny_data.env))
    assert f"note: PATH {f}: the files record their own pixel scale (0.101\"/px); --pixel-scale 0.05 applies only" \
        in r.stderr, r.stderr
    assert "record their own" not in ok(deeplense("predict", "--model", tiny_run[0], f, env=tiny_data.env)).stderr
