"""Work done once between a folder of FITS cutouts and its predictions: the folder listed once per open, each file's
headers read once (no pixel) to learn its size and pixel scale, each image read once per pass, and each image's `Grid`
found once, where the source is opened (its note said once). The headers tell what the pixels would: the same shape,
and the same refusals, as reading the file."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deeplense_fastai import inference, inputs, sources
from deeplense_fastai.config import RunConfig
from deeplense_fastai.core import DeepLenseError
from deeplense_fastai.models import get_model

fits = pytest.importorskip("astropy.io.fits", reason="FITS cutouts need astropy (the fits extra)")
OWN = 0.101     # the run's arcsec per pixel


def write_fits(path, npix, scale=None, seed=0):
    "A cutout of npix x npix; with `scale` (arcsec/px) a celestial TAN WCS whose CDELT says it."
    h = fits.PrimaryHDU(np.random.default_rng(seed).random((npix, npix), dtype=np.float32))
    if scale:
        h.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CDELT1=-scale / 3600, CDELT2=scale / 3600,
                        CRPIX1=npix / 2, CRPIX2=npix / 2, CRVAL1=150.0, CRVAL2=2.0)
    h.writeto(path)


@pytest.fixture
def folder(tmp_path):
    "Six cutouts: three on the run's grid, two finer and wider, one without a WCS (taken at the run's scale)."
    d = tmp_path / "cutouts"
    d.mkdir()
    for i, (npix, scale) in enumerate([(64, OWN), (96, 0.05), (64, OWN), (96, 0.05), (80, None), (64, OWN)]):
        write_fits(d / f"c{i}.fits", npix, scale, seed=i)
    return d


def counted(monkeypatch, module, name) -> list:
    "Replace `module.name` by itself, counting: the list of the first argument of each call."
    calls, orig = [], getattr(module, name)
    def f(*a, **kw):
        calls.append(a[0] if a else None)
        return orig(*a, **kw)
    monkeypatch.setattr(module, name, f)
    return calls


def test_a_fits_folder_is_listed_once_and_opened_by_its_headers(folder, monkeypatch):
    listed = counted(monkeypatch, sources, "_deeplense_files")
    pixels = counted(monkeypatch, sources, "read_fits")
    opened = counted(monkeypatch, fits, "open")
    src = sources.open_source(folder, progress=False)
    assert len(listed) == 1
    assert pixels == []                                                     # sizes and scales from the headers
    assert sorted(Path(p) for p in opened) == sorted(folder.glob("*.fits"))   # each file opened once
    assert src.image_shape == (64, 64) and pixels == []
    assert src.meta["image_shapes"].tolist() == [[64, 64], [96, 96], [64, 64], [96, 96], [80, 80], [64, 64]]
    np.testing.assert_allclose(src.meta["pixel_scales"], [OWN, 0.05, OWN, 0.05, np.nan, OWN])
    assert src.image(1).shape == (1, 96, 96) and len(pixels) == 1            # an image is read when it is asked for


@pytest.mark.parametrize("bad_pixels", ["refuse", "skip"])
def test_each_image_is_read_once_per_pass_and_its_grid_found_once(folder, monkeypatch, capsys, bad_pixels):
    cfg = RunConfig(targets=["log10_m_axion"], target_mean=[-23.], target_std=[.5], image_shape=[64, 64],
                    pixel_scale=OWN, arch="xresnet_small")
    model = get_model("xresnet_small", n_in=1, n_out=1).eval()
    grids = []
    each = inputs.image_grids
    def counting(*a, **kw):
        grids.append(a[0])
        return each(*a, **kw)
    for m in (inputs, inference): monkeypatch.setattr(m, "image_grids", counting)
    pixels, notes = counted(monkeypatch, sources, "read_fits"), []
    src, grid = inputs.open_checked(folder, cfg, notice=notes.append, bad_pixels=bad_pixels)
    n = len(src)
    assert len(pixels) == (n if bad_pixels == "refuse" else 1)      # the pixel check: one pass, or the first image
    assert len(grids) == 1 and src.meta["grids"][1] is not None
    pixels.clear()
    out = inference.predict_opened(model, cfg, src, grid, bs=4, bad_pixels=bad_pixels)
    passes = 3 if bad_pixels == "skip" else 2            # (the bad-pixel count,) the predictions, the OOD scores
    assert len(out) == n and np.isfinite(out["pred_log10_m_axion"]).all()
    assert set(Counter(map(str, pixels)).values()) == {passes}, Counter(pixels)
    assert len(grids) == 1                                                 # found where it was opened, never again
    said = notes + capsys.readouterr().err.splitlines()
    assert sum("c1.fits and 1 more" in s for s in said) == 1, said          # each size and scale noted once
    assert sum("c4.fits" in s for s in said) == 1, said
    assert not any("grids_noted" in k for k in src.meta)


def test_a_folder_read_through_predict_loaded_finds_its_grids_once(folder, monkeypatch):
    cfg = RunConfig(targets=["log10_m_axion"], target_mean=[-23.], target_std=[.5], image_shape=[64, 64],
                    pixel_scale=OWN, arch="xresnet_small")
    listed = counted(monkeypatch, sources, "_deeplense_files")
    found = counted(monkeypatch, inputs, "image_grids")
    monkeypatch.setattr(inference, "image_grids", inputs.image_grids)
    notes = []
    out = inference.predict_loaded(get_model("xresnet_small", n_in=1, n_out=1).eval(), cfg, folder,
                                   notice=notes.append)
    assert len(out) == 6 and len(found) == 1 and len(listed) == 1
    assert sum("c1.fits and 1 more" in s for s in notes) == 1, notes


def odd_files(d: Path) -> dict:
    "FITS files of every layout the reader tells apart: {name: path}."
    im = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    files = {
        "cube1": fits.HDUList([fits.PrimaryHDU(im[None])]),                                    # (1, H, W): an image
        "hst": fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(im, name="SCI"), fits.ImageHDU(im, name="ERR")]),
        "two": fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(im), fits.ImageHDU(im)]),         # a stack of two
        "odd": fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(im), fits.ImageHDU(im[:32])]),    # different shapes
        "empty": fits.HDUList([fits.PrimaryHDU()]),                                            # no image at all
        "stack": fits.HDUList([fits.PrimaryHDU(np.stack([im] * 3))]),
        "comp": fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(im)]),                      # tile-compressed
        "cube4": fits.HDUList([fits.PrimaryHDU(im[None, None, None])]),                        # (1, 1, 1, H, W)
    }
    out = {}
    for name, hdul in files.items():
        hdul.writeto(d / f"{name}.fits")
        out[name] = d / f"{name}.fits"
    raw = (d / "hst.fits").read_bytes()
    (d / "cut.fits").write_bytes(raw[:len(raw) - 5000])                                         # truncated
    out["cut"] = d / "cut.fits"
    return out


@pytest.mark.filterwarnings("ignore:File may have been truncated")      # reading the cut file says so too
def test_the_headers_tell_what_reading_the_pixels_tells(tmp_path):
    for name, f in odd_files(tmp_path).items():
        try: want = sources._folder_image(f, tmp_path)[0].shape
        except DeepLenseError as e: want = str(e).split(" (")[0]
        try: got = sources._fits_head(f, tmp_path)[0]
        except DeepLenseError as e: got = str(e).split(" (")[0]
        assert got == want, (name, got, want)


def test_the_headers_give_the_pixel_scale_fits_pixel_scale_gives(tmp_path):
    from deeplense_fastai.readers import fits_pixel_scale
    im = np.zeros((40, 40), np.float32)
    tan = dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=20, CRPIX2=20, CRVAL1=150.0, CRVAL2=2.0)
    cards = {"cdelt": dict(tan, CDELT1=-0.05 / 3600, CDELT2=0.05 / 3600),
             "cd": dict(tan, CD1_1=-1e-5, CD1_2=4e-6, CD2_1=4e-6, CD2_2=1e-5),                  # rotated
             "swapped": dict(CTYPE1="DEC--TAN", CTYPE2="RA---TAN", CDELT1=2e-5, CDELT2=-3e-5),
             "arcsec": dict(tan, CDELT1=-0.07, CDELT2=0.07, CUNIT1="arcsec", CUNIT2="arcsec"),
             "linear": dict(CTYPE1="X", CTYPE2="Y", CDELT1=1.0, CDELT2=1.0), "none": {}}
    for name, c in cards.items():
        h = fits.PrimaryHDU(im)
        h.header.update(c)
        h.writeto(tmp_path / f"{name}.fits")
        want = fits_pixel_scale(tmp_path / f"{name}.fits") or np.nan
        np.testing.assert_equal(sources._fits_head(tmp_path / f"{name}.fits", tmp_path)[1], want, err_msg=name)
