"""The reference pipeline: DeepLenseSim's recipe run through lenstronomy, written independently of deeplense_fastai.

DeepLenseSim (github mwt5345/DeepLenseSim, `deeplense/lens.py`, `Model_*/sim_*.py`) builds each image from a few
random draws: the source centre, the axion mass and vortex angle, or the subhalo masses, radii and angles. This module
takes those raw draws (the `params` dictionary of `deeplense_fastai.simulate.draw_parameters`, of which it reads only
`cls`, `log10_m_axion`, `vortex_angle`, `n_sub`, `sub_mass`, `sub_r`, `sub_phi`, `source_x`, `source_y` and
`exposure`) and rebuilds everything else the way DeepLenseSim does: Einstein radii from `mass_to_radius` (astropy
luminosity distances), the vortex's 100 points, the subhalo positions, lenstronomy's `ImageModel` (Model I) or
`SimAPI` (Models II/III) and the noise. Nothing here calls the package's lens construction, so a mistake there
shows up as a disagreement.

The instrument numbers are written here literally, frozen from lenstronomy's `ObservationConfig` files (never read
from the installed lenstronomy): `SimAPI` receives them as an explicit `kwargs_single_band`.

`varied_image` does the same for the Model II presets with parts (a varied main lens and source, star-forming knots),
from their raw draws. Used by tests/test_simulate_oracle.py, tests/test_simulate_stats.py, tests/test_sky_varies.py,
bench/fidelity.py and bench/sky_lenstronomy.py (the benches put tests/ on their path).
"""
import numpy as np

# lenstronomy 1.9.2 .. 1.14.0, lenstronomy/SimulationAPI/ObservationConfig/Euclid.py: VIS_obs + camera
# (DeepLenseSim: Euclid(band='VIS', psf_type='GAUSSIAN', coadd_years=6).kwargs_single_band())
EUCLID_VIS_DEEPLENSESIM = dict(exposure_time=565.0, sky_brightness=22.35, magnitude_zero_point=24.0, num_exposures=4,
                               seeing=0.16, psf_type="GAUSSIAN", read_noise=4.2, pixel_scale=0.101, ccd_gain=3.1)
# lenstronomy 1.14.1 (June 2026), the same file: VIS_band_obs + VIS_camera
EUCLID_VIS_1_14_1 = dict(exposure_time=566.0, sky_brightness=22.3, magnitude_zero_point=25.72, num_exposures=4,
                         seeing=0.16, psf_type="GAUSSIAN", read_noise=4.2, pixel_scale=0.101, ccd_gain=3.1)
# lenstronomy 1.9.2 .. 1.14.2, lenstronomy/SimulationAPI/ObservationConfig/HST.py: WFC3_F160W_band_obs + camera
HST_WFC3_F160W = dict(exposure_time=5400.0, sky_brightness=22.3, magnitude_zero_point=25.96, num_exposures=1,
                      seeing=0.08, psf_type="GAUSSIAN", read_noise=4, pixel_scale=0.08, ccd_gain=2.5)
SIMAPI_BANDS = {"model_ii": EUCLID_VIS_DEEPLENSESIM, "model_iii": HST_WFC3_F160W, "euclid_2026": EUCLID_VIS_1_14_1}

# DeepLenseSim deeplense/lens.py, DeepLens.simple_sim (Models I and f_sub)
MODEL_I = dict(num_pix=150, delta_pix=0.05, fwhm=0.087, truncation=3, background_rms=0.01, amp=20.0)
NUM_PIX_SIMAPI = 64
Z_LENS, Z_SOURCE = 0.5, 1.0
HALO_MASS, VORTEX_MASS, VORTEX_POINTS = 1e12, 3e10, 100


def cosmology():
    from astropy.cosmology import FlatLambdaCDM
    return FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)


def mass_to_radius(mass):
    """DeepLenseSim's Einstein radius (arcsec): luminosity distances, D_ls = D_s - D_l, 206265 arcsec per radian."""
    from astropy import units as u
    from astropy.constants import G, c, M_sun
    cosmo = cosmology()
    dl, ds = cosmo.luminosity_distance(Z_LENS).to(u.m), cosmo.luminosity_distance(Z_SOURCE).to(u.m)
    theta = np.sqrt(4 * G * np.asarray(mass, dtype=float) * M_sun / c**2 * (ds - dl) / (dl * ds))
    return (theta * 206265).value


