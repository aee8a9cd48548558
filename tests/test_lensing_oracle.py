"""Oracle tests: our batched torch physics against lenstronomy (and astropy), on random parameters."""
import numpy as np
import pytest
import torch

from deeplense_fastai import lensing as L

lenstronomy = pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle for these tests")
from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LightModel.light_model import LightModel

RNG = np.random.default_rng(1234)
X = RNG.uniform(-3, 3, 500)
Y = RNG.uniform(-3, 3, 500)
XT, YT = torch.tensor(X)[None], torch.tensor(Y)[None]   # shape (1, P): a "batch" of one row of positions


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


@pytest.mark.parametrize("trial", range(5))
def test_sie_matches_lenstronomy(trial):
    rng = np.random.default_rng(trial)
    kw = dict(theta_E=rng.uniform(0.3, 2), e1=rng.uniform(-0.3, 0.3), e2=rng.uniform(-0.3, 0.3),
              center_x=rng.uniform(-0.2, 0.2), center_y=rng.uniform(-0.2, 0.2))
    ax, ay = LensModel(["SIE"]).alpha(X, Y, [kw])
    ox, oy = L.sie_deflection(XT, YT, *[torch.tensor([v], dtype=torch.float64) for v in kw.values()])
    assert rel_err(ox[0], ax) < 1e-6 and rel_err(oy[0], ay) < 1e-6


def test_sie_near_round_matches_lenstronomy():
    kw = dict(theta_E=1.1, e1=1e-5, e2=0.0, center_x=0.0, center_y=0.0)
    ax, ay = LensModel(["SIE"]).alpha(X, Y, [kw])
    ox, oy = L.sie_deflection(XT, YT, 1.1, 1e-5, 0.0)
    assert rel_err(ox[0], ax) < 1e-6 and rel_err(oy[0], ay) < 1e-6


def test_shear_and_point_mass_match_lenstronomy():
    g1, g2 = RNG.uniform(-0.1, 0.1, 2)
    ax, ay = LensModel(["SHEAR"]).alpha(X, Y, [dict(gamma1=g1, gamma2=g2)])
    ox, oy = L.shear_deflection(XT, YT, g1, g2)
    assert rel_err(ox[0], ax) < 1e-6 and rel_err(oy[0], ay) < 1e-6
    k = 7
    te, cx, cy = RNG.uniform(0.01, 0.2, k), RNG.uniform(-2, 2, k), RNG.uniform(-2, 2, k)
    kws = [dict(theta_E=a, center_x=b, center_y=c) for a, b, c in zip(te, cx, cy)]
    ax, ay = LensModel(["POINT_MASS"] * k).alpha(X, Y, kws)
    x2, y2 = torch.tensor(X).reshape(20, 25), torch.tensor(Y).reshape(20, 25)
    ox, oy = L.point_mass_deflection(x2, y2, torch.tensor(te)[None], torch.tensor(cx)[None], torch.tensor(cy)[None])
    assert rel_err(ox.reshape(-1), ax) < 1e-6 and rel_err(oy.reshape(-1), ay) < 1e-6


def test_line_mass_is_the_limit_of_many_points():
    n, half = 2000, 0.4
    s = np.linspace(-half, half, n)
    ang = 0.7
    te_total = 0.3
    kws = [dict(theta_E=te_total / np.sqrt(n), center_x=v * np.cos(ang), center_y=v * np.sin(ang)) for v in s]
    far = np.hypot(X, Y) > 0.8
    ax, ay = LensModel(["POINT_MASS"] * n).alpha(X[far], Y[far], kws)
    ox, oy = L.line_mass_deflection(torch.tensor(X[far]), torch.tensor(Y[far]), te_total, half, ang)
    assert rel_err(ox, ax) < 2e-3 and rel_err(oy, ay) < 2e-3


def test_sersic_matches_lenstronomy():
    kw = dict(amp=20., R_sersic=0.25, n_sersic=1.0, e1=-0.1, e2=0.1, center_x=0.1, center_y=-0.2)
    theirs = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(X, Y, [kw])
    ours = L.sersic(XT, YT, **kw)[0]
    assert rel_err(ours, theirs) < 1e-6
    kw["n_sersic"] = 2.7
    theirs = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(X, Y, [kw])
    assert rel_err(L.sersic(XT, YT, **kw)[0], theirs) < 1e-6


