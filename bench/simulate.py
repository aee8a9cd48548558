"""Simulator speed: deeplense_fastai against lenstronomy making the same images in the same run.

    python bench/simulate.py [--n 512] [--n-lenstronomy 48] [--device cpu] [--threads 2] [--compile]

Prints one table row per (preset, class, vortex mode): images per second for our batched simulator and for
lenstronomy rendering the identical parameters one image at a time, as DeepLenseSim does (ImageModel for Model I,
SimAPI for Model II), noise included, and their ratio. Both run in this process on the same machine, so the ratio is
meaningful even on a shared, noisy machine; absolute rates are not.
"""
import argparse
import platform
import time

import numpy as np
import torch

from deeplense_fastai.simulate import PRESETS, get_preset, make_images, draw_parameters, lenstronomy_kwargs


def ours(preset, n, cls, device, compile=False, repeats=2):
    make_images(preset, 0, 64, 0, (cls,), True, device, compile=compile)   # warm-up: main-lens field, compilation
    best = 0.
    for _ in range(repeats):
        t0 = time.perf_counter()
        img, _ = make_images(preset, 0, n, 0, (cls,), True, device, compile=compile)
        if img.is_cuda: torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _lens(preset, prm, b):
    lk = lenstronomy_kwargs(preset, prm, b)
    return lk["lens_model_list"], lk["kwargs_lens"]


def lenstronomy_rate(preset, n, cls):
    """DeepLenseSim's per-image lenstronomy pipeline on the same parameters (noise included)."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    lenstronomy_rate.warm = getattr(lenstronomy_rate, "warm", False)
    if not lenstronomy_rate.warm:        # numba compiles lenstronomy's kernels on first use: keep that out of the timing
        lenstronomy_rate.warm = True
        lenstronomy_rate(PRESETS["model_i"], 2, "cdm"); lenstronomy_rate(PRESETS["model_ii"], 2, "cdm")
    prm = draw_parameters(preset, np.arange(n), 0, (cls,))
    src = lambda b, key, val: [{key: val, "R_sersic": preset.source_R, "n_sersic": preset.source_n, "e1": preset.source_e1,
                                "e2": preset.source_e2, "center_x": prm["source_x"][b], "center_y": prm["source_y"][b]}]
    t0 = time.perf_counter()
    if preset.noise == "counts":
        from lenstronomy.Util import util
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        import lenstronomy.Util.image_util as image_util
        for b in range(n):
            t = prm["exposure"][b]
            _, _, ra0, dec0, _, _, M, _ = util.make_grid_with_coordtransform(num_pix=preset.npix, delta_pix=preset.pixel_scale,
                                                                           center_ra=0, center_dec=0, subgrid_res=1, inverse=False)
            data = ImageData(background_rms=preset.background_rms, exposure_time=t, ra_at_xy_0=ra0, dec_at_xy_0=dec0,
                             transform_pix2angle=M, image_data=np.zeros((preset.npix, preset.npix)))
            psf = PSF(psf_type="GAUSSIAN", fwhm=preset.psf_fwhm, pixel_size=preset.pixel_scale, truncation=preset.psf_truncation)
            models, kwargs = _lens(preset, prm, b)
            im = ImageModel(data, psf, lens_model_class=LensModel(models), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                            kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})
            model = im.image(kwargs, src(b, "amp", preset.source_amp), kwargs_lens_light=None, kwargs_ps=None)
            real = t * (model + image_util.add_poisson(model, exp_time=t) + image_util.add_background(model, preset.background_rms))
            np.random.poisson(real.clip(min=0))
    else:
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.SimulationAPI.sim_api import SimAPI
        from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
        band = Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band()
        cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
        for b in range(n):
            models, kwargs = _lens(preset, prm, b)
            km = {"lens_model_list": models, "lens_redshift_list": [0.5] * len(models), "source_light_model_list": ["SERSIC_ELLIPSE"],
                  "source_redshift_list": [1.0], "cosmo": cosmo, "z_source_convention": 2.5, "z_source": 1.0}
            sim = SimAPI(num_pix=preset.npix, kwargs_single_band=band, kwargs_model=km)
            imsim = sim.image_model_class({"point_source_supersampling_factor": 1})
            _, kws, _ = sim.magnitude2amplitude(None, src(b, "magnitude", preset.source_magnitude))
            image = imsim.image(kwargs, kws, None)
            image + sim.noise_for_model(model=image)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images per measurement of our simulator")
    ap.add_argument("--n-lenstronomy", type=int, default=48, help="images per lenstronomy measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--presets", default="model_i,model_ii")
    ap.add_argument("--classes", default="no_sub,cdm,axion")
    ap.add_argument("--no-lenstronomy", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile (first call compiles)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    warnings_off()
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# machine: {name}; torch {torch.__version__}; float32")
    print(f"| preset | class | vortex | ours img/s | ours + torch.compile img/s | lenstronomy img/s | ratio (eager / compiled) |")
    print(f"|---|---|---|---|---|---|---|")
    for pname in a.presets.split(","):
        for cls in a.classes.split(","):
            modes = ["points", "segment"] if cls == "axion" else ["points"]
            lt = None if a.no_lenstronomy or dev.type == "cuda" else lenstronomy_rate(PRESETS[pname], a.n_lenstronomy, cls)
            for mode in modes:
                p = get_preset(pname, vortex=mode)
                r = ours(p, a.n, cls, dev)
                rc = ours(p, a.n, cls, dev, compile=True) if a.compile else None
                lts = f"{lt:.0f}" if lt else "-"
                ratio = (f"{r / lt:.1f}x" + (f" / {rc / lt:.1f}x" if rc else "")) if lt else "-"
                rcs = f"{rc:.0f}" if rc else "-"
                print(f"| {pname} ({p.npix}x{p.npix}) | {cls} | {mode if cls == 'axion' else '-'} | {r:.0f} | {rcs} | {lts} | {ratio} |", flush=True)


def warnings_off():
    import warnings
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    main()
