"""Full images against DeepLenseSim's recipe run through lenstronomy (tests/_lenstronomy_ref.py).

The reference rebuilds each lens from the raw random draws (vortex angle and axion mass, subhalo masses, radii and
angles, source centre) the way DeepLenseSim does, and hands lenstronomy's SimAPI the instrument numbers frozen from
lenstronomy <= 1.14.0 (Euclid VIS) and HST.py (WFC3 F160W) explicitly: nothing comes from `lenstronomy_kwargs` or
from the installed lenstronomy's configuration files.
"""
import numpy as np
import pytest
import torch

from deeplense_fastai.simulate import PRESETS, draw_parameters, make_images, render

pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle for these tests")
pytest.importorskip("astropy", reason="astropy gives DeepLenseSim's distances")
import _lenstronomy_ref as ref  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest-less import mode)


FLOAT64_TOL = 1e-6     # see FLOAT32_TOL below for what was measured


def rel_max(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("cls", ["no_sub", "cdm", "axion"])
def test_model_i_noiseless_matches_deeplensesim_image_model(cls):
    p = PRESETS["model_i"]
    prm = draw_parameters(p, [0, 1, 2], seed=11, classes=(cls,))
    ours = render(p, prm, dtype=torch.float64).numpy()
    for b in range(3):
        assert rel_max(ours[b], ref.model_i_model(prm, b)) < FLOAT64_TOL


@pytest.mark.parametrize("name,cls", [("model_ii", "axion"), ("model_ii", "cdm"), ("model_ii", "no_sub"),
                                      ("model_iii", "axion"), ("model_iii", "cdm"), ("euclid_2026", "axion")])
def test_simapi_presets_store_what_deeplensesim_stored(name, cls):
    """noise=False gives DeepLenseSim's stored `model + model`, with the band numbers frozen in the reference."""
    p = PRESETS[name]
    prm = draw_parameters(p, [0, 1], seed=5, classes=(cls,))
    ours, _ = make_images(p, 0, 2, seed=5, classes=(cls,), noise=False, dtype=torch.float64)
    for b in range(2):
        assert rel_max(ours[b].numpy(), ref.deeplensesim_image(name, prm, b, noise=False)) < FLOAT64_TOL


def test_model_ii_is_not_todays_euclid():
    """The published Model II flux level: today's lenstronomy (1.14.1) numbers give 4.9x the counts, and fail here."""
    prm = draw_parameters(PRESETS["model_ii"], [0], seed=2, classes=("no_sub",))
    ours = render(PRESETS["model_ii"], prm, dtype=torch.float64)[0].numpy()
    frozen = ref.simapi_model("model_ii", prm, 0)[0]
    today = ref.simapi_model("euclid_2026", prm, 0)[0]
    assert abs(ours.sum() / frozen.sum() - 1) < FLOAT64_TOL
    assert abs(today.sum() / frozen.sum() - 10**(0.4 * 1.72)) < 1e-3


def test_background_noise_is_lenstronomys_for_the_frozen_bands():
    from lenstronomy.SimulationAPI.observation_api import SingleBand
    for name in ("model_ii", "model_iii", "euclid_2026"):
        p, band = PRESETS[name], SingleBand(**ref.SIMAPI_BANDS[name])
        obs, ins = p.observation, p.instrument
        assert abs(obs.background_rms / band.background_noise - 1) < 1e-12
        assert obs.exposure == (band.exposure_time, band.exposure_time)
        kw = ref.SIMAPI_BANDS[name]
        assert (ins.pixel_scale, ins.psf_fwhm, ins.zero_point) == (kw["pixel_scale"], kw["seeing"], kw["magnitude_zero_point"])
    ii = PRESETS["model_ii"]
    assert ii.instrument.zero_point == 24.0 and ii.observation.exposure == (2260.0, 2260.0)


# float32 (the library's default dtype) against the float64 reference. A float32 source-plane position carries a
# relative error of ~1e-7 of a few arcsec (~5e-7"); the Sersic profile's steepest slope (b_n / R = 6.7 per arcsec)
# turns that into ~3e-6 of the peak, and 100 point-mass deflections summed in float32 add a few 1e-7" more.
# Measured (seed 8, 4 images each of model_i axion/cdm, model_ii cdm/axion, model_iii axion): at most 2.2e-6 of the
# peak; in float64 at most 7.5e-10. Tolerance: 2e-5 of the peak in float32, 1e-6 in float64.
# What float32 cannot do: near a point mass the deflection theta_E^2 / r is singular, and a pixel centre that falls a
# few milliarcseconds from a subhalo gets a float32 deflection error of order 1e-4" (bench/fidelity.py, 300 images
# per preset: 99% of images within 3e-6 of the peak, the worst 2.1e-5, a model_iii pixel 0.003" from a subhalo).
FLOAT32_TOL = 2e-5


@pytest.mark.parametrize("name,cls", [("model_i", "axion"), ("model_ii", "cdm")])
def test_float32_full_image_oracle(name, cls):
    p = PRESETS[name]
    prm = draw_parameters(p, [0, 1], seed=8, classes=(cls,))
    ours, _ = make_images(p, 0, 2, seed=8, classes=(cls,), noise=False)
    assert ours.dtype == torch.float32
    for b in range(2):
        assert rel_max(ours[b].double().numpy(), ref.deeplensesim_image(name, prm, b, noise=False)) < FLOAT32_TOL
