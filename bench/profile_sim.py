"""Where the simulator's time goes, stage by stage, beside what the arithmetic allows on this machine (measures only).

    # --json PATH: default bench/results/profile_sim_<preset>.json
    OMP_NUM_THREADS=1 python bench/profile_sim.py --preset model_i --repeats 15
    OMP_NUM_THREADS=1 python bench/profile_sim.py --preset model_ii --repeats 9
    OMP_NUM_THREADS=1 python bench/profile_sim.py [--preset model_i] [--block 16] [--repeats 5] [--json PATH]

For one canonical block of images (16 on a CPU) of the preset (Model I: 150x150, DeepLenseSim's 100-point vortex,
Poisson counts), each stage of `simulate.render` / `simulate.add_noise` is timed on its own (best of --repeats):
parameter draws, SIE and shear on the grid (cached per preset inside the simulator, so free per image there), 25 CDM
subhalos, the 100 vortex points, ray shooting, the Sersic source, the PSF and the noise (one generator per image, the
default, and the keyed counter stream of `Observation.stream='counter'`, an option); then the whole `make_images`
for the same block (the point-mass vortex both with the generic point-mass kernel and with the collinear kernel the
simulator uses for it, where the library has it). Where the library has the closed form for evenly spaced masses
(`lensing.evenly_spaced_point_mass_deflection`, opt-in: the simulator does not use it), it is timed against the
collinear kernel in interleaved rounds (the kernel alone, and `make_images` with the closed form swapped in), with
the ratio of each round ("closed_form_vs_collinear" in the results; not a stage of the table). The collinear kernel
fused by `torch.compile` (`compile=True`, what `render(compile=True)` uses; inductor's cache in the library's cache
folder unless TORCHINDUCTOR_CACHE_DIR is set) is timed against the eager kernel the same way, alone and in
`make_images` ("compiled_vs_eager"), with its first call's seconds. The point-mass kernels'
default chunk size is timed the same way against the earlier 2**19 elements ("chunk_size").
Beside each stage: an arithmetic minimum, max(flops / F, bytes / M), where F is this machine's
float32 rate measured on a large matrix product (its best case) and M its memory rate measured on a large a*b+c. The
flop counts are per pixel and per mass, stated in FLOPS below (a division, square root or transcendental counted as
the number written there); they are estimates of what the formula needs, not of what torch does. The byte counts
assume DRAM traffic, so a stage whose arrays stay in cache can beat its 'minimum' (ratio below 1). An existing results
file's figures are kept under "previous" in the new one (one level: the run just before).
"""
import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from _results import header, write_json

# float32 operations per element (per pixel, or per pixel and mass); transcendentals (atan, atanh, exp, log, pow, sqrt,
# division) counted as 4 -- a vectorised polynomial or a hardware reciprocal with one refinement step.
T = 4
FLOPS = dict(
    sie=2 + 4 + 5 + T + 2 * (2 + T) + 6,          # centre, rotate, psi, atan/atanh of the ratios, rotate back
    shear=6,
    point_mass=2 + 3 + T + 2 + 2,                 # dx, dy; r^2; te^2 / r^2; w dx, w dy; accumulate
    # along the line: d = u - t; d^2 + v^2; 1 / r^2; accumulate w; w d, accumulate
    collinear_point_mass=1 + 2 + T + 1 + 2,
    ray_shoot=4,
    sersic=2 + 4 + 3 + T + T + 2,                 # shift, rotate, elliptical radius, (r/R)^(1/n), exp
    noise_counts=2 * (T + 2) + 8 + 3 * T,  # two normals (Box-Muller), the rate, a Poisson draw (~3 transcendentals)
    noise_ccd=2 * (T + 2) + 8,
)


def best(f, repeats):
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def machine_rates(repeats):
    "float32 FLOP/s of a large matmul and bytes/s of a large a*b+c on this machine."
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = best(lambda: a @ b, repeats)
    flops = 2 * 1024**3 / t
    x, y, z = (torch.randn(2**23) for _ in range(3))
    t = best(lambda: torch.addcmul(z, x, y), repeats)
    return flops, 4 * 4 * 2**23 / t                 # three reads and one write of 4 bytes


