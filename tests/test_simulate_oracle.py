"""Full noiseless images against lenstronomy doing what DeepLenseSim does (ImageModel for Model I, SimAPI for II/III)."""
import numpy as np
import pytest
import torch

from deeplense_fastai.simulate import PRESETS, draw_parameters, render, lenstronomy_kwargs

pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle for these tests")
from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LightModel.light_model import LightModel


def lenstronomy_lens(preset, prm, b):
    """DeepLenseSim's lens model list and kwargs for image b of a parameter batch."""
    lk = lenstronomy_kwargs(preset, prm, b)
    return lk["lens_model_list"], lk["kwargs_lens"]


def source_kwargs(preset, prm, b, amp_key="amp", amp=None):
    src = dict(lenstronomy_kwargs(preset, prm, b)["kwargs_source"][0])
    src.pop("amp", None); src.pop("magnitude", None)
    return [dict(src, **{amp_key: amp})]


@pytest.mark.parametrize("cls", ["no_sub", "cdm", "axion"])
def test_model_i_noiseless_matches_lenstronomy_image_model(cls):
    from lenstronomy.Util import util
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    p = PRESETS["model_i"]
    prm = draw_parameters(p, [0, 1, 2], seed=11, classes=(cls,))
    ours = render(p, prm, dtype=torch.float64).numpy()
    _, _, ra0, dec0, _, _, M, _ = util.make_grid_with_coordtransform(num_pix=p.npix, delta_pix=p.pixel_scale,
                                                                   center_ra=0, center_dec=0, subgrid_res=1, inverse=False)
    data = ImageData(background_rms=0.01, exposure_time=1000., ra_at_xy_0=ra0, dec_at_xy_0=dec0, transform_pix2angle=M,
                     image_data=np.zeros((p.npix, p.npix)))
    psf = PSF(psf_type="GAUSSIAN", fwhm=p.psf_fwhm, pixel_size=p.pixel_scale, truncation=p.psf_truncation)
    for b in range(3):
        models, kwargs = lenstronomy_lens(p, prm, b)
        im = ImageModel(data, psf, lens_model_class=LensModel(models), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                        kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})
        theirs = im.image(kwargs, source_kwargs(p, prm, b, amp=p.source_amp), kwargs_lens_light=None, kwargs_ps=None)
        assert np.max(np.abs(ours[b] - theirs)) / theirs.max() < 1e-4


@pytest.mark.parametrize("name,cls", [("model_ii", "axion"), ("model_ii", "cdm"), ("model_iii", "no_sub")])
def test_model_ii_iii_noiseless_match_lenstronomy_simapi(name, cls):
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST
    p = PRESETS[name]
    if name == "model_ii":
        band = Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band()
    else:
        band = HST(band="TDLMC_F160W", psf_type="GAUSSIAN").kwargs_single_band()
        band["seeing"] = p.psf_fwhm
    prm = draw_parameters(p, [0, 1], seed=5, classes=(cls,))
    ours = render(p, prm, dtype=torch.float64).numpy()
    for b in range(2):
        models, kwargs = lenstronomy_lens(p, prm, b)
        kwargs_model = {"lens_model_list": models, "lens_redshift_list": [0.5] * len(models),
                        "source_light_model_list": ["SERSIC_ELLIPSE"], "source_redshift_list": [1.0],
                        "cosmo": FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05), "z_source_convention": 2.5, "z_source": 1.0}
        sim = SimAPI(num_pix=p.npix, kwargs_single_band=band, kwargs_model=kwargs_model)
        imsim = sim.image_model_class({"point_source_supersampling_factor": 1})
        _, src, _ = sim.magnitude2amplitude(None, source_kwargs(p, prm, b, "magnitude", p.source_magnitude))
        theirs = imsim.image(kwargs, src, None)
        assert np.max(np.abs(ours[b] - theirs)) / theirs.max() < 1e-4


def test_instrument_constants_match_lenstronomy_configs():
    from lenstronomy.SimulationAPI.observation_api import SingleBand
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST
    for name, cfg in [("model_ii", Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6)),
                      ("model_iii", HST(band="TDLMC_F160W", psf_type="GAUSSIAN"))]:
        kw, p = cfg.kwargs_single_band(), PRESETS[name]
        band = SingleBand(**kw)
        assert p.pixel_scale == kw["pixel_scale"] and p.zero_point == kw["magnitude_zero_point"]
        assert abs(p.background_rms / band.background_noise - 1) < 1e-9
        assert p.exposure == (band.exposure_time, band.exposure_time)
        if kw["seeing"] is not None:
            assert p.psf_fwhm == kw["seeing"]
