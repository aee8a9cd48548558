"""`render(compile=True)`: the collinear vortex kernel fused by `torch.compile` gives the eager kernel's images (to float
rounding), and inductor's compiled code goes to the library's cache unless the user named a folder."""
import os

import numpy as np
import pytest
import torch

from deeplense_fastai import lensing as L
from deeplense_fastai.simulate import draw_parameters, get_preset, render


def test_inductor_cache_in_the_library_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    L._keep_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torchinductor")
    assert (tmp_path / "cache" / "torchinductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))     # the user's choice is kept
    L._keep_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow       # the first compilation takes 15 s or more on a loaded 2-core machine
def test_compiled_vortex_matches_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    called = []
    compiled = L._compiled_collinear_sum
    monkeypatch.setattr(L, "_compiled_collinear_sum", lambda: called.append(1) or compiled())
    for name in ("model_i", "model_ii"):          # two grid sizes: one compilation (dynamic shapes)
        p = get_preset(name)
        prm = draw_parameters(p, np.arange(5), 3, ("axion",))
        eager, fused = render(p, prm), render(p, prm, compile=True)
        assert eager.shape == fused.shape and torch.isfinite(fused).all()
        assert float((fused - eager).abs().max()) <= 1e-5 * float(eager.abs().max()), name
    assert called, "render(compile=True) did not use the compiled collinear kernel"