def setup(a):
    "The preset, this machine's rates and one block's grid, parameter draws and vortex points."
    from deeplense_fastai.simulate import get_preset, draw_parameters, preset_physics, _vortex_points
    from deeplense_fastai import simulate as S
    _vortex_offsets = getattr(S, "_vortex_offsets", None)
    from deeplense_fastai import lensing as L
    p = get_preset(a.preset)
    B, R = a.block, a.repeats
    F, M = machine_rates(R)
    phys = preset_physics(p)
    x, y = L.pixel_grid(p.instrument.npix, p.instrument.pixel_scale, p.instrument.supersample)
    idx = np.arange(B)
    cdm = draw_parameters(p, idx, 0, ("cdm",))
    ax_ = draw_parameters(p, idx, 0, ("axion",))
    te, px, py = _vortex_points(ax_, p)
    return SimpleNamespace(L=L, p=p, B=B, R=R, F=F, M=M, phys=phys, x=x, y=y, P=x.numel(), idx=idx, cdm=cdm, ax_=ax_,
                           te=te, px=px, py=py, K_sub=int(cdm["n_sub"].max()), vortex_offsets=_vortex_offsets,
                           collinear=hasattr(L, "collinear_point_mass_deflection"))


def Tn(v): return torch.as_tensor(np.asarray(v, dtype=np.float64)).float()


def stage(c, name, fn, flops, bytes_, note=""):
    "One stage's row: the best of `c.R` calls of `fn`, beside the arithmetic minimum of its flops and bytes."
    t = best(fn, c.R)
    tmin = max(flops / c.F, bytes_ / c.M)
    return dict(stage=name, ms_per_block=round(1e3 * t, 3), ms_per_image=round(1e3 * t / c.B, 4),
                min_ms_per_image=round(1e3 * tmin / c.B, 4) if tmin else None,
                ratio_to_minimum=round(t / tmin, 1) if tmin else None, note=note)


def deflection_stages(c):
    "The rows of the parameter draws and the deflections (sets `c.te1`, `c.off` where the collinear kernel exists)."
    from deeplense_fastai.simulate import draw_parameters
    L, p, x, y, P, B, cdm, ax_, K_sub = c.L, c.p, c.x, c.y, c.P, c.B, c.cdm, c.ax_, c.K_sub
    stages = [stage(c, "parameter draws (NumPy)", lambda: draw_parameters(p, c.idx, 0, ("axion",)), 0, 0,
                    "counter-based uniforms; not arithmetic-bound")]
    stages.append(stage(c, "SIE on the grid", lambda: L.sie_deflection(x, y, c.phys["theta_E"], p.lens.e1, p.lens.e2),
                        P * FLOPS["sie"], P * 4 * 4, "cached per preset in the simulator: once, not per image"))
    stages.append(stage(c, "shear on the grid", lambda: L.shear_deflection(x, y, p.lens.gamma1, p.lens.gamma2),
                        P * FLOPS["shear"], P * 4 * 4, "cached per preset"))
    stages.append(stage(c, f"{K_sub} CDM subhalos (point masses)",
                        lambda: L.point_mass_deflection(x, y, Tn(cdm["sub_theta_E"][:, :K_sub]),
                                                        Tn(cdm["sub_x"][:, :K_sub]), Tn(cdm["sub_y"][:, :K_sub])),
                        B * P * K_sub * FLOPS["point_mass"], B * P * 2 * 4, "cdm images only"))
    generic = f"{p.axion.points} vortex points" + (" (generic point-mass kernel)" if c.collinear else "")
    stages.append(stage(c, generic, lambda: L.point_mass_deflection(x, y, Tn(c.te), Tn(c.px), Tn(c.py)),
                        B * P * p.axion.points * FLOPS["point_mass"], B * P * 2 * 4,
                        "axion images only" + ("; no longer used by the simulator" if c.collinear else "")))
    if c.collinear:     # the simulator's kernel for the point-mass vortex
        c.te1, c.off = c.vortex_offsets(ax_, p)
        stages.append(stage(c, f"{p.axion.points} vortex points (collinear kernel)",
                            lambda: L.collinear_point_mass_deflection(x, y, c.te1, c.off, ax_["vortex_angle"]),
                            B * P * p.axion.points * FLOPS["collinear_point_mass"], B * P * 2 * 4,
                            "axion images only: what the simulator uses"))
    return stages


