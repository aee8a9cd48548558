"""Everything random in the simulator against its analytic distribution or an independent implementation.

- subhalo masses (dN/dm ~ m^-0.9 on [1e6, 1e10] Msun), radii (uniform on [0.25, 2]") and angles: KS tests;
- the subhalo count: always 25 in the DeepLense presets, Poisson(25) in `fsub` (chi-square against the pmf);
- the lens lists: vortex and subhalos rebuilt from the raw draws by DeepLenseSim's recipe (tests/_lenstronomy_ref.py)
  and compared with the lens the package renders; the vortex geometry against the recipe's formula; f_sub against
  the masses in the lens;
- the noise: mean and variance against lenstronomy (`SingleBand.noise_for_model` and its analytic variance, with the
  band numbers frozen in the reference) for Models II/III, and against DeepLenseSim's Model I formula run with
  lenstronomy's `image_util`.
Sample sizes are chosen so the whole file runs in well under a minute on 2 cores; each tolerance is several standard
errors of the statistic it bounds.
"""
import math

import numpy as np
import pytest
import torch

from deeplense_fastai.simulate import PRESETS, add_noise, draw_parameters, labels_frame, lenstronomy_kwargs, render

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy gives the KS and chi-square tests")
pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle for these tests")
pytest.importorskip("astropy", reason="astropy gives DeepLenseSim's distances")
import _lenstronomy_ref as ref  # noqa: E402

P_MIN = 1e-3          # a correct sampler fails one of these tests with probability ~1e-3 each (fixed seeds: never flaky)


@pytest.fixture(scope="module")
def cdm_draws():
    return draw_parameters(PRESETS["model_ii"], np.arange(2000), seed=21, classes=("cdm",))


def test_subhalo_masses_follow_the_power_law(cdm_draws):
    m = cdm_draws["sub_mass"][:, :25].ravel()
    lo, hi, a = 1e6, 1e10, -0.9 + 1                      # dN/dm ~ m^-0.9: CDF (m^a - lo^a) / (hi^a - lo^a)
    cdf = lambda x: (np.clip(x, lo, hi)**a - lo**a) / (hi**a - lo**a)
    assert m.min() >= lo and m.max() <= hi
    assert scipy_stats.kstest(m, cdf).pvalue > P_MIN
    # and a wrong slope is rejected by the same test: the test has power
    wrong = lambda x: (np.clip(x, lo, hi)**0.2 - lo**0.2) / (hi**0.2 - lo**0.2)
    assert scipy_stats.kstest(m, wrong).pvalue < 1e-10


def test_subhalo_radii_and_angles_are_uniform(cdm_draws):
    r, phi = cdm_draws["sub_r"][:, :25].ravel(), cdm_draws["sub_phi"][:, :25].ravel()
    assert scipy_stats.kstest(r, scipy_stats.uniform(0.25, 1.75).cdf).pvalue > P_MIN
    assert scipy_stats.kstest(phi, scipy_stats.uniform(0, 2 * np.pi).cdf).pvalue > P_MIN
    # positions: x = r sin(phi), y = r cos(phi) (DeepLenseSim's make_old_cdm), so |position| is the radius
    x, y = cdm_draws["sub_x"][:, :25].ravel(), cdm_draws["sub_y"][:, :25].ravel()
    np.testing.assert_allclose(np.hypot(x, y), r, rtol=1e-12)


def test_subhalo_count(cdm_draws):
    assert (cdm_draws["n_sub"] == 25).all()              # DeepLenseSim ignores its Poisson draw: always 25
    n = draw_parameters(PRESETS["fsub"], np.arange(20000), seed=3)["n_sub"]
    k = np.arange(12, 40)                                # bins with expected counts >= ~40, tails pooled
    observed = np.array([(n < 12).sum(), *[(n == i).sum() for i in k], (n >= 40).sum()])
    pmf = scipy_stats.poisson(25).pmf(k)
    expected = len(n) * np.array([scipy_stats.poisson(25).cdf(11), *pmf, scipy_stats.poisson(25).sf(39)])
    assert scipy_stats.chisquare(observed, expected).pvalue > P_MIN
    assert abs(n.mean() - 25) < 5 * 5 / math.sqrt(len(n))