def axion_mass_to_length(mass_ev):
    """DeepLenseSim's vortex half-length (arcsec) for an axion mass in eV."""
    return 0.06 / (2 * mass_ev) * 1e-22


def lens_lists(params, b):
    """DeepLenseSim's lens model list and kwargs for image b of a parameter dict (SIE + SHEAR + point masses)."""
    models = ["SIE", "SHEAR"]
    kwargs = [dict(theta_E=float(mass_to_radius(HALO_MASS)), e1=0.1, e2=0, center_x=0, center_y=0.0),
              dict(gamma1=0.05, gamma2=0)]
    cls = params["cls"][b]
    if cls == "axion":                                       # DeepLens.make_vortex(3e10)
        te = mass_to_radius(VORTEX_MASS / VORTEX_POINTS * np.ones(VORTEX_POINTS))
        half = axion_mass_to_length(10.0 ** params["log10_m_axion"][b])
        coords = np.linspace(-half, half, VORTEX_POINTS)
        ang = params["vortex_angle"][b]
        for t, s in zip(te, coords):
            models.append("POINT_MASS")
            kwargs.append(dict(theta_E=float(t), center_x=float(s * np.cos(ang)), center_y=float(s * np.sin(ang))))
    elif cls == "cdm":                                       # DeepLens.make_old_cdm()
        n = int(params["n_sub"][b])
        te = mass_to_radius(params["sub_mass"][b, :n])
        for t, r, th in zip(te, params["sub_r"][b, :n], params["sub_phi"][b, :n]):
            models.append("POINT_MASS")
            kwargs.append(dict(theta_E=float(t), center_x=float(r * np.sin(th)), center_y=float(r * np.cos(th))))
    return models, kwargs


def source_kwargs(params, b, **amp):
    """DeepLenseSim's Sersic source (make_source_light / make_source_light_mag) with `amp=` or `magnitude=`."""
    return [dict(amp, R_sersic=0.25, n_sersic=1, e1=-0.1, e2=0.1, center_x=float(params["source_x"][b]),
                 center_y=float(params["source_y"][b]))]


def model_i_model(params, b):
    """Noiseless Model I image (counts/s) as DeepLens.simple_sim computes `image_model`."""
    from lenstronomy.Util import util
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    n, d = MODEL_I["num_pix"], MODEL_I["delta_pix"]
    _, _, ra0, dec0, _, _, M, _ = util.make_grid_with_coordtransform(n, d, center_ra=0, center_dec=0, subgrid_res=1,
                                                                    inverse=False)
    data = ImageData(background_rms=MODEL_I["background_rms"], exposure_time=float(params["exposure"][b]), ra_at_xy_0=ra0,
                     dec_at_xy_0=dec0, transform_pix2angle=M, image_data=np.zeros((n, n)))
    psf = PSF(psf_type="GAUSSIAN", fwhm=MODEL_I["fwhm"], pixel_size=d, truncation=MODEL_I["truncation"])
    models, kwargs = lens_lists(params, b)
    im = ImageModel(data, psf, lens_model_class=LensModel(models), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                    kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})
    return im.image(kwargs, source_kwargs(params, b, amp=MODEL_I["amp"]), kwargs_lens_light=None, kwargs_ps=None)


def model_i_noise(model, exp_time, rng_seed):
    """DeepLens.simple_sim's noise: Poisson(clip(t * (model + add_poisson + add_background), 0)), in counts."""
    from lenstronomy.Util import image_util
    np.random.seed(rng_seed)                                  # image_util draws from NumPy's global generator
    poisson = image_util.add_poisson(model, exp_time=exp_time)
    bkg = image_util.add_background(model, sigma_bkd=MODEL_I["background_rms"])
    return np.random.poisson((exp_time * (model + poisson + bkg)).clip(min=0))


