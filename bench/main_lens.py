"""The main lens per image (issue 27 item 4): the presets with a `Nuisance` part against the cached field.

    OMP_NUM_THREADS=1 python bench/main_lens.py --rounds 15 --reps 3 --compile     # bench/results/main_lens.json
    OMP_NUM_THREADS=1 python bench/main_lens.py [--rounds 9] [--block 16] [--json PATH]

The faithful presets (model_i, model_ii) compute the main lens's deflection (SIE plus external shear) once per preset
and keep it; the like-for-like presets with a `Nuisance` part (model_i_nuisance, model_ii_nuisance) draw theta_E, the
SIE's ellipticity and the shear per image, so every image computes its own. This bench times, on one thread:

- `make_images` for one canonical block (16 images on a CPU) of each faithful preset (the cached field) and of its
  nuisance twin, the latter twice: with the library's per-image main lens ('after': `lensing.sie_shear_deflection`,
  one pass, half the rows of the point-symmetric grid, the shear added in place, the arrays handed to `render`
  without a copy) and with the kernel it replaced ('before': a copy below of the earlier `sie_deflection`, `_lens_field`
  and `render`, swapped in for the call), for the classes no_sub, axion and cdm;
- the stages of the nuisance block's path: parameter draws, the main lens before and after (and the SIE alone, both
  forms), the cached field's copy, the Sersic source (per-image shape, and the faithful presets' one shape; each also
  as it was before it was computed in place, 'before in place': a copy below; the images are checked bit-identical),
  the PSF and the noise;
- with --compile, also the same main-lens arithmetic fused by `torch.compile` (not in the library: measured to see
  whether it pays; its one-off compilation time is reported; cache in .cache/torchinductor, an ignored folder).

Rounds are interleaved (each round times every variant once, as the best of --reps calls); the figures are the medians
over rounds of the times and of the per-round ratios (the machine is shared and noisy: only ratios from one run
compare). 'before' and 'after' are checked to agree (largest absolute difference of the deflections and of the images).
"""
import argparse
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch

from _results import ROOT, save

PAIRS = (("model_ii", "model_ii_nuisance"), ("model_i", "model_i_nuisance"))
CLASSES = ("no_sub", "axion", "cdm")


# ---- the kernel before this change (deeplense_fastai 0.1.0 as of commit 3255ce0), kept only as the 'before' side ----
_SIS_EPS = 1e-3


def _atan_over(s, u):
    small = s < _SIS_EPS
    s_safe = torch.where(small, torch.ones_like(s), s)
    return torch.where(small, u * (1 - (s * u)**2 / 3), torch.atan(s_safe * u) / s_safe)


def _atanh_over(s, u):
    small = s < _SIS_EPS
    s_safe = torch.where(small, torch.ones_like(s), s)
    return torch.where(small, u * (1 + (s * u)**2 / 3), torch.atanh(s_safe * u) / s_safe)


def old_sie_deflection(x, y, theta_E, e1=0., e2=0., center_x=0., center_y=0.):
    from deeplense_fastai.lensing import _bc, ellipticity_to_phi_q, to_lens_frame, from_lens_frame
    phi, q = ellipticity_to_phi_q(_bc(e1, x), _bc(e2, x))
    xr, yr = to_lens_frame(x, y, _bc(center_x, x), _bc(center_y, x), phi)
    psi = torch.sqrt(q**2 * xr**2 + yr**2).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
    s = torch.sqrt((1 - q**2).clamp_min(0))
    b = _bc(theta_E, x) * torch.sqrt(q)
    ax_r, ay_r = b * _atan_over(s, xr / psi), b * _atanh_over(s, yr / psi)
    return from_lens_frame(ax_r, ay_r, phi)


def old_lens_field(p, params, device, dtype):
    from deeplense_fastai.lensing import pixel_grid, shear_deflection
    from deeplense_fastai.simulate import _macro_field
    if p.nuisance is None: return _macro_field(p, device, dtype)
    i = p.instrument
    x, y = pixel_grid(i.npix, i.pixel_scale, i.supersample, device=device, dtype=torch.float64)
    T = lambda k: torch.as_tensor(np.asarray(params[k], dtype=np.float64), device=device)
    ax, ay = old_sie_deflection(x, y, T('theta_E'), T('halo_e1'), T('halo_e2'))
    sx, sy = shear_deflection(x, y, T('gamma1'), T('gamma2'))
    return tuple(t.to(dtype) for t in (x, y, ax + sx, ay + sy))


