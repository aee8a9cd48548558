"""The keyed counter noise stream (`Observation.stream='counter'`, issue 27 item 3): batch-independent images, the same
noise statistics as the per-image generators, the preset's records unchanged by default, and `deeplense simulate
--noise-stream` from a script."""
import json

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import deeplense, ok, refused
from deeplense_fastai.simulate import SimSpec, add_noise, get_preset, make_images, render, simulate

PRESETS = ("model_i", "model_ii", "fsub_physical")        # counts, ccd, counts_once


@pytest.mark.parametrize("name", PRESETS)
def test_counter_images_do_not_depend_on_the_batch(name):
    """The noise of an image is a function of (seed, its global index) only: the same whether it is drawn with the
    whole block, with two others in another order, or alone (`add_noise` itself, since `make_images` always renders
    whole canonical blocks); another seed or index gives other noise."""
    p = get_preset(name, noise_stream="counter", npix=24)
    spec = SimSpec(p, seed=5, classes=("no_sub", "cdm", "axion"))
    prm = spec.draw(np.arange(20, 26))
    model = render(p, prm)
    pick = lambda rows: {k: prm[k][rows] for k in ("index", "exposure")}
    whole = add_noise(p, model, pick(slice(None)), 5)
    for rows in ([4, 1, 3], [2]):
        assert torch.equal(add_noise(p, model[rows], pick(rows), 5), whole[rows])
    assert not torch.equal(add_noise(p, model, pick(slice(None)), 6), whole)
    shifted = {"index": prm["index"] + 1, "exposure": prm["exposure"]}
    assert not torch.equal(add_noise(p, model, shifted, 5), whole)
    m, _ = make_images(spec, 20, 26)
    assert torch.equal(m, whole[:, None] if m.ndim == 4 else whole)


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