def image_stages(c):
    "The rows of ray shooting, the Sersic source, the PSF and the noise."
    from deeplense_fastai.simulate import add_noise
    L, p, x, y, P, B, phys, ax_, g = c.L, c.p, c.x, c.y, c.P, c.B, c.phys, c.ax_, c.p.source_galaxy
    ax0 = torch.zeros(B, p.instrument.npix, p.instrument.npix)
    ay0 = torch.zeros(B, p.instrument.npix, p.instrument.npix)
    stages = [stage(c, "ray shooting", lambda: L.ray_shoot(x, y, ax0, ay0, phys["deflection_scale"]),
                    B * P * FLOPS["ray_shoot"], B * P * 4 * 4)]
    bx, by = L.ray_shoot(x, y, ax0 + 0.1, ay0, phys["deflection_scale"])
    sersic = lambda: L.sersic(bx, by, phys["source_amp"], g.R, g.n, g.e1, g.e2, Tn(ax_["source_x"]),
                              Tn(ax_["source_y"]))
    stages.append(stage(c, "Sersic source", sersic, B * P * FLOPS["sersic"], B * P * 3 * 4))
    img = sersic()
    inst = p.instrument
    k = len(L.gaussian_kernel1d(inst.psf_fwhm, inst.pixel_scale, inst.psf_truncation)) if inst.psf_fwhm else 0
    stages.append(stage(c, f"PSF ({k}-tap separable)",
                        lambda: L.convolve_psf(img, inst.psf_fwhm, inst.pixel_scale, inst.psf_truncation),
                        B * P * 2 * 2 * k, B * P * 2 * 4))
    model = img * phys["pixel_area"]
    nf = FLOPS["noise_counts" if p.observation.noise == "counts" else "noise_ccd"]
    stages.append(stage(c, f"noise ({p.observation.noise}, one generator per image)",
                        lambda: add_noise(p, model, ax_, 0), B * P * nf, B * P * 3 * 4))
    keyed = p.replace(noise_stream="counter")
    stages.append(stage(c, f"noise ({p.observation.noise}, keyed counter stream)",
                        lambda: add_noise(keyed, model, ax_, 0), B * P * nf, B * P * 3 * 4,
                        "an option (Observation.stream='counter'), not the default: no loop over images"))
    return stages


def interleaved(f_old, f_new, rounds):
    "Both called once, then `rounds` interleaved timed calls of each: their times and the per-round ratios old / new."
    f_old()
    f_new()
    t_old, t_new = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f_old()
        t1 = time.perf_counter()
        f_new()
        t2 = time.perf_counter()
        t_old.append(t1 - t0)
        t_new.append(t2 - t1)
    return t_old, t_new, np.array(t_old) / np.array(t_new)


def with_closed_form(L, f):
    "Run f with the simulator's collinear kernel replaced by the closed form (the opt-in path)."
    keep = L.collinear_point_mass_deflection

    def swapped(x, y, theta_E, offsets, angle, **kw):
        off = np.asarray(offsets, dtype=np.float64)
        n_ = off.shape[1]
        return L.evenly_spaced_point_mass_deflection(x, y, theta_E, off[:, 0],
                                                     (off[:, -1] - off[:, 0]) / max(n_ - 1, 1), n_, angle)
    L.collinear_point_mass_deflection = swapped
    try: return f()
    finally: L.collinear_point_mass_deflection = keep


def closed_form_comparison(c):
    """The closed form (digamma functions, opt-in: not a stage the simulator runs) against the collinear kernel:
    interleaved rounds, ratios per round (noisy machines); None where the library lacks it."""
    L, p, B, ax_ = c.L, c.p, c.B, c.ax_
    if not (hasattr(L, "evenly_spaced_point_mass_deflection") and c.vortex_offsets is not None): return None
    n_pts, hl = p.axion.points, ax_["vortex_half_length"]
    closed_form = lambda: L.evenly_spaced_point_mass_deflection(c.x, c.y, c.te1, -hl, 2 * hl / max(n_pts - 1, 1),
                                                                n_pts, ax_["vortex_angle"])
    from deeplense_fastai.simulate import make_images
    pairs = dict(kernel=(lambda: L.collinear_point_mass_deflection(c.x, c.y, c.te1, c.off, ax_["vortex_angle"]),
                         closed_form),
                 make_images_axion=(lambda: make_images(p, 0, B, 0, ("axion",)),
                                    lambda: with_closed_form(L, lambda: make_images(p, 0, B, 0, ("axion",)))))
    return compared(pairs, c, "collinear", "closed_form")


