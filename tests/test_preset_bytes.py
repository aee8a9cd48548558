"""The DeepLenseSim-faithful presets keep making the same images and labels.

tests/data/preset_fingerprints.json was written by the code of commit af33a1a (before presets gained the nuisance and
clumpy-source parts): for every preset registered then, 24 images (seed 7, indices 5..28) with the preset's own classes
and with all three, each image's pixel sum, sum of squares and 8 probe pixels, and the full label table. A change to
the simulator that moves a faithful preset's images or labels fails here. Float sums are compared to 1e-6 relative
(CPU kernels may round differently on another instruction set); images of whole counts may differ by a flip or two of
one count (`_same_counts` says why). `to_dict` holds each preset's dictionary as that code wrote it
into manifests and run records: datasets written then must still be recognised as the same dataset.
tests/data/preset_fingerprints_parts.json holds the same fingerprints of the presets added since (the nuisance, clumpy
and physical ones), written by the code of commit 5c15fe9, before presets were composed of parts.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeplense_fastai.simulate import simulate

FROZEN = json.loads((Path(__file__).parent / "data" / "preset_fingerprints.json").read_text())
LATER = json.loads((Path(__file__).parent / "data" / "preset_fingerprints_parts.json").read_text())
assert all(LATER[k] == FROZEN[k] for k in ("n", "seed", "start", "probes"))     # one protocol for both files
WANT = {**FROZEN["presets"], **LATER["presets"]}


@pytest.mark.parametrize("key", sorted(WANT))
def test_faithful_preset_unchanged(key):
    name, tag = key.split("/")
    want = WANT[key]
    classes = None if tag == "default" else ("no_sub", "cdm", "axion")
    imgs, lab = simulate(name, n=FROZEN["n"], seed=FROZEN["seed"], start=FROZEN["start"], classes=classes)
    x = imgs[:, 0].double().numpy()
    probes = np.stack([x[:, i, j] for i, j in FROZEN["probes"]], 1)
    if np.array_equal(x, np.round(x)): _same_counts(key, x, probes, want)
    else:
        np.testing.assert_allclose(x.sum((1, 2)), want["sums"], rtol=1e-6, err_msg=f"{key}: image sums moved")
        np.testing.assert_allclose((x**2).sum((1, 2)), want["sumsq"], rtol=1e-6, err_msg=f"{key}: image powers moved")
        np.testing.assert_allclose(probes, want["probes"], rtol=1e-5, atol=1e-9, err_msg=f"{key}: pixels moved")
    old = pd.DataFrame(want["labels"]["data"], columns=want["labels"]["columns"])
    assert list(lab.columns) == list(old.columns), f"{key}: label columns changed"
    for c in old.columns:
        if c == "class": assert list(lab[c]) == list(old[c]), f"{key}: {c} changed"
        else: np.testing.assert_allclose(lab[c].astype(float), old[c].astype(float), rtol=1e-12, err_msg=f"{key}: {c}")


FLIPS = 2    # single counts the 24 fingerprinted images together may gain or lose on another CPU


def _same_counts(key, x, probes, want):
    """Images of whole counts (Model I's Poisson noise): the same up to a rounding flip or two.

    A Poisson draw compares a uniform number against the rate's cumulative probabilities; when another instruction set
    rounds a pixel's rate differently in its last bit, a draw that sat on a boundary comes out one count apart (seen:
    one pixel of 301 counts read 302 on an AMD EPYC, against the Intel Xeon that wrote the file). So the 24 images
    together may differ by at most FLIPS single counts: their sums by FLIPS in all, each sum of squares by what its
    flips could give at its brightest pixel, each probe pixel by at most one count. A changed recipe moves far more than that."""
    ds = np.abs(x.sum((1, 2)) - np.array(want["sums"]))
    dq = np.abs((x**2).sum((1, 2)) - np.array(want["sumsq"]))
    assert ds.sum() <= FLIPS, f"{key}: image sums moved by {ds.sum():g} counts in all"
    assert (dq <= FLIPS * (2 * x.max((1, 2)) + 1)).all(), f"{key}: image powers moved by {dq.max():g}"
    assert (np.abs(probes - np.array(want["probes"])) <= 1).all(), f"{key}: pixels moved by more than one count"


@pytest.mark.parametrize("name", sorted(FROZEN["to_dict"]))
def test_faithful_preset_records_unchanged(name):
    """A manifest written before the parts existed names the same preset: resuming or verifying it is not refused."""
    from deeplense_fastai.simulate import PRESETS, Preset
    assert PRESETS[name].to_dict() == FROZEN["to_dict"][name]
    assert Preset.from_dict(FROZEN["to_dict"][name]) == PRESETS[name]
