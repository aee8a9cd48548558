"""The physical substructure option (issue 22, item 3): `Subhalos`, `tnfw_deflection`, `nfw_physical_to_angle`,
`noise='counts_once'`, the `f_sub_ring` label and the note a custom preset with DeepLenseSim's quirks gets.

Every expected value is rebuilt here from the stated formulas and numbers (typed here, never read from the code under
test) or comes from an outside oracle: lenstronomy's TNFW profile and `LensCosmo.nfw_physical2angle`, astropy's
distances, scipy's distributions and root finder.
"""
import json
import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from deeplense_fastai.lensing import tnfw_deflection, nfw_physical_to_angle, pixel_grid
from deeplense_fastai.simulate import (PRESETS, Nuisance, Preset, Subhalos, add_noise, draw_parameters, get_preset,
                                       lenstronomy_kwargs, render, simulate)
from conftest import deeplense as cli, refused, user_env

N = 4000
P_MIN = 1e-3
# the stated recipe, typed here
N_MEAN, SLOPE, M_RANGE, R_RANGE, RING = (0., 40.), -1.9, (1e8, 1e10), (0.25, 2.0), (0.5, 1.5)
DUFFY = dict(A=5.71, B=-0.084, C=-0.47, M_pivot_h=2e12)      # Duffy et al. 2008, Table 1, NFW full, Delta = 200


@pytest.fixture(scope="module")
def draws():
    return draw_parameters(PRESETS["model_ii_physical"], np.arange(N), seed=3)


# --- the random draws against their stated distributions

def test_subhalo_masses_follow_the_cdm_power_law(draws):
    m = draws["sub_mass"][draws["sub_mass"] > 0]
    a, (lo, hi) = SLOPE + 1, M_RANGE
    cdf = lambda x: (np.clip(x, lo, hi)**a - lo**a) / (hi**a - lo**a)     # dN/dm ~ m^-1.9 on [1e8, 1e10]
    assert stats.kstest(m, cdf).pvalue > P_MIN
    assert stats.kstest(m, lambda x: (x**0.1 - lo**0.1) / (hi**0.1 - lo**0.1)).pvalue < 1e-12   # not DeepLenseSim's -0.9