def old_render(preset, params, device=None, dtype=None, compile=False):
    from deeplense_fastai.lensing import ray_shoot, downsample, convolve_psf
    from deeplense_fastai.simulate import _add_substructure, _source_light, preset_physics
    p, dtype = preset, dtype or torch.float32
    x, y, mx, my = old_lens_field(p, params, device, dtype)
    B = len(params['index'])
    T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device).to(dtype)
    ax, ay = mx.expand(B, *mx.shape[-2:]).clone(), my.expand(B, *my.shape[-2:]).clone()
    _add_substructure(p, params, x, y, ax, ay, T, compile)
    phys = preset_physics(p)
    bx, by = ray_shoot(x, y, ax, ay, phys['deflection_scale'])
    i = p.instrument
    img = downsample(_source_light(p, params, bx, by, T), i.supersample)
    img = convolve_psf(img, i.psf_fwhm, i.pixel_scale, i.psf_truncation)
    return img * phys['pixel_area']
# ---- end of the earlier kernel ----


# ---- the Sersic source before it was computed in place (as of commit 3255ce0 too), the 'before' of its stage ----
def old_sersic(x, y, amp, R_sersic, n_sersic, e1=0., e2=0., center_x=0., center_y=0.):  # noqa: PLR0913
    from deeplense_fastai.lensing import _b_n, _bc, ellipticity_to_phi_q, to_lens_frame
    phi, q = ellipticity_to_phi_q(_bc(e1, x), _bc(e2, x))
    xr, yr = to_lens_frame(x, y, _bc(center_x, x), _bc(center_y, x), phi)
    R = torch.sqrt(q * xr**2 + yr**2 / q).clamp_min(1e-4)
    frac = R / _bc(R_sersic, x).clamp_min(1e-4)
    if torch.is_tensor(n_sersic) and n_sersic.ndim:
        n = _bc(n_sersic, x)
        return _bc(amp, x) * torch.exp(-_b_n(n) * (frac ** (1 / n) - 1))
    n = float(n_sersic)
    return _bc(amp, x) * torch.exp(-_b_n(n) * ((frac if n == 1 else frac ** (1 / n)) - 1))


def with_old_sersic(f):
    "`f` run with the earlier Sersic source swapped in."
    def g():
        from deeplense_fastai import lensing as L
        saved = L.sersic
        L.sersic = old_sersic
        try: return f()
        finally: L.sersic = saved
    return g
# ---- end of the earlier Sersic source ----


@contextmanager
def before():
    "`make_images` with the earlier per-image main lens and render swapped in."
    from deeplense_fastai import simulate as S
    saved = S.render
    S.render = old_render
    try: yield
    finally: S.render = saved