def test_axion_mass_and_vortex_angle_distributions():
    prm = draw_parameters(PRESETS["model_ii"], np.arange(5000), seed=4, classes=("axion",))
    assert scipy_stats.kstest(prm["log10_m_axion"], scipy_stats.uniform(-24, 2).cdf).pvalue > P_MIN
    assert scipy_stats.kstest(prm["vortex_angle"], scipy_stats.uniform(0, 2 * np.pi).cdf).pvalue > P_MIN
    src = np.concatenate([prm["source_x"], prm["source_y"]])
    assert scipy_stats.kstest(src, scipy_stats.uniform(-0.35, 0.7).cdf).pvalue > P_MIN


def point_masses(kw):
    """(theta_E, x, y) arrays of the POINT_MASS entries of a lenstronomy kwargs dict."""
    pts = [(k["theta_E"], k["center_x"], k["center_y"]) for m, k in zip(kw["lens_model_list"], kw["kwargs_lens"])
           if m == "POINT_MASS"]
    return np.array(pts).reshape(-1, 3).T


@pytest.mark.parametrize("name", ["model_i", "model_ii"])
def test_lens_lists_rebuilt_from_the_recipe(name):
    """The lens the package renders equals DeepLenseSim's, rebuilt from the raw draws in the reference."""
    p = PRESETS[name]
    prm = draw_parameters(p, np.arange(6), seed=9, classes=("no_sub", "cdm", "axion"))
    for b in range(6):
        ours = lenstronomy_kwargs(p, prm, b)
        models, kwargs = ref.lens_lists(prm, b)
        assert ours["lens_model_list"] == models
        for a, t in zip(ours["kwargs_lens"], kwargs):
            assert a.keys() == t.keys()
            np.testing.assert_allclose([a[k] for k in t], [t[k] for k in t], rtol=1e-7, atol=1e-12)


def test_vortex_geometry():
    """100 equal point masses, evenly spaced on a line through the centre, from -lambda to +lambda with
    lambda = 0.03" * 1e-22 eV / m, total mass 3e10 Msun; and the image changes with the vortex as it should."""
    p = PRESETS["model_ii"]
    prm = draw_parameters(p, np.arange(40), seed=6, classes=("axion",))
    te_unit = ref.mass_to_radius(1.0)
    for b in range(40):
        te, x, y = point_masses(lenstronomy_kwargs(p, prm, b))
        assert len(te) == 100
        half = 0.06 / (2 * 10 ** prm["log10_m_axion"][b]) * 1e-22
        s = np.hypot(x, y) * np.sign(x * np.cos(prm["vortex_angle"][b]) + y * np.sin(prm["vortex_angle"][b]))
        np.testing.assert_allclose(np.sort(s), np.linspace(-half, half, 100), rtol=1e-9, atol=1e-12)
        # collinear, at the drawn angle
        np.testing.assert_allclose(x * np.sin(prm["vortex_angle"][b]) - y * np.cos(prm["vortex_angle"][b]), 0, atol=1e-12)
        np.testing.assert_allclose(np.sum((te / te_unit)**2), 3e10, rtol=1e-6)   # point-mass theta_E^2 is linear in mass
    # the longest vortex (m = 1e-24 eV) is 6" long, the shortest (1e-22 eV) 0.06"
    assert abs(2 * 0.06 / (2 * 1e-24) * 1e-22 - 6) < 1e-12


def test_f_sub_is_the_mass_in_the_lens():
    p = PRESETS["fsub"]
    prm = draw_parameters(p, np.arange(30), seed=2, classes=("no_sub", "cdm", "axion"))
    lab = labels_frame(prm)
    te_unit = ref.mass_to_radius(1.0)
    for b in range(30):
        te, _, _ = point_masses(lenstronomy_kwargs(p, prm, b))
        assert abs(lab.f_sub[b] - np.sum((te / te_unit)**2) / 1e12) < 1e-9
        assert lab.n_sub[b] == (len(te) if lab["class"][b] == "cdm" else 0)
    assert set(lab.f_sub[lab["class"] == "axion"]) == {0.03} and set(lab.f_sub[lab["class"] == "no_sub"]) == {0.0}