def compared(pairs, c, old, new):
    "Each (old, new) pair of calls in interleaved rounds: median ms per image of each, per-round speedups old / new."
    out = {}
    for k, (f_old, f_new) in pairs.items():
        t_old, t_new, r = interleaved(f_old, f_new, max(c.R, 7))
        out[k] = {f"{old}_ms_per_image": round(1e3 * float(np.median(t_old)) / c.B, 4),
                  f"{new}_ms_per_image": round(1e3 * float(np.median(t_new)) / c.B, 4),
                  "speedup_median": round(float(np.median(r)), 2), "speedup_per_round": [round(float(v), 2) for v in r]}
    return out


def compiled_comparison(c):
    """The collinear vortex kernel fused by `torch.compile` (`compile=True`, what `render(compile=True)` uses) against
    the eager kernel: the first call's seconds (compilation, or loading inductor's cache), then interleaved rounds of
    the kernel alone and of `make_images` for axion images, ratios per round; None where the library lacks it."""
    L, p, B, ax_ = c.L, c.p, c.B, c.ax_
    if not (c.collinear and "compile" in inspect.signature(L.collinear_point_mass_deflection).parameters): return None
    from deeplense_fastai.simulate import make_images
    kernel = lambda comp: L.collinear_point_mass_deflection(c.x, c.y, c.te1, c.off, ax_["vortex_angle"], compile=comp)
    t0 = time.perf_counter()
    fused = kernel(True)
    first = time.perf_counter() - t0
    eager = kernel(False)
    peak = float(torch.hypot(*eager).max())
    diff = max(float((a - b).abs().max()) for a, b in zip(fused, eager)) / peak
    pairs = dict(kernel=(lambda: kernel(False), lambda: kernel(True)),
                 make_images_axion=(lambda: make_images(p, 0, B, 0, ("axion",)),
                                    lambda: make_images(p, 0, B, 0, ("axion",), compile=True)))
    out = dict(first_call_seconds=round(first, 1), largest_difference_over_peak_deflection=diff,
               inductor_cache=("TORCHINDUCTOR_CACHE_DIR set by the user" if c.user_cache else "the library's cache"))
    return out | compared(pairs, c, "eager", "compiled")


def chunk_sizes(c):
    "The point-mass kernels' chunk size (issue 27 item 2): the default against the earlier 2**19 elements, interleaved."
    L, cdm, K_sub = c.L, c.cdm, c.K_sub
    big = 2**19
    pairs = {f"{K_sub} CDM subhalos": lambda m: L.point_mass_deflection(c.x, c.y, Tn(cdm["sub_theta_E"][:, :K_sub]),
                                                                        Tn(cdm["sub_x"][:, :K_sub]),
                                                                        Tn(cdm["sub_y"][:, :K_sub]), max_elements=m)}
    if c.collinear:
        pairs[f"{c.p.axion.points} vortex points (collinear kernel)"] = lambda m: L.collinear_point_mass_deflection(
            c.x, c.y, c.te1, c.off, c.ax_["vortex_angle"], max_elements=m)
    chunking = {}
    for k, f in pairs.items():
        default = inspect.signature(L.point_mass_deflection).parameters["max_elements"].default
        t_big, t_def, r = interleaved(lambda: f(big), lambda: f(default), max(c.R, 7))
        chunking[k] = dict(max_elements_default=default, max_elements_before=big,
                           before_ms_per_image=round(1e3 * float(np.median(t_big)) / c.B, 4),
                           default_ms_per_image=round(1e3 * float(np.median(t_def)) / c.B, 4),
                           speedup_median=round(float(np.median(r)), 2),
                           speedup_per_round=[round(float(v), 2) for v in r])
    return chunking