def best(f, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def before_call(f):
    "`f` run with the earlier kernel."
    def g():
        with before(): return f()
    return g


def image_variants(block):
    "name -> callable: make_images of one block, per (pair, class), cached / before / after."
    from deeplense_fastai.simulate import SimSpec, make_images
    out = {}
    for faithful, nuisance in PAIRS:
        for c in CLASSES:
            cached, varied = SimSpec(faithful, 0, (c,)), SimSpec(nuisance, 0, (c,))
            out[(faithful, c, "cached")] = lambda s=cached: make_images(s, 0, block)
            out[(faithful, c, "before")] = before_call(lambda s=varied: make_images(s, 0, block))
            out[(faithful, c, "after")] = lambda s=varied: make_images(s, 0, block)
    return out


def stage_variants(name, block):
    "name -> callable: the stages of one block of preset `name`'s per-image path (no_sub), and the cached field's copy."
    from deeplense_fastai import lensing as L
    from deeplense_fastai import simulate as S
    p = S.get_preset(name)
    f = S.get_preset(name.replace("_nuisance", ""))
    prm, fprm = S.draw_parameters(p, np.arange(block), 0, ("no_sub",)), S.draw_parameters(f, np.arange(block), 0)
    i = p.instrument
    x, y = L.pixel_grid(i.npix, i.pixel_scale, i.supersample, dtype=torch.float64)
    T = lambda k: torch.as_tensor(prm[k])
    Tf = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)).float()
    xs, ys, ax, ay = S._lens_field(p, prm, None, torch.float32)
    bx, by = L.ray_shoot(xs, ys, ax, ay, S.preset_physics(p)["deflection_scale"])
    img = S._source_light(p, prm, bx, by, Tf)
    model = L.convolve_psf(img, i.psf_fwhm, i.pixel_scale, i.psf_truncation) * S.preset_physics(p)["pixel_area"]
    _, _, mx, my = S._lens_field(f, fprm, None, torch.float32)
    return {
        "parameter draws": lambda: S.draw_parameters(p, np.arange(block), 0, ("no_sub",)),
        BEFORE: lambda: old_lens_field(p, prm, None, torch.float32),
        AFTER: lambda: S._lens_field(p, prm, None, torch.float32),
        "SIE alone before": lambda: old_sie_deflection(x, y, T("theta_E"), T("halo_e1"), T("halo_e2")),
        "SIE alone after": lambda: L.sie_deflection(x, y, T("theta_E"), T("halo_e1"), T("halo_e2")),
        "shear alone": lambda: L.shear_deflection(x, y, T("gamma1"), T("gamma2")),
        "cached field: its copy per block": lambda: (mx.expand(block, *mx.shape).clone(),
                                                     my.expand(block, *my.shape).clone()),
        "ray shooting": lambda: L.ray_shoot(xs, ys, ax, ay, S.preset_physics(p)["deflection_scale"]),
        SERSIC_AFTER: lambda: S._source_light(p, prm, bx, by, Tf),
        SERSIC_BEFORE: with_old_sersic(lambda: S._source_light(p, prm, bx, by, Tf)),
        "Sersic source (faithful: one shape)": lambda: S._source_light(f, fprm, bx, by, Tf),
        "Sersic source (faithful: one shape) before in place": with_old_sersic(lambda: S._source_light(f, fprm, bx, by,
                                                                                                   Tf)),
        "PSF": lambda: L.convolve_psf(img, i.psf_fwhm, i.pixel_scale, i.psf_truncation),
        "noise": lambda: S.add_noise(p, model, prm, 0),
    }


def compiled_main_lens(name, block):
    "A callable of the main lens with its rows fused by `torch.compile` (mirrored in eager), and the compile seconds."
    from deeplense_fastai import lensing as L
    from deeplense_fastai import simulate as S
    p = S.get_preset(name)
    prm = S.draw_parameters(p, np.arange(block), 0, ("no_sub",))
    x, y, _, _ = S._grid(p.instrument, None, torch.float32)
    h, n = (x.shape[-2] + 1) // 2, x.shape[-2]
    args = [torch.as_tensor(prm[k]) for k in ("theta_E", "halo_e1", "halo_e2", "gamma1", "gamma2")]

    def rows(xh, yh, te, e1, e2, g1, g2):
        at, ath, cc, cs = L._sie_frame(xh, yh, te, e1, e2)
        g1, g2 = L._bc(g1, xh), L._bc(g2, xh)
        ax = (at * cc).addcmul_(ath, cs, value=-1).addcmul_(xh, g1).addcmul_(yh, g2)
        ay = (at * cs).addcmul_(ath, cc).addcmul_(xh, g2).addcmul_(yh, g1, value=-1)
        return ax.float(), ay.float()
    fused = torch.compile(rows, dynamic=False)
    t0 = time.perf_counter()
    fused(x[:h], y[:h], *args)
    seconds = time.perf_counter() - t0

    def call():
        ax, ay = fused(x[:h], y[:h], *args)
        return tuple(torch.cat([a, a[..., :n - h, :].flip((-2, -1)).neg_()], -2) for a in (ax, ay))
    want = S._lens_field(p, prm, None, torch.float32)[2:]
    diff = max(float((a - b).abs().max()) for a, b in zip(call(), want))
    return call, round(seconds, 1), diff


def rounds(variants, n, reps):
    "Each variant called once, then `n` interleaved rounds: {key: [seconds per round]}."
    for f in variants.values(): f()
    times = {k: [] for k in variants}
    for _ in range(n):
        for k, f in variants.items(): times[k].append(best(f, reps))
    return times


