"""A user's cutouts of another size or pixel scale: scored like the images the run was trained on, never resized into
wrong answers.

    # -> bench/results/cutouts.json (needs bench/robustness.py's model_ii run)
    OMP_NUM_THREADS=1 python bench/cutouts.py

Why (issue 25). The same 40 test lenses padded from 64 to 96 px at the same 0.101"/px used to be "resized as training
resizes": the MAE went from 0.258 to 0.49-0.59, worse than a constant guess, because resizing changes the arcsec per
pixel, which is the physical signal. Now `predict` resamples an image to the run's pixel scale (from a FITS file's WCS,
a simulated dataset, or --pixel-scale) and centre-crops or pads it to the run's field.

Protocol. The run is bench/robustness.py's `model_ii` flow run (xresnet_small, 8,000 Model II images, 8 epochs). The
lenses are its 2,000 test images (seed 99). Each variant is predicted by the user's command (a subprocess, default
flags): `deeplense predict --model RUN INPUT [--pixel-scale S]`, and scored by the MAE of the posterior median against
the true log10 m, beside the constant guess (the run's training mean):
- `as simulated`: the 64-px native test set;
- `padded to 96 px, sky noise, .npy + --pixel-scale`: each image centred in a 96-px frame whose border is Gaussian noise
  with the image's own border median and spread;
- `padded to 96 px, zeros, .npy + --pixel-scale`;
- `padded to 96 px, sky noise, FITS cube with WCS (CDELT)`: the scale read from the file;
- `the same lenses at half the pixel size (128 px, 0.0505"), FITS WCS`: simulated anew at twice the resolution over the
  same field (the same lens and source parameters; the preset's per-pixel noise drawn for the smaller pixels, so
  after resampling the background is about twice as noisy as in the 64-px images), resampled by `predict`;
- `padded to 96 px, resized to 64 px (the old behaviour)`: what a silent resize does, for contrast.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from _results import save

N_TEST, SEED = 2000, 99


def cache() -> Path:
    return Path(os.environ.get("DEEPLENSE_CACHE", Path.home() / ".cache" / "deeplense_fastai"))


def predict(run: Path, *args) -> pd.DataFrame:
    cmd = [sys.executable, "-m", "deeplense_fastai.cli", "predict", "--model", str(run), *map(str, args)]
    print("$ deeplense", " ".join(map(str, cmd[4:])), flush=True)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode: sys.exit(f"failed: {r.stderr[-2000:]}")
    return pd.read_csv(io.StringIO(r.stdout)), r.stderr.strip().splitlines()


def pad(images: np.ndarray, size: int, noise: bool, seed: int = 0) -> np.ndarray:
    """Each (H, W) image centred in a size x size frame of its border's sky (Gaussian, its median and spread) or of
    zeros."""
    n, h, w = images.shape
    out = np.zeros((n, size, size), np.float32)
    if noise:
        rng = np.random.default_rng(seed)
        border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
        med, sd = np.median(border, 1), border.std(1)
        out += (med[:, None, None] + sd[:, None, None] * rng.standard_normal((n, size, size))).astype(np.float32)
    t, l = (size - h) // 2, (size - w) // 2
    out[:, t:t + h, l:l + w] = images
    return out


def write_fits(path: Path, cube: np.ndarray, scale: float) -> Path:
    from astropy.io import fits
    hdu = fits.PrimaryHDU(cube)
    hdu.header["CDELT1"], hdu.header["CDELT2"] = -scale / 3600, scale / 3600
    hdu.header["CTYPE1"], hdu.header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdu.writeto(path, overwrite=True)
    return path


def finer(preset, scale: float, npix: int) -> np.ndarray:
    "The test lenses simulated at another pixel scale over the same field (the same parameter draws)."
    import torch
    from deeplense_fastai.simulate import make_images
    p = preset.replace(pixel_scale=scale, npix=npix)
    torch.set_num_threads(1)
    out = [make_images(p, s, min(s + 250, N_TEST), SEED, ("axion",), True, "cpu")[0].numpy()
           for s in range(0, N_TEST, 250)]
    return np.concatenate(out)


def main():
    from deeplense_fastai.config import resize_images
    from deeplense_fastai.dataset import cached_simulation
    from deeplense_fastai.data import open_source
    from deeplense_fastai.simulate import get_preset
    import torch
    run = cache() / "bench" / "robustness" / "model_ii"
    cfg = json.loads((run / "config.json").read_text())
    test = cached_simulation("model_ii", N_TEST, SEED)
    src = open_source(test, progress=False)
    y = src.labels["log10_m_axion"].to_numpy()
    imgs = np.stack([src.image(i)[0] for i in range(len(src))]).astype(np.float32)
    preset, scale = get_preset("model_ii"), cfg["pixel_scale"]
    work = cache() / "bench" / "cutouts"
    work.mkdir(parents=True, exist_ok=True)
    sky, zeros = pad(imgs, 96, True), pad(imgs, 96, False)
    np.save(work / "sky96.npy", sky)
    np.save(work / "zeros96.npy", zeros)
    np.save(work / "resized64.npy", resize_images(torch.from_numpy(sky[:, None]), 64)[:, 0].numpy())
    write_fits(work / "sky96.fits", sky, scale)
    write_fits(work / "fine128.fits", finer(preset, scale / 2, 2 * preset.instrument.npix), scale / 2)
    variants = [("as simulated (64 px, native)", [test]),
                ("padded to 96 px, sky noise, .npy + --pixel-scale", [work / "sky96.npy", "--pixel-scale", scale]),
                ("padded to 96 px, zeros, .npy + --pixel-scale", [work / "zeros96.npy", "--pixel-scale", scale]),
                ("padded to 96 px, sky noise, FITS cube with WCS", [work / "sky96.fits"]),
                ("the same lenses at half the pixel size (128 px), FITS WCS", [work / "fine128.fits"]),
                ("padded to 96 px, resized to 64 px (the old behaviour)",
                 [work / "resized64.npy", "--pixel-scale", scale])]
    base = float(np.abs(y - cfg["target_mean"][0]).mean())
    rows = []
    for name, args in variants:
        df, notes = predict(run, *args)
        pred = df["pred_log10_m_axion"].to_numpy()
        rows.append(dict(variant=name, input=" ".join(str(a).replace(str(cache()), "$CACHE") for a in args),
                         n=int(len(df)), mae=float(np.abs(pred - y).mean()), baseline_mae=base,
                         ood_share=float(df["ood"].astype(float).mean()),
                         notes=[n.replace(str(cache()), "$CACHE") for n in notes]))
        print(f"{name}: MAE {rows[-1]['mae']:.4f} (constant {base:.4f}), ood {rows[-1]['ood_share']:.3f}", flush=True)
    save("cutouts", settings=dict(run="$CACHE/bench/robustness/model_ii",
                                  run_trained_on=str(cfg.get("source")).replace(str(cache()), "$CACHE"), n_test=N_TEST,
                                  test_seed=SEED, pixel_scale=scale), table=rows)


if __name__ == "__main__":
    main()