def report(c, out):
    "The results as the printed tables and lines."
    p, B, F, M = c.p, c.B, c.F, c.M
    print(f"# {p.name} {p.instrument.npix}x{p.instrument.npix}, block of {B}; {torch.get_num_threads()} threads; "
          f"matmul {F / 1e9:.0f} GFLOP/s, a*b+c {M / 1e9:.1f} GB/s; torch {torch.__version__}")
    print("| stage | ms / image | arithmetic minimum ms / image | ratio | note |\n|---|---|---|---|---|")
    for s in out["stages"]:
        mn, ra = ((f"{s['min_ms_per_image']:.4f}", f"{s['ratio_to_minimum']:.1f}x") if s['ratio_to_minimum']
                  else ("-", "-"))
        print(f"| {s['stage']} | {s['ms_per_image']:.4f} | {mn} | {ra} | {s['note']} |")
    print(f"| make_images, axion (all stages) | {out['make_images_axion_ms_per_image']:.4f} | | | "
          f"{out['make_images_axion_img_per_s']:.0f} img/s |")
    print(f"| make_images, cdm (all stages) | {out['make_images_cdm_ms_per_image']:.4f} | | | "
          f"{out['make_images_cdm_img_per_s']:.0f} img/s |")
    for k, r in out["chunk_size"].items():
        print(f"chunks of {r['max_elements_default']} against {r['max_elements_before']} elements, {k}: "
              f"{r['before_ms_per_image']:.3f} vs {r['default_ms_per_image']:.3f} ms/image, "
              f"speedup {r['speedup_median']:.2f}x (interleaved rounds {r['speedup_per_round']})")
    cc = out["compiled_vs_eager"] or {}
    for k in ("kernel", "make_images_axion"):
        if k not in cc: continue
        r = cc[k]
        print(f"collinear kernel compiled vs eager, {k}: {r['eager_ms_per_image']:.3f} vs "
              f"{r['compiled_ms_per_image']:.3f} ms/image, speedup {r['speedup_median']:.2f}x "
              f"(interleaved rounds {r['speedup_per_round']}); first call {cc['first_call_seconds']} s")
    for k, r in (out["closed_form_vs_collinear"] or {}).items():
        print(f"closed form vs collinear kernel, {k}: {r['collinear_ms_per_image']:.3f} vs "
              f"{r['closed_form_ms_per_image']:.3f} ms/image, "
              f"speedup {r['speedup_median']:.2f}x (median of interleaved rounds {r['speedup_per_round']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="model_i")
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    user_cache = bool(os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    c = setup(a)
    c.user_cache = user_cache
    from deeplense_fastai.simulate import make_images
    p, B, R = c.p, c.B, c.R
    stages = deflection_stages(c) + image_stages(c)
    t_all = best(lambda: make_images(p, 0, B, 0, ("axion",)), R)
    t_cdm = best(lambda: make_images(p, 0, B, 0, ("cdm",)), R)
    comparison = closed_form_comparison(c)
    compiled = compiled_comparison(c)
    chunking = chunk_sizes(c)
    out = header("profile_sim")
    out["machine"].update(matmul_gflops=round(c.F / 1e9, 1), stream_gb_s=round(c.M / 1e9, 1))
    out.update(preset=p.name, image_px=p.instrument.npix, block=B,
               flops_per_element=FLOPS, stages=stages,
               make_images_axion_ms_per_image=round(1e3 * t_all / B, 4),
               make_images_cdm_ms_per_image=round(1e3 * t_cdm / B, 4),
               make_images_axion_img_per_s=round(B / t_all, 1), make_images_cdm_img_per_s=round(B / t_cdm, 1),
               closed_form_vs_collinear=comparison, compiled_vs_eager=compiled, chunk_size=chunking)
    report(c, out)
    out["table"] = [dict(stage=s["stage"], ms_per_image=s["ms_per_image"], min_ms_per_image=s.get("min_ms_per_image"),
                         ratio_to_minimum=s.get("ratio_to_minimum")) for s in stages]
    path = a.json or f"bench/results/profile_sim_{p.name}.json"
    if os.path.exists(path):              # the run before this one, kept beside it (e.g. before a simulator change)
        old = json.load(open(path))
        out["previous"] = {k: old[k] for k in ("command", "date", "machine", "versions", "stages",
                                               "make_images_axion_ms_per_image", "make_images_cdm_ms_per_image",
                                               "make_images_axion_img_per_s", "make_images_cdm_img_per_s",
                                               "chunk_size", "closed_form_vs_collinear", "compiled_vs_eager")
                           if k in old}
    write_json(path, out)


if __name__ == "__main__":
    main()
