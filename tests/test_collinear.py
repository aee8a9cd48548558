"""The closed form for a row of equal, evenly spaced point masses (digamma functions) against the direct K-point sum.

The reference is `collinear_point_mass_deflection` in float64 (itself checked against the generic point-mass kernel and
lenstronomy elsewhere). In float64 the closed form agrees to about 1e-13 of the peak deflection; in float32 (what the
simulator runs) its error is the direct float32 sum's: about 1e-7 of the peak away from the masses, and near a mass both
are limited by the rounding of the pixel's position (relative error about eps |z| / distance, z in spacings), not by
the formula. The bounds below are those, with margin.
"""
import math

import numpy as np
import pytest
import torch

from deeplense_fastai.lensing import collinear_point_mass_deflection, evenly_spaced_point_mass_deflection, pixel_grid


def _row(rng, B, K):
    "Random rows: half-lengths 0.02-2.5 arcsec, any angle, centres off the origin by up to 0.6 arcsec (B,), offsets (B, K)."
    L, ang, c0 = rng.uniform(0.02, 2.5, B), rng.uniform(-math.pi, math.pi, B), rng.uniform(-0.6, 0.6, B)
    h = 2 * L / max(K - 1, 1)
    start = c0 - L
    return start, h, ang, start[:, None] + h[:, None] * np.arange(K)[None]


def _err(got, ref):
    "Largest deviation, over both components, relative to the peak deflection."
    pk = float(torch.hypot(*ref).max())
    return max(float((g.double() - r).abs().max()) for g, r in zip(got, ref)) / pk


@pytest.mark.parametrize("K", [1, 2, 3, 7, 19, 20, 64, 100, 101, 300])
def test_closed_form_matches_sum_on_images(K):
    rng = np.random.default_rng(K)
    start, h, ang, t = _row(rng, 4, K)
    for npix, scale in ((150, 0.101), (64, 0.08)):      # Model I and Model II grids
        x, y = pixel_grid(npix, scale, dtype=torch.float64)
        ref = collinear_point_mass_deflection(x, y, 0.02, t, ang)
        assert _err(evenly_spaced_point_mass_deflection(x, y, 0.02, start, h, K, ang), ref) < 1e-12
        got32 = evenly_spaced_point_mass_deflection(x.float(), y.float(), 0.02, start, h, K, ang)
        old32 = collinear_point_mass_deflection(x.float(), y.float(), 0.02, t, ang)
        assert _err(got32, ref) < 2 * _err(old32, ref) + 5e-7, (_err(got32, ref), _err(old32, ref))


@pytest.mark.parametrize("K", [2, 7, 100, 101])
def test_closed_form_near_the_line_and_the_masses(K):
    """Pixels on the line between masses, 1/100 of a spacing from a mass (along and across), just off the line, and far."""
    rng = np.random.default_rng(100 + K)
    start, h, ang, t = _row(rng, 3, K)
    for b in range(3):
        s = np.concatenate([np.linspace(-6, 6, 601), t[b] + 0.01 * h[b], t[b] + 0.5 * h[b], t[b] - 0.3 * h[b]])
        for dv, tol64, tol32 in ((0., 1e-10, 2e-5), (0.01 * h[b], 1e-10, 2e-5), (1e-3, 1e-10, 1e-4), (0.4, 1e-12, 1e-6),
                                 (50., 1e-12, 1e-6)):
            x = torch.tensor(s * math.cos(ang[b]) - dv * math.sin(ang[b]))[None]
            y = torch.tensor(s * math.sin(ang[b]) + dv * math.cos(ang[b]))[None]
            ref = collinear_point_mass_deflection(x, y, 0.03, t[b:b + 1], ang[b:b + 1])
            got = evenly_spaced_point_mass_deflection(x, y, 0.03, start[b], h[b], K, ang[b])
            assert _err(got, ref) < tol64, (b, dv, _err(got, ref))
            # float32: against the float64 sum at the same (rounded) positions, as close as the direct float32 sum
            x32, y32 = x.float(), y.float()
            ref = collinear_point_mass_deflection(x32.double(), y32.double(), 0.03, t[b:b + 1], ang[b:b + 1])
            got = evenly_spaced_point_mass_deflection(x32, y32, 0.03, start[b], h[b], K, ang[b])
            old = collinear_point_mass_deflection(x32, y32, 0.03, t[b:b + 1], ang[b:b + 1])
            assert all(torch.isfinite(g).all() for g in got)
            assert _err(got, ref) < max(tol32, 2 * _err(old, ref)), (b, dv, _err(got, ref), _err(old, ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pixel_on_a_mass_stays_finite(dtype):
    """Exactly on a mass the deflection is finite: that mass drops out (the others remain), as in the direct sum."""
    x = torch.tensor([[-0.5, 0.0, 0.3, 0.5]], dtype=dtype)   # masses at -0.5, -0.4, ..., 0.5 on the x axis
    y = torch.zeros_like(x)
    got = evenly_spaced_point_mass_deflection(x, y, 0.02, -0.5, 0.1, 11, 0.)
    t = (-0.5 + 0.1 * torch.arange(11, dtype=torch.float64))[None]      # the masses as the closed form places them
    ref = collinear_point_mass_deflection(x, y, 0.02, t, torch.zeros(1))
    for g, r in zip(got, ref):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-7)


def test_arguments_broadcast_and_reversed_spacing():
    """Per-image or shared arguments; a negative spacing describes the same row walked backwards."""
    x, y = pixel_grid(32, 0.1, dtype=torch.float64)
    a = evenly_spaced_point_mass_deflection(x, y, torch.tensor([0.02, 0.03]), -1.0, 0.02, 101, torch.tensor([0.3, 1.0]))
    b = evenly_spaced_point_mass_deflection(x, y, torch.tensor([0.02, 0.03]), 1.0, -0.02, 101, torch.tensor([0.3, 1.0]))
    assert a[0].shape == (2, 32, 32)
    for p, q in zip(a, b): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError): evenly_spaced_point_mass_deflection(x, y, 0.02, 0., 0., 5, 0.)


def test_theta_E_per_image_with_a_shared_row():
    """theta_E per image (B,) beside a start, spacing and angle shared by every image: each image is its own sum."""
    x, y = pixel_grid(24, 0.1, dtype=torch.float64)
    te = torch.tensor([0.01, 0.02, 0.04], dtype=torch.float64)
    got = evenly_spaced_point_mass_deflection(x, y, te, -0.5, 0.01, 101, 0.3)
    t = (-0.5 + 0.01 * torch.arange(101, dtype=torch.float64))[None].repeat(3, 1)
    ref = collinear_point_mass_deflection(x, y, te, t, torch.full((3,), 0.3, dtype=torch.float64))
    assert got[0].shape == (3, 24, 24)
    assert _err(got, ref) < 1e-10
