"""`render(compile=True)`: the collinear vortex kernel fused by `torch.compile` gives the eager kernel's images (to float
rounding), and inductor's compiled code goes to the library's cache unless the user named a folder; the Sersic source,
computed in place, still gives gradients, with the same bits."""
import os

import numpy as np
import pytest
import torch

from deeplense_fastai import lensing as L
from deeplense_fastai.simulate import draw_parameters, get_preset, render


def test_inductor_cache_in_the_library_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")     # unset for the library, restored (absent) after the test
    L._keep_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torchinductor")
    assert (tmp_path / "cache" / "torchinductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))     # the user's choice is kept
    L._keep_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow       # the first compilation takes 15 s or more on a loaded 2-core machine
def test_compiled_vortex_matches_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
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


@pytest.mark.parametrize("n", [1.0, 2.3, "per_image"])
def test_sersic_gradients_match_the_in_place_values(n):
    """`sersic` writes over its buffers in place unless autograd needs them: with gradients it gives the same bits, and
    its gradients match finite differences (float64)."""
    g = torch.linspace(-1, 1, 17, dtype=torch.float64)
    x, y = g[None, :].expand(17, 17)[None], g[:, None].expand(17, 17)[None]
    idx = torch.tensor([[[1.7]]], dtype=torch.float64) if n == "per_image" else n
    args = dict(amp=2.0, n_sersic=idx, e2=-0.1, center_x=0.02, center_y=0.01)
    plain = L.sersic(x, y, R_sersic=0.3, e1=0.05, **args)
    R, e1 = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.3, 0.05))
    f = lambda R, e1: L.sersic(x, y, R_sersic=R, e1=e1, **args)
    assert torch.equal(f(R, e1).detach(), plain)
    assert torch.autograd.gradcheck(f, (R, e1))
