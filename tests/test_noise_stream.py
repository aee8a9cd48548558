"""The keyed counter noise stream (`Observation.stream='counter'`, issue 27 item 3): batch-independent images, the same
noise statistics as the per-image generators, the preset's records unchanged by default, and `deeplense simulate
--noise-stream` from a script."""
import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import deeplense, ok, refused
from deeplense_fastai.simulate import SimSpec, get_preset, make_images, simulate

PRESETS = ("model_i", "model_ii", "fsub_physical")        # counts, ccd, counts_once


@pytest.mark.parametrize("name", PRESETS)
def test_counter_images_do_not_depend_on_the_batch(name):
    p = get_preset(name, noise_stream="counter", npix=24)
    spec = SimSpec(p, seed=5, classes=("no_sub", "cdm", "axion"))
    whole, _ = make_images(spec, 0, 9)
    parts = torch.cat([make_images(spec, a, b)[0] for a, b in ((0, 2), (2, 7), (7, 9))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, make_images(SimSpec(p, seed=6, classes=spec.classes), 0, 9)[0])


def expected_var(noise, mu, t, bg):
    "Each pixel's noise variance by the recipe (lensing's Noise section), in the image's units, where mu > 0."
    if noise == "counts": return 2 * t * mu + (t * bg) ** 2            # a Gaussian of variance t*mu, then Poisson again
    if noise == "counts_once": return t * mu + (t * bg) ** 2
    return bg ** 2 + mu / t                                            # ccd, counts per second


@pytest.mark.parametrize("name", PRESETS)
def test_counter_noise_has_the_generators_statistics(name):
    """Same noiseless images, two random sources: the residuals (noisy - noiseless) of the counter stream and of torch's
    per-image generators come from one distribution (two-sample KS, on the bright tenth of the pixels and on the rest),
    and on the bright pixels, divided by the recipe's standard deviation, both have unit variance."""
    res = {}
    for stream in ("generator", "counter"):
        p = get_preset(name, noise_stream=stream, npix=48)
        imgs, lab = simulate(p, n=48, seed=1, classes=("no_sub",))
        clean, _ = simulate(p, n=48, seed=1, classes=("no_sub",), noise=False)
        mu = clean[:, 0].double().numpy() / p.observation.noiseless_scale
        t = lab["exposure"].to_numpy()[:, None, None] * np.ones_like(mu)
        scale = t if p.observation.noise != "ccd" else 1.0
        res[stream] = (imgs[:, 0].double().numpy() - mu * scale, mu, t, p.observation)
    (a, mu, t, obs), (b, mu2, _, _) = res["generator"], res["counter"]
    np.testing.assert_array_equal(mu, mu2)                                  # the same noiseless images
    bright = mu > np.quantile(mu, 0.9)
    for where in (bright, ~bright):
        assert stats.ks_2samp(a[where], b[where]).pvalue > 1e-3, name
    sd = np.sqrt(expected_var(obs.noise, mu[bright], t[bright], obs.background_rms))
    for r in (a, b):
        v = (r[bright] / sd).var()
        assert abs(v - 1) < 5 * np.sqrt(2 / bright.sum()), (name, v)


def test_default_records_unchanged_counter_recorded():
    p = get_preset("model_i")
    assert "noise_stream" not in p.to_dict() and "noise_stream" not in p.legacy_repr()
    q = p.replace(noise_stream="counter")
    assert q.observation.stream == "counter" and q.to_dict()["noise_stream"] == "counter"
    assert type(p).from_dict(q.to_dict()) == q and q.legacy_repr() != p.legacy_repr()
    with pytest.raises(Exception, match="stream"):
        p.replace(noise_stream="philox")


def test_cli_simulate_noise_stream(tmp_path):
    out = tmp_path / "ds"
    ok(deeplense("simulate", "--preset", "model_i", "--n", 6, "--out", out, "--noise-stream", "counter"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["preset"]["noise_stream"] == "counter"
    want, _ = simulate(get_preset("model_i", noise_stream="counter"), n=6, seed=m["seed"])
    np.testing.assert_array_equal(np.load(out / "images.npy"), want.numpy())
    refused(deeplense("simulate", "--preset", "model_i", "--n", 6, "--out", tmp_path / "x", "--noise-stream", "mt"),
            "--noise-stream")
    assert not (tmp_path / "x").exists()