def test_magnitude_to_amp_matches_lenstronomy():
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    # Euclid VIS as lenstronomy <= 1.14.0 configured it (ObservationConfig/Euclid.py), handed over explicitly
    band = dict(exposure_time=565.0, sky_brightness=22.35, magnitude_zero_point=24.0, num_exposures=4, seeing=0.16,
                psf_type="GAUSSIAN", read_noise=4.2, pixel_scale=0.101, ccd_gain=3.1)
    sim = SimAPI(num_pix=64, kwargs_single_band=band, kwargs_model={"source_light_model_list": ["SERSIC_ELLIPSE"]})
    kw = dict(magnitude=20, R_sersic=0.25, n_sersic=1, e1=-0.1, e2=0.1, center_x=0, center_y=0)
    _, kws, _ = sim.magnitude2amplitude(None, [kw])
    ours = L.magnitude_to_amp(20, band["magnitude_zero_point"], 0.25, 1)
    assert abs(ours / kws[0]["amp"] - 1) < 1e-6


def test_psf_matches_scipy_gaussian_filter():
    from scipy import ndimage
    img = RNG.uniform(0, 1, (40, 40))
    for fwhm, px, tr in [(0.087, 0.05, 3), (0.16, 0.101, 5)]:
        sigma = fwhm / np.sqrt(8 * np.log(2)) / px
        theirs = ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=tr)
        ours = L.convolve_psf(torch.tensor(img)[None], fwhm, px, truncation=tr)[0]
        assert np.max(np.abs(ours.numpy() - theirs)) < 1e-10


def test_distances_match_astropy():
    astropy = pytest.importorskip("astropy", reason="astropy is the oracle for distances")
    from astropy.cosmology import FlatLambdaCDM
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    z = np.array([0.1, 0.5, 1.0, 2.5, 4.0])
    assert rel_err(L.angular_diameter_distance(z), cosmo.angular_diameter_distance(z).value) < 1e-6
    assert rel_err(L.luminosity_distance(z), cosmo.luminosity_distance(z).value) < 1e-6
    assert rel_err(L.angular_diameter_distance(0.5, 1.0), cosmo.angular_diameter_distance(0.5, 1.0).value) < 1e-6


def test_einstein_radius_matches_deeplensesim_formula():
    pytest.importorskip("astropy", reason="astropy is the oracle for distances")
    from astropy.cosmology import FlatLambdaCDM
    from astropy import units as u
    from astropy.constants import G, c, M_sun
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    for mass in [1e12, 3e8, 1e6]:
        dl, ds = cosmo.luminosity_distance(0.5).to(u.m), cosmo.luminosity_distance(1.0).to(u.m)
        theirs = (np.sqrt(4 * G * mass * M_sun / c**2 * (ds - dl) / (dl * ds)) * 206265).value
        assert abs(L.einstein_radius(mass, 0.5, 1.0, distances="deeplensesim") / theirs - 1) < 1e-6
        dl, ds = cosmo.angular_diameter_distance(0.5).to(u.m), cosmo.angular_diameter_distance(1.0).to(u.m)
        dls = cosmo.angular_diameter_distance(0.5, 1.0).to(u.m)
        theirs = (np.sqrt(4 * G * mass * M_sun / c**2 * dls / (dl * ds)) * u.rad).to(u.arcsec).value
        assert abs(L.einstein_radius(mass, 0.5, 1.0) / theirs - 1) < 1e-6


def test_sis_ring_sits_at_theta_e():
    """A source on the optical axis behind an SIS is imaged into a ring of radius theta_E."""
    x, y = L.pixel_grid(201, 0.02, dtype=torch.float64)
    ax, ay = L.sie_deflection(x, y, 1.3)
    bx, by = L.ray_shoot(x, y, ax, ay)
    img = L.sersic(bx, by, 1.0, 0.05, 1.0)
    r = torch.hypot(x, y)
    peak_r = (img * r).sum() / img.sum()
    assert abs(peak_r.item() - 1.3) < 0.02


def test_mean_convergence_inside_critical_curve_is_one():
    """For the SIE the tangential critical curve (det A = 0) encloses mean convergence exactly 1."""
    n, d = 801, 0.01
    x, y = L.pixel_grid(n, d, dtype=torch.float64)
    x.requires_grad_(True); y.requires_grad_(True)
    ax, ay = L.sie_deflection(x, y, 1.2, 0.15, -0.05)
    gx = torch.autograd.grad(ax.sum(), (x, y), retain_graph=True)
    gy = torch.autograd.grad(ay.sum(), (x, y))
    axx, axy, ayx, ayy = gx[0], gx[1], gy[0], gy[1]
    kappa = 0.5 * (axx + ayy)
    det = (1 - axx) * (1 - ayy) - axy * ayx
    inside = det < 0
    mean_kappa = (kappa[inside].sum() / inside.sum()).item()
    assert abs(mean_kappa - 1) < 0.01