def test_subhalo_positions_are_uniform_in_area(draws):
    on = draws["sub_mass"] > 0
    r2 = draws["sub_r"][on]**2
    lo, hi = R_RANGE[0]**2, R_RANGE[1]**2
    assert stats.kstest(r2, stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN                  # r^2 uniform
    assert stats.kstest(draws["sub_r"][on], stats.uniform(R_RANGE[0], R_RANGE[1] - R_RANGE[0]).cdf).pvalue < 1e-12
    phi = np.arctan2(draws["sub_x"][on], draws["sub_y"][on])                               # x = r sin, y = r cos
    assert stats.kstest(phi, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > P_MIN
    np.testing.assert_allclose(np.hypot(draws["sub_x"], draws["sub_y"]), draws["sub_r"], rtol=1e-12)


def test_subhalo_count_is_poisson_with_a_mean_drawn_per_image(draws):
    n, mu = draws["n_sub"], draws["sub_mean"]
    lo, hi = N_MEAN
    assert stats.kstest(mu, stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN          # the abundance: uniform per image
    assert abs((n - mu).mean()) < 4 * math.sqrt(mu.mean() / N)                         # given its mean, a Poisson count:
    assert abs(((n - mu)**2).sum() / mu.sum() - 1) < 0.1                               # E[(n - mu)^2] = E[mu]
    k = np.arange(0, 46)                                  # the mixture: (1/40) int_0^40 Poisson(k; mu) dmu = P(k+1, 40) / 40
    pmf = special.gammainc(k + 1, hi) / hi
    observed = np.array([(n == j).sum() for j in k] + [(n > k[-1]).sum()])
    assert stats.chisquare(observed, N * np.append(pmf, 1 - pmf.sum())).pvalue > P_MIN
    assert ((draws["sub_mass"] > 0).sum(1) == n).all()


def test_faithful_draws_unchanged_by_the_subhalos_part():
    a = draw_parameters(PRESETS["model_ii"], np.arange(40), seed=4, classes=("cdm", "axion"))
    b = draw_parameters(get_preset("model_ii", subhalos=Subhalos()), np.arange(40), seed=4, classes=("cdm", "axion"))
    for k in ("source_x", "source_y", "log10_m_axion", "vortex_angle", "exposure"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert "f_sub_ring" not in a and "subhalos" not in PRESETS["model_ii"].to_dict()
    p = PRESETS["fsub_physical"]
    assert Preset.from_dict(json.loads(json.dumps(p.to_dict()))) == p


# --- the truncated NFW profile against lenstronomy's TNFW

TNFW_CASES = [(0.1, 0.02, 1.0, 0.1, -0.2), (0.5, 0.3, 0.6, 0.0, 0.0), (0.02, 0.001, 0.5, 0.3, 0.31),
              (0.8, 0.008, 5.5, -1.2, 0.4), (0.3, 0.05, 0.15, 0.05, 0.05)]


def test_tnfw_matches_lenstronomy():
    pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle")
    from lenstronomy.LensModel.lens_model import LensModel
    x, y = pixel_grid(160, 0.019, dtype=torch.float64)          # 3" field; pixel centres pass close to x = 1 rings
    lm = LensModel(["TNFW"])
    Rs, a, rt, cx, cy = (torch.tensor([[c[j] for c in TNFW_CASES] + [0.]], dtype=torch.float64) for j in range(5))
    for j, (rs, al, r_t, x0, y0) in enumerate(TNFW_CASES):      # one subhalo at a time (the others zero-weighted)
        keep = torch.zeros_like(a)
        keep[0, j] = 1
        ax, ay = tnfw_deflection(x, y, Rs, a * keep, rt, cx, cy)
        lx, ly = lm.alpha(x.numpy().ravel(), y.numpy().ravel(), [dict(Rs=rs, alpha_Rs=al, r_trunc=r_t, center_x=x0, center_y=y0)])
        # lenstronomy floors R at 1e-3 r_s: compare outside that disc (inside it the deflection is < 2% of alpha_Rs)
        far = np.hypot(x.numpy().ravel() - x0, y.numpy().ravel() - y0) > 1e-3 * rs
        peak = np.hypot(lx, ly).max()
        assert np.abs(ax.numpy().ravel() - lx)[far].max() < 1e-5 * peak, j
        assert np.abs(ay.numpy().ravel() - ly)[far].max() < 1e-5 * peak, j
    ax, ay = tnfw_deflection(x, y, Rs, a, rt, cx, cy)           # all at once: the sum, with a zero-padded slot
    lx, ly = LensModel(["TNFW"] * len(TNFW_CASES)).alpha(x.numpy().ravel(), y.numpy().ravel(),
        [dict(Rs=c[0], alpha_Rs=c[1], r_trunc=c[2], center_x=c[3], center_y=c[4]) for c in TNFW_CASES])
    assert np.abs(ax.numpy().ravel() - lx).max() < 1e-5 * np.hypot(lx, ly).max()


def test_tnfw_is_finite_at_the_centre_near_x_1_and_for_padding():
    for dtype in (torch.float32, torch.float64):
        rs = 0.2
        r = torch.tensor([0., 1e-9, rs * (1 - 1e-7), rs, rs * (1 + 1e-7), rs * (1 + 3e-4)], dtype=dtype)
        ax, ay = tnfw_deflection(r[None], 0 * r[None], [[rs, 0.]], [[0.05, 0.]], [[1.0, 0.]], [[0., 0.]], [[0., 0.]])
        assert torch.isfinite(ax).all() and torch.isfinite(ay).all() and ax.dtype == dtype
        assert ax[0, 0, 0] == 0 and (ay == 0).all()
        v = ax[0, 0, 2:5].double()
        assert float(v.max() - v.min()) < 1e-6 * 0.05           # continuous through x = 1
    zero = tnfw_deflection(*pixel_grid(8, 0.3, dtype=torch.float64), [[0., 0.]], [[0., 0.]], [[0., 0.]], [[0., 1.]],
                           [[0., 0.]])
    assert all((z == 0).all() for z in zero)                     # zero-padded (even r_s = 0): exactly nothing


# --- the NFW mass and concentration -> angles conversion

def lensing_constants_ratio():
    """Ours over lenstronomy's alpha_Rs: lenstronomy's constants module has G = 6.67384e-11 (CODATA 2010) and
    M_sun = 1.9891e30 kg; this library and astropy use 6.67430e-11 (CODATA 2018) and 1.98841e30 (IAU 2015)."""
    import lenstronomy.Util.constants as const
    from astropy import constants
    return constants.G.value * constants.M_sun.value / (const.G * const.M_sun)


def test_nfw_conversion_matches_lenstronomy():
    pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle")
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo
    for zl, zs in [(0.5, 1.0), (0.3, 2.0)]:
        lc = LensCosmo(zl, zs, cosmo=FlatLambdaCDM(H0=70, Om0=0.3))
        for m, c in [(1e6, 16.4), (1e8, 11.2), (1e10, 7.6), (1e12, 5.)]:
            rs, a = nfw_physical_to_angle(m, c, zl, zs, 70., 0.3)
            rs_l, a_l = lc.nfw_physical2angle(m, c)
            assert abs(rs / rs_l - 1) < 1e-8
            assert abs(a / a_l - 1) < 5e-4                                   # the constants differ by 2.8e-4
            assert abs(a / a_l / lensing_constants_ratio() - 1) < 1e-8       # and nothing else does


def expected_tnfw_parameters(prm, b, p):
    """(Rs, alpha_Rs, r_trunc) of image b's subhalos rebuilt from their masses: Duffy c200, lenstronomy's conversion,
    the host's critical density (DeepLenseSim's distance convention for model_ii), tau from T(tau) = M200."""
    pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle")
    import _lenstronomy_ref as ref
    from astropy import units as u
    from astropy.constants import G, c as c_light, M_sun
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    n = int(prm["n_sub"][b])
    m = prm["sub_mass"][b, :n]
    conc = DUFFY["A"] * (m / (DUFFY["M_pivot_h"] / 0.7))**DUFFY["B"] * (1 + 0.5)**DUFFY["C"]
    rs, a = LensCosmo(0.5, 1.0, cosmo=cosmo).nfw_physical2angle(m, conc)
    dl, ds, dls = (cosmo.angular_diameter_distance(0.5), cosmo.angular_diameter_distance(1.0),
                   cosmo.angular_diameter_distance(0.5, 1.0))
    k_ang = (np.sqrt(4 * G * M_sun / c_light**2 * dls / (dl * ds)).to(u.dimensionless_unscaled) * u.rad).to(u.arcsec).value
    a = a * lensing_constants_ratio() * (float(ref.mass_to_radius(1.0)) / k_ang)**2
    T = lambda t: t**2 / (t**2 + 1)**2 * ((t**2 - 1) * np.log(t) + t * np.pi - (t**2 + 1))
    tau = np.array([optimize.brentq(lambda t: T(t) - (np.log(1 + ci) - ci / (1 + ci)), 1e-2, 1e4, xtol=1e-14)
                    for ci in conc])
    return rs, a, tau * rs


def test_tnfw_parameters_follow_the_stated_relations():
    p = PRESETS["model_ii_physical"]
    prm = draw_parameters(p, [0, 1, 2], seed=8)
    for b in range(3):
        rs, a, rt = expected_tnfw_parameters(prm, b, p)
        n = len(rs)
        np.testing.assert_allclose(prm["sub_Rs"][b, :n], rs, rtol=1e-8)
        np.testing.assert_allclose(prm["sub_alpha_Rs"][b, :n], a, rtol=1e-7)
        np.testing.assert_allclose(prm["sub_r_trunc"][b, :n], rt, rtol=1e-8)
        assert (prm["sub_alpha_Rs"][b, n:] == 0).all()


# --- the whole image against lenstronomy

def test_physical_cdm_image_matches_lenstronomy():
    pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle")
    pytest.importorskip("astropy", reason="astropy gives DeepLenseSim's distances")
    import _lenstronomy_ref as ref
    from lenstronomy.SimulationAPI.sim_api import SimAPI
    p = PRESETS["model_ii_physical"]
    prm = draw_parameters(p, [0, 1, 2], seed=8)
    ours = render(p, prm, dtype=torch.float64).numpy()
    for b in range(3):
        lk = lenstronomy_kwargs(p, prm, b)
        n = int(prm["n_sub"][b])
        assert lk["lens_model_list"] == ["SIE", "SHEAR"] + ["TNFW"] * n
        main_models, main_kwargs = ref.lens_lists(prm, b)                 # DeepLenseSim's SIE + shear, rebuilt there
        kwargs = main_kwargs[:2] + lk["kwargs_lens"][2:]
        kwargs_model = {"lens_model_list": lk["lens_model_list"], "lens_redshift_list": [ref.Z_LENS] * (2 + n),
                        "source_light_model_list": ["SERSIC_ELLIPSE"], "source_redshift_list": [ref.Z_SOURCE],
                        "cosmo": ref.cosmology(), "z_source_convention": 2.5, "z_source": ref.Z_SOURCE}
        sim = SimAPI(num_pix=ref.NUM_PIX_SIMAPI, kwargs_single_band=dict(ref.EUCLID_VIS_DEEPLENSESIM),
                     kwargs_model=kwargs_model)
        _, src, _ = sim.magnitude2amplitude(None, ref.source_kwargs(prm, b, magnitude=20))
        theirs = sim.image_model_class({"point_source_supersampling_factor": 1}).image(kwargs, src, None)
        assert np.max(np.abs(ours[b] - theirs)) / np.max(np.abs(theirs)) < 1e-6     # FLOAT64_TOL of the oracle tests
    # the subhalos do show: the same draws without them move the image by more than the tolerance
    bare = render(p, {**prm, "cls": np.array(["no_sub"] * 3, dtype=object)}, dtype=torch.float64).numpy()
    assert max(np.abs(ours[b] - bare[b]).max() / np.abs(ours[b]).max() for b in range(3)) > 1e-5


# --- Poisson noise counted once

def test_counts_once_noise_has_poisson_plus_background_variance():
    p = PRESETS["fsub_physical"]
    t, mu, sb = 1000.0, 0.5, p.observation.background_rms                          # exposure s, counts/s per pixel, counts/s
    prm = dict(index=np.arange(4), exposure=np.full(4, t))
    flat = torch.full((4, 64, 64), mu, dtype=torch.float64)
    x = add_noise(p, flat, prm, seed=1).numpy().ravel()                  # 16384 pixels
    n, mean, var = len(x), t * mu, t * mu + (t * sb)**2               # 500 and 600 counts (twice would be 1100)
    assert abs(x.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(x.var(ddof=1) / var - 1) < 4 * math.sqrt(2 / n)
    # without a background the counts are exactly Poisson(t mu): whole numbers, chi-square against scipy's pmf
    q = get_preset(p, background_rms=0.)
    c = add_noise(q, torch.full((4, 64, 64), 0.05, dtype=torch.float64), prm, seed=2).numpy().ravel()
    assert (c == np.round(c)).all()
    k = np.arange(35, 66)
    pmf = stats.poisson(50.).pmf(k)
    observed = np.array([(c == j).sum() for j in k] + [((c < 35) | (c > 65)).sum()])
    assert stats.chisquare(observed, len(c) * np.append(pmf, 1 - pmf.sum())).pvalue > P_MIN


# --- the projected fraction near the ring

def test_f_sub_ring_is_the_projected_fraction_in_the_annulus():
    pytest.importorskip("astropy", reason="astropy gives the distances")
    from astropy import units as u
    from astropy.constants import G, c as c_light
    from astropy.cosmology import FlatLambdaCDM
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    p = PRESETS["model_ii_physical"]
    prm = draw_parameters(get_preset(p, nuisance=Nuisance()), np.arange(300), seed=5)                        # a varied host: theta_E differs per image
    # DeepLenseSim's convention (luminosity distances, D_ls = D_s - D_l, 206265"/rad): pi Sigma_cr D_l^2 per arcsec^2
    dl, ds = cosmo.luminosity_distance(0.5), cosmo.luminosity_distance(1.0)
    sigma_d2 = (c_light**2 * dl * ds / (4 * G * (ds - dl))).to(u.M_sun).value / 206265.**2   # Msun / arcsec^2
    d_a = lambda z1, z2: cosmo.angular_diameter_distance_z1z2(z1, z2)
    scale = (d_a(0.5, 1.0) / d_a(0, 1.0)) / (d_a(0.5, 2.5) / d_a(0, 2.5))     # SimAPI's deflections are defined for z_s = 2.5
    te = prm["theta_E"] * scale.value                                          # the ring the images show: theta_E_eff
    r, m = prm["sub_r"], prm["sub_mass"]
    want = np.array([m[b][(r[b] >= RING[0] * te[b]) & (r[b] < RING[1] * te[b])].sum()
                     / (sigma_d2 * prm["theta_E"][b] * (RING[1] - RING[0]) * te[b]) for b in range(len(te))])
    # the host (SIS) holds M(<theta) = pi Sigma_cr D^2 theta_E theta with its own theta_E; the annulus is around the ring
    np.testing.assert_allclose(prm["f_sub_ring"], want, rtol=1e-3)      # astropy's constants against the library's
    assert (want > 0).mean() > 0.9 and np.corrcoef(want, prm["f_sub"])[0, 1] > 0.5


# --- the note for a custom preset with DeepLenseSim's quirks

def test_custom_preset_with_quirks_gets_one_note(capsys):
    import deeplense_fastai.simulate as sim
    sim._NOTED.clear()                                     # whatever other tests printed before
    simulate(get_preset("model_i", name="mine_quirky"), n=2, classes=("cdm",))
    err = capsys.readouterr().err
    notes = [l for l in err.splitlines() if l.startswith("note:")]
    assert len(notes) == 1 and "mine_quirky" in notes[0]
    for words in ("slope -0.9", "radii uniform in r", "point-mass", "counted twice", "Subhalos()", "counts_once"):
        assert words in notes[0], words
    simulate(Preset(name="mine_plain", classes=("cdm",)), n=1)
    assert "radii uniform in r" in capsys.readouterr().err
    simulate("model_i", n=2, classes=("cdm",))
    simulate("fsub", n=1)
    simulate(get_preset("model_ii", name="mine_physical", subhalos=Subhalos()), n=1, classes=("cdm",))
    assert "note:" not in capsys.readouterr().err


# --- the command line

def test_deeplense_layout_refuses_a_target_it_cannot_hold(tmp_path):
    refused(cli("simulate", "--preset", "fsub_physical", "--format", "deeplense", "--n", 4, "--out", tmp_path / "dl"),
            "f_sub_ring", "native")
    assert not (tmp_path / "dl").exists()


def test_presets_command_lists_the_physical_presets():
    r = cli("presets")
    names = {l.split()[0]: l for l in r.stdout.splitlines()}
    assert r.returncode == 0 and {"model_ii_physical", "fsub_physical"} <= set(names)
    assert all(len(names[k].split(None, 1)) == 2 for k in ("model_ii_physical", "fsub_physical"))


def test_train_on_the_physical_preset_from_the_cli(tmp_path):
    env = user_env(tmp_path, OMP_NUM_THREADS=1)
    r = cli("train", "--preset", "model_ii_physical", "--n", 64, "--epochs", 1, "--arch", "xresnet_small", "--bs", 16,
            "--out", tmp_path / "run", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["targets"] == ["f_sub_ring"]
