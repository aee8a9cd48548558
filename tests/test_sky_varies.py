"""The parts that make the sky vary: `Nuisance` (main lens and source drawn per image) and `Knots` (a clumpy source).

Two kinds of oracle, both independent of the code under test:
- lenstronomy renders the same lenses: SimAPI with the Euclid VIS band frozen in tests/_lenstronomy_ref.py, DeepLenseSim's
  point masses rebuilt there, and here the SIE, shear, Sersic disc and GAUSSIAN knots built from the raw per-image draws
  (lenstronomy's GAUSSIAN `amp` is a total flux; the disc's amplitude comes from lenstronomy's own magnitude conversion).
- the draws against the distributions the recipe states, with its numbers typed here (`Nuisance`'s and `Knots`'
  documented ranges), tested with Kolmogorov-Smirnov and chi-square statistics on 20,000 images.
"""
import json

import numpy as np
import pytest
import torch
from scipy import stats

from deeplense_fastai.simulate import PRESETS, draw_parameters, render, simulate, Preset
from conftest import deeplense as cli, user_env

N = 20_000
P_MIN = 1e-3        # a correct sampler fails one of these ~20 tests with probability about 2%


def uniform_ok(x, lo, hi):
    return stats.kstest(np.asarray(x), stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN


@pytest.fixture(scope="module")
def nuisance():
    return draw_parameters(PRESETS["model_ii_nuisance_clumpy"], np.arange(N), seed=3)


def test_nuisance_ranges_are_the_recipes(nuisance):
    te0 = draw_parameters(PRESETS["model_ii"], [0], seed=0)["theta_E"][0]      # the fixed preset's main lens
    prm = nuisance
    assert uniform_ok(prm["theta_E"] / te0, 0.8, 1.2)
    for k, h in [("halo_e1", 0.2), ("halo_e2", 0.2), ("gamma1", 0.08), ("gamma2", 0.08), ("source_e1", 0.25),
                 ("source_e2", 0.25), ("source_dmag", 0.7)]:
        assert uniform_ok(prm[k], -h, h), k
    assert uniform_ok(prm["source_R"], 0.15, 0.40)
    assert uniform_ok(prm["source_n"], 0.7, 2.5)
    # independent draws: no pair of the varied quantities correlates beyond sampling noise (|r| < 4 / sqrt(N))
    keys = ["theta_E", "halo_e1", "halo_e2", "gamma1", "gamma2", "source_R", "source_n", "source_e1", "source_dmag"]
    r = np.corrcoef(np.stack([prm[k] for k in keys]))
    assert np.abs(r[np.triu_indices(len(keys), 1)]).max() < 4 / np.sqrt(N)


def test_fsub_follows_the_host_that_made_the_image():
    p = PRESETS["fsub_nuisance"]
    prm = draw_parameters(p, np.arange(500), seed=1)
    te0 = draw_parameters(PRESETS["fsub"], [0], seed=0)["theta_E"][0]
    host = 1e12 * (prm["theta_E"] / te0) ** 2                                  # M ~ theta_E^2 at fixed redshifts
    np.testing.assert_allclose(prm["f_sub"], prm["sub_mass"].sum(1) / host, rtol=1e-12)


def test_knots_follow_their_distributions(nuisance):
    prm = nuisance
    n = prm["n_knots"]
    counts = np.bincount(n, minlength=9)[2:9]
    assert n.min() == 2 and n.max() == 8 and stats.chisquare(counts).pvalue > P_MIN          # whole numbers 2..8
    assert uniform_ok(prm["knot_fraction"], 0.1, 0.4)
    on = np.arange(8)[None] < n[:, None]
    assert uniform_ok(prm["knot_sigma"][on], 0.02, 0.05)
    np.testing.assert_allclose(prm["knot_weight"].sum(1), 1, rtol=1e-12)
    assert (prm["knot_weight"][~on] == 0).all()
    for k in (3, 6):                                 # Dirichlet(1) of k parts: each weight is Beta(1, k - 1)
        w = prm["knot_weight"][n == k][:, 0]
        assert stats.kstest(w, stats.beta(1, k - 1).cdf).pvalue > P_MIN
    # positions: a circular Gaussian around the source centre whose half-light radius is the disc's R_sersic,
    # so r^2 / (2 sigma^2) with sigma = R / sqrt(2 ln 2) is Exp(1) and the angle is uniform
    dx, dy = prm["knot_x"] - prm["source_x"][:, None], prm["knot_y"] - prm["source_y"][:, None]
    sigma = prm["source_R"][:, None] / np.sqrt(2 * np.log(2))
    z = ((dx**2 + dy**2) / (2 * sigma**2))[on]
    assert stats.kstest(z, stats.expon.cdf).pvalue > P_MIN
    assert uniform_ok(np.arctan2(dy, dx)[on], -np.pi, np.pi)


def test_label_columns_name_every_varied_quantity():
    _, lab = simulate("model_ii_nuisance_clumpy", n=8, seed=0)
    for c in ("theta_E", "halo_e1", "halo_e2", "gamma1", "gamma2", "source_R", "source_n", "source_e1", "source_e2",
              "source_dmag", "n_knots", "knot_fraction"):
        assert c in lab.columns and lab[c].nunique() > 1, c
    _, lab = simulate("model_ii", n=4, seed=0)
    assert "halo_e1" not in lab.columns and "n_knots" not in lab.columns


def test_faithful_draws_unchanged_by_the_parts():
    """The parts draw their uniforms after the faithful ones: the substructure and source position are the same."""
    a = draw_parameters(PRESETS["model_ii"], np.arange(40), seed=4, classes=("cdm", "axion"))
    b = draw_parameters(PRESETS["model_ii_nuisance_clumpy"], np.arange(40), seed=4, classes=("cdm", "axion"))
    for k in ("source_x", "source_y", "log10_m_axion", "vortex_angle", "sub_mass", "sub_r", "sub_phi", "exposure"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_preset_with_parts_round_trips():
    p = PRESETS["model_ii_nuisance_clumpy"]
    assert Preset.from_dict(p.to_dict()) == p
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()          # what a manifest reads back is what was written
    assert Preset.from_dict(PRESETS["model_ii"].to_dict()).nuisance is None


# --- lenstronomy renders the same varied lenses

def lenstronomy_image(prm, b):
    """Noiseless SimAPI image (counts/s) of image b of model_ii_nuisance_clumpy, built from the raw draws."""
    pytest.importorskip("lenstronomy", reason="lenstronomy (a dev dependency) is the oracle")
    pytest.importorskip("astropy", reason="astropy gives DeepLenseSim's distances")
    import _lenstronomy_ref as ref
    return ref.varied_image(prm, b)


@pytest.mark.parametrize("name,cls", [("model_ii_nuisance_clumpy", "axion"), ("model_ii_nuisance_clumpy", "cdm"),
                                      ("model_ii_nuisance_clumpy", "no_sub"), ("model_ii_nuisance", "axion"),
                                      ("model_ii_clumpy", "axion")])
def test_varied_clumpy_lenses_match_lenstronomy(name, cls):
    p = PRESETS[name]
    prm = draw_parameters(p, [0, 1, 2], seed=8, classes=(cls,))
    ours = render(p, prm, dtype=torch.float64).numpy()
    for b in range(3):
        theirs = lenstronomy_image(prm, b)
        assert np.max(np.abs(ours[b] - theirs)) / np.max(np.abs(theirs)) < 1e-6


# --- the user's path: the command line, no TTY, default flags

def test_presets_command_lists_every_world(tmp_path):
    env = user_env(tmp_path)
    r = cli("train", "--preset", "model_ii", "--n", 64, "--target", "halo_e1", env=env)   # refused before simulating
    assert r.returncode == 2 and "--target halo_e1: preset model_ii does not simulate it" in r.stderr
    assert not (tmp_path / "cache" / "sims").exists() or not any((tmp_path / "cache" / "sims").iterdir())
    r = cli("presets")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(PRESETS)
    assert [l.split()[0] for l in lines] == list(PRESETS) and all(len(l.split(None, 1)) == 2 for l in lines)


def test_train_on_a_varied_world_from_the_cli(tmp_path):
    """train --preset model_ii_nuisance_clumpy (fixed and online), then predict writes the OOD columns for its images."""
    env = user_env(tmp_path, OMP_NUM_THREADS=1)
    r = cli("train", "--preset", "model_ii_nuisance_clumpy", "--n", 160, "--epochs", 1, "--arch", "xresnet_small",
            "--bs", 16, "--out", tmp_path / "run", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "ood.safetensors").exists()
    r = cli("simulate", "--preset", "model_ii_nuisance_clumpy", "--n", 8, "--seed", 3, "--out", tmp_path / "sims", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("predict", "--model", tmp_path / "run", tmp_path / "sims", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    header = r.stdout.splitlines()[0].split(",")
    assert header[-3:] == ["ood_score", "ood", "in_prior"] and len(r.stdout.splitlines()) == 9
    r = cli("train", "--preset", "model_ii_nuisance", "--online", "--epoch-size", 64, "--epochs", 1, "--arch",
            "xresnet_small", "--bs", 16, "--target", "theta_E", "--out", tmp_path / "online", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "online" / "config.json").read_text())["targets"] == ["theta_E"]