def noisy_copies(preset, model, n, exposure):
    """n noise realisations of one noiseless image (H, W) through the package's add_noise, one image index each."""
    batch = dict(index=np.arange(n), exposure=np.full(n, float(exposure)))
    return add_noise(preset, model.expand(n, *model.shape).clone(), batch, seed=17).numpy()


def pooled_moments(samples, model, masks):
    """Per-pixel sample mean and variance over realisations, averaged over each pixel mask."""
    mean, var = samples.mean(0), samples.var(0, ddof=1)
    return [(float((mean - model)[m].mean()), float(var[m].mean())) for m in masks]


@pytest.mark.parametrize("name", ["model_ii", "model_iii"])
def test_ccd_noise_matches_lenstronomy(name):
    from lenstronomy.SimulationAPI.observation_api import SingleBand
    p, band = PRESETS[name], SingleBand(**ref.SIMAPI_BANDS[name])
    prm = draw_parameters(p, [0], seed=3, classes=("no_sub",))
    model = render(p, prm, dtype=torch.float64)[0]
    m = model.numpy()
    n = 400
    ours = noisy_copies(p, model, n, p.observation.exposure[0])
    theirs = np.stack([m + band.noise_for_model(m, seed=i) for i in range(n)])
    # analytic: every pixel's variance is lenstronomy's background_noise^2 + flux_noise(model)^2
    z = (ours - m) / np.sqrt(band.background_noise**2 + band.flux_noise(m)**2)
    assert abs(z.mean()) < 5 / math.sqrt(z.size) and abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)
    # empirical, pixel class by pixel class, against lenstronomy's own noise draws
    masks = [m < 0.01 * m.max(), (m > 0.01 * m.max()) & (m < 0.3 * m.max()), m > 0.3 * m.max()]
    for (om, ov), (tm, tv), mask in zip(pooled_moments(ours, m, masks), pooled_moments(theirs, m, masks), masks):
        se = 5 * math.sqrt(tv / (n * mask.sum()))        # generous: pixels of a class share no realisation
        assert abs(om) < se and abs(tm) < se
        assert abs(ov / tv - 1) < 5 * math.sqrt(2 / (n - 1) / mask.sum()) + 0.01


def test_model_i_noise_matches_deeplensesim_formula():
    p = PRESETS["model_i"]
    prm = draw_parameters(p, [0], seed=3, classes=("no_sub",))
    model = render(p, prm, dtype=torch.float64)[0]
    m, t, n = model.numpy(), 1500.0, 200
    ours = noisy_copies(p, model, n, t)
    theirs = np.stack([ref.model_i_noise(m, t, i) for i in range(n)])
    assert np.array_equal(ours, np.round(ours)) and ours.min() >= 0
    masks = [m < 1e-4 * m.max(), (m > 0.05 * m.max()) & (m < 0.3 * m.max()), m > 0.3 * m.max()]
    for (om, ov), (tm, tv), mask in zip(pooled_moments(ours, t * m, masks), pooled_moments(theirs, t * m, masks), masks):
        se = 5 * math.sqrt(tv / (n * mask.sum()))
        assert abs(om - tm) < 2 * se
        assert abs(ov / tv - 1) < 5 * math.sqrt(2 / (n - 1) / mask.sum()) + 0.02
    # analytic where nothing is clipped: mean t*mu, variance 2 t mu + (t sigma_b)^2 (Gaussian terms + Poisson sampling)
    bright = m > 0.3 * m.max()
    assert abs(ours.mean(0)[bright].mean() / (t * m[bright]).mean() - 1) < 0.01
    assert abs(ours.var(0, ddof=1)[bright].mean() / (2 * t * m[bright] + (t * 0.01)**2).mean() - 1) < 0.03