def simapi(name, params, b):
    """lenstronomy SimAPI for image b as DeepLens.simple_sim_2 builds it, with the frozen band of preset `name`."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    models, kwargs = lens_lists(params, b)
    kwargs_model = {"lens_model_list": models, "lens_redshift_list": [Z_LENS] * len(models),
                    "source_light_model_list": ["SERSIC_ELLIPSE"], "source_redshift_list": [Z_SOURCE],
                    "cosmo": cosmology(), "z_source_convention": 2.5, "z_source": Z_SOURCE}
    band = dict(SIMAPI_BANDS[name])
    try:
        sim = SimAPI(num_pix=NUM_PIX_SIMAPI, kwargs_single_band=band, kwargs_model=kwargs_model)
    except TypeError:                                         # lenstronomy <= 1.14.0 spelled it numpix
        sim = SimAPI(numpix=NUM_PIX_SIMAPI, kwargs_single_band=band, kwargs_model=kwargs_model)
    return sim, kwargs


def simapi_model(name, params, b):
    """Noiseless SimAPI image (counts/s) of image b, and the SimAPI object (for its noise)."""
    sim, kwargs = simapi(name, params, b)
    imsim = sim.image_model_class({"point_source_supersampling_factor": 1})
    _, src, _ = sim.magnitude2amplitude(None, source_kwargs(params, b, magnitude=20))
    return imsim.image(kwargs, src, None), sim


def deeplensesim_image(name, params, b, noise=False, seed=0):
    """Image b as DeepLenseSim stores it (`noise=False`: Models II/III store `model + model`) or with the noise our
    presets add by default (`noise=True`: Model I's counts always; Models II/III `model + SimAPI.noise_for_model`)."""
    if name in ("model_i", "fsub"):
        model = model_i_model(params, b)
        return model_i_noise(model, float(params["exposure"][b]), seed).astype(float) if noise else model
    model, sim = simapi_model(name, params, b)
    if not noise:
        return model + model
    np.random.seed(seed)
    return model + sim.noise_for_model(model=model)


def varied_image(params, b, noise=False, seed=0):
    """Image b of a Model II preset with parts (`model_ii_nuisance`, `model_ii_clumpy`, `model_ii_nuisance_clumpy`)
    from its raw draws: DeepLenseSim's lenses (`lens_lists`) with the main lens (theta_E, halo_e1/e2, gamma1/2) and the
    Sersic source (source_R, source_n, source_e1/e2, source_dmag on magnitude 20) taken from their columns where the
    preset varies them, plus `n_knots` GAUSSIAN knots carrying `knot_fraction` of the source's light (amp: each knot's
    flux), in DeepLenseSim's SimAPI band. `noise=False`: the model (counts/s); `noise=True`: model plus
    `SimAPI.noise_for_model` from NumPy's generator seeded `seed` (lenstronomy's own noise, as `deeplensesim_image`)."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    models, kwargs = lens_lists(params, b)
    if "halo_e1" in params:
        kwargs[0] = dict(theta_E=float(params["theta_E"][b]), e1=float(params["halo_e1"][b]),
                         e2=float(params["halo_e2"][b]), center_x=0.0, center_y=0.0)
        kwargs[1] = dict(gamma1=float(params["gamma1"][b]), gamma2=float(params["gamma2"][b]))
    n = int(params["n_knots"][b]) if "n_knots" in params else 0
    kwargs_model = {"lens_model_list": models, "lens_redshift_list": [Z_LENS] * len(models),
                    "source_light_model_list": ["SERSIC_ELLIPSE"] + ["GAUSSIAN"] * n,
                    "source_redshift_list": [Z_SOURCE] * (1 + n), "cosmo": cosmology(), "z_source_convention": 2.5,
                    "z_source": Z_SOURCE}
    sim = SimAPI(num_pix=NUM_PIX_SIMAPI, kwargs_single_band=dict(EUCLID_VIS_DEEPLENSESIM), kwargs_model=kwargs_model)
    own = lambda k, v: float(params[k][b]) if k in params else v          # the draw, or DeepLenseSim's value
    mag = 20.0 + own("source_dmag", 0.0)
    frac = own("knot_fraction", 0.0) if n else 0.0
    disc = dict(magnitude=mag - 2.5 * np.log10(1 - frac), R_sersic=own("source_R", 0.25), n_sersic=own("source_n", 1.0),
                e1=own("source_e1", -0.1), e2=own("source_e2", 0.1), center_x=float(params["source_x"][b]),
                center_y=float(params["source_y"][b]))
    _, src, _ = sim.magnitude2amplitude(None, [disc])
    flux = 10 ** (-0.4 * (mag - EUCLID_VIS_DEEPLENSESIM["magnitude_zero_point"]))      # counts/s of the source
    for j in range(n):
        src.append(dict(amp=flux * frac * float(params["knot_weight"][b, j]), sigma=float(params["knot_sigma"][b, j]),
                        center_x=float(params["knot_x"][b, j]), center_y=float(params["knot_y"][b, j])))
    model = sim.image_model_class({"point_source_supersampling_factor": 1}).image(kwargs, src, None)
    if not noise: return model
    np.random.seed(seed)
    return model + sim.noise_for_model(model=model)