def agreement(block):
    "Largest absolute differences between before and after: the nuisance deflections (float64) and images."
    from deeplense_fastai import simulate as S
    out = {}
    for _, name in PAIRS:
        p = S.get_preset(name)
        prm = S.draw_parameters(p, np.arange(block), 0)
        old, new = old_lens_field(p, prm, None, torch.float64), S._lens_field(p, prm, None, torch.float64)
        out[f"{name} deflection, float64, arcsec"] = max(float((a - b).abs().max()) for a, b in zip(old[2:], new[2:]))
        spec = S.SimSpec(name, 0, CLASSES)
        with before(): a = S.make_images(spec, 0, block)[0]
        b = S.make_images(spec, 0, block)[0]
        out[f"{name} images, relative to the brightest pixel"] = float((a - b).abs().max() / a.abs().max())
        a, b = with_old_sersic(lambda: S.render(p, prm))(), S.render(p, prm)
        out[f"{name} images with the Sersic source before and after in place: bit-identical"] = bool(torch.equal(a, b))
    return out


def med(v): return float(np.median(v))


def image_rows(times, block):
    "One row per (preset pair, class): ms per image of each variant and the medians of the per-round ratios."
    rows = []
    for faithful, nuisance in PAIRS:
        for c in CLASSES:
            t = {v: np.array(times[(faithful, c, v)]) for v in ("cached", "before", "after")}
            rows.append(dict(preset=faithful, nuisance_preset=nuisance, cls=c,
                             cached_ms_per_image=round(1e3 * med(t["cached"]) / block, 4),
                             before_ms_per_image=round(1e3 * med(t["before"]) / block, 4),
                             after_ms_per_image=round(1e3 * med(t["after"]) / block, 4),
                             before_over_cached=round(med(t["before"] / t["cached"]), 3),
                             after_over_cached=round(med(t["after"] / t["cached"]), 3),
                             before_over_after=round(med(t["before"] / t["after"]), 3)))
    return rows


def stage_rows(name, times, block):
    return [dict(preset=name, stage=k, ms_per_block=round(1e3 * med(v), 4), ms_per_image=round(1e3 * med(v) / block, 5))
            for k, v in times.items()]


BEFORE, AFTER = "main lens before (SIE + shear, (B, H, W) float64)", "main lens after (sie_shear_deflection)"
COMPILED = "main lens, torch.compile of the same arithmetic"
SERSIC_BEFORE, SERSIC_AFTER = "Sersic source (per-image shape) before in place", "Sersic source (per-image shape)"


def lens_ratios(times):
    "Medians of the per-round ratios of the main-lens stages: before / after, and compiled / after where timed."
    t = {k: np.array(v) for k, v in times.items()}
    out = dict(before_over_after=round(med(t[BEFORE] / t[AFTER]), 2),
               sersic_before_over_after=round(med(t[SERSIC_BEFORE] / t[SERSIC_AFTER]), 2))
    if COMPILED in t: out["compiled_over_after"] = round(med(t[COMPILED] / t[AFTER]), 2)
    return out


def verdict(rows):
    "Is the like-for-like path as fast as the cached one? The worst and best per-image-over-cached ratio, after."
    r = [row["after_over_cached"] for row in rows]
    gap = [row["after_ms_per_image"] - row["cached_ms_per_image"] for row in rows]
    return dict(target="make_images per image with a Nuisance part as fast as the faithful preset's (cached field)",
                met=bool(max(r) <= 1.0), after_over_cached_min=min(r), after_over_cached_max=max(r),
                missed_by_ms_per_image_max=round(max(gap), 4),
                before_over_cached_max=max(row["before_over_cached"] for row in rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=2, help="calls per variant and round (the best is kept)")
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile", action="store_true", help="also time the main lens fused by torch.compile")
    a = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1": print("note: run with OMP_NUM_THREADS=1", file=sys.stderr)
    torch.set_num_threads(1)
    agree = agreement(a.block)
    print("agreement", agree, flush=True)
    rows = image_rows(rounds(image_variants(a.block), a.rounds, a.reps), a.block)
    for r in rows: print(r, flush=True)
    stages, compiled, lens = [], {}, {}
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "torchinductor"))
    for _, name in PAIRS:
        variants = stage_variants(name, a.block)
        if a.compile:
            f, secs, diff = compiled_main_lens(name, a.block)
            variants[COMPILED] = f
            compiled[name] = dict(compile_seconds=secs, largest_difference_from_eager=diff)
        times = rounds(variants, a.rounds, a.reps)
        stages += stage_rows(name, times, a.block)
        lens[name] = lens_ratios(times)
    for r in stages: print(r, flush=True)
    v = verdict(rows)
    print(v, lens)
    save("main_lens", a.json, table=rows, stages=stages, main_lens=lens, verdict=v, agreement=agree,
         compiled=compiled or None, settings=vars(a))


if __name__ == "__main__":
    main()
