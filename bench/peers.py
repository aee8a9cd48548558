"""The simulator beside its peers: the same scenes through lenstronomy, caustics, herculens and paltax, one CPU thread.

    OMP_NUM_THREADS=1 nice -n 10 python bench/peers.py [--rounds 5] [--round-seconds 0.4] [--json PATH] [--resume]
    python bench/peers.py --smoke --json /tmp/peers.json                        # under a minute: the test's run
    pip install -e ".[peers]"                                                   # the peers (settings.ini pins them)

Scenes: SIE + external shear + Sersic source + Gaussian PSF, the instrument of DeepLense Model I (150x150, 0.05"/px,
PSF FWHM 0.087", truncated at 3 sigma) and of Model II (64x64, 0.101"/px, PSF FWHM 0.16", truncated at 5 sigma), each
with three substructures: smooth (`no_sub`), the axion vortex (DeepLenseSim's 100 equal point masses on a line) and
CDM (25 point-mass subhalos). The parameters come from the library (`get_preset`, `draw_parameters`, seed 0, the first
`--images` indices of the class) and reach every tool through `lenstronomy_kwargs`, made single-plane: Model II defines
its deflections for a source at z = 2.5 (lenstronomy's `z_source_convention`), which for one lens plane multiplies every
deflection by theta_E_eff / theta_E, so SIE theta_E and the shear are multiplied by that factor and a point mass's
theta_E by its square root. The source amplitude is the preset's (`preset_physics`), no noise is added.

Tools (each renders noiseless images the way its documentation shows, parameters converted before the clock starts):
- deeplense_fastai: `render(preset, params)` on blocks of 16 images (the main lens is cached per preset, as the
  faithful presets do; the vortex uses the collinear point-mass kernel).
- deeplense_fastai_compiled: the same with `render(..., compile=True)` (the point-mass kernels, the collinear vortex
  kernel included, fused by torch.compile; its compilation is the first call, excluded like JAX's).
- deeplense_fastai_per_image: the same images through the preset's `_nuisance` twin, whose columns are set to the
  scene's values: the main lens and the Sersic shape are computed per image (what a varied sky costs), checked too.
- deeplense_fastai_make_images: the whole path, `make_images` on the `_nuisance` twin (parameter draws, the main lens
  per image, render and noise) for the scene's class: its own lenses, with noise, so timed but not checked.
- lenstronomy: one `ImageModel` per scene (PSF 'GAUSSIAN', scipy's gaussian_filter with the preset's truncation),
  `image(kwargs_lens, kwargs_source)` per image. It is the oracle every other tool is checked against.
- caustics: `LensSource(SinglePlane([SIE, ExternalShear, BatchedPlane(Point)]), Sersic)` with lenstronomy's Sersic k
  (q and phi from e1 and e2; its Sersic Re is lenstronomy's R_sersic / sqrt(q); its image is surface brightness, so
  times the pixel area),
  the source centre and the point masses as dynamic parameters, one image per call; PSF: the lenstronomy kernel
  (sampled Gaussian, same truncation) through conv2d.
- herculens: `LensImage(...).model` under `jax.jit` (its SERSIC_ELLIPSE radius is the major axis one: lenstronomy's
  R_sersic / sqrt(q)), one image per call (`herculens`) and 16 images per call through
  `jax.vmap` (`herculens_vmap`); PSF 'GAUSSIAN' with the preset's truncation.
- paltax (smooth scenes only: it has no point mass): its profile functions `EPLEllip` (slope 2 = SIE), `ShearCart`,
  `SersicElliptic` and the pixel PSF (the lenstronomy kernel) composed in one `jax.jit`; `generate_image`'s multi-plane
  path needs a line-of-sight and subhalo configuration DeepLense scenes do not have. paltax is imported module by
  module, without its package `__init__` (which imports its training code: flax, clu and tensorflow).
A tool that is not installed is skipped, with the reason, under "peers" in the results.

Protocol. (1) Agreement: the first `--check` images of each scene from each tool against lenstronomy's for the same
parameters, max |image - lenstronomy| over max |lenstronomy| (worst image); a tool off by more than 1e-3 of the peak
is reported but not timed as the same scene. (2) Warm-up: one call per tool (for JAX the jit compilation; recorded as
first_call_s, excluded from the timing); its rate sizes each tool's round to about --round-seconds. (3) --rounds
interleaved rounds (deeplense_fastai, lenstronomy, caustics, ..., then again), images per second per round; medians,
and per-round ratios to this library (the ratio of the two rates in the same round; their median). Everything runs on
one CPU thread: torch.set_num_threads(1), OMP/MKL/OPENBLAS/NUMBA threads 1, and for JAX
XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1', all set before the imports.

Arithmetic bound: float32 operations per image from the per-pixel counts in FLOPS (the counts of bench/profile_sim.py:
what each formula needs, a division, square root or transcendental counted as T = 4, i.e. a vectorised polynomial or
a hardware reciprocal with one refinement step), divided by the rate of a 1024x1024 float32 torch matmul on one thread
measured in the same run (best of 5, before and after the rounds; the larger is used). Per pixel: SIE 33 (centre 2,
rotate 4, psi 5 + T, atan and atanh of the ratios 2 (2 + T), rotate back 6); shear 6; a point mass 13 per mass (dx,
dy 2; r^2 3; theta_E^2 / r^2 T; w dx, w dy 2; accumulate 2); ray shooting 4; Sersic 19 (shift 2, rotate 4, elliptical
radius 3, (r/R)^(1/n) T, exp T, scale 2); PSF 4 (2r + 1) (a separable Gaussian of radius r = int(truncation sigma +
0.5) pixels: a multiply and an add per tap and pass); flux per pixel 1. The bound is images per second at that rate;
`times_bound` is how many times slower a tool is than it.

Results: bench/results/peers.json (machine, versions, command, date; `--json ''` writes nothing): `table` holds one
row per (scene, tool), `peers` each tool's version or why it was skipped, `bound` the counts and the matmul rate.
`--resume` keeps the scenes already measured with the same settings (a partial file in the library's cache dir,
bench/peers/) and measures the rest.
"""
import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_k, "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import argparse
import hashlib
import importlib.util
import json
import math
import statistics
import sys
import time
import types
import warnings
from importlib import metadata

import numpy as np
import torch
from _results import save, write_json

TOL = 1e-3                       # agreement with lenstronomy, relative to the peak, for a tool to be timed
BLOCK = 16                       # images per call for the batched tools
SCENES = [(p, s) for p in ("model_i", "model_ii") for s in ("smooth", "vortex", "cdm")]
CLASS = dict(smooth="no_sub", vortex="axion", cdm="cdm")
TOOLS = ("deeplense_fastai", "deeplense_fastai_compiled", "deeplense_fastai_per_image", "deeplense_fastai_make_images",
         "lenstronomy", "caustics", "herculens", "herculens_vmap", "paltax")
DIST = dict(deeplense_fastai="deeplense_fastai", deeplense_fastai_compiled="deeplense_fastai",
            deeplense_fastai_per_image="deeplense_fastai", deeplense_fastai_make_images="deeplense_fastai",
            lenstronomy="lenstronomy", caustics="caustics",
            herculens="herculens", herculens_vmap="herculens", paltax="paltax")
T = 4
FLOPS = dict(sie=2 + 4 + 5 + T + 2 * (2 + T) + 6, shear=6, point_mass=2 + 3 + T + 2 + 2, ray_shoot=4,
             sersic=2 + 4 + 3 + T + T + 2, flux=1)


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def instrument(p):
    """npix, pixel scale, PSF FWHM and truncation of a preset (its `instrument` part, or the flat fields of older
    presets)."""
    i = getattr(p, "instrument", p)
    return int(i.npix), float(i.pixel_scale), float(i.psf_fwhm), float(i.psf_truncation)


def pixel_grid(p):
    """The instrument of `instrument` with lenstronomy's pixel grid (centred): npix, pixel scale, PSF FWHM, truncation,
    the RA and Dec of pixel (0, 0) and the pixel-to-angle matrix, as every grid-based tool here takes them."""
    from lenstronomy.Util import util
    n, d, fwhm, trunc = instrument(p)
    _, _, ra0, dec0, _, _, M, _ = util.make_grid_with_coordtransform(n, d, center_ra=0, center_dec=0, subgrid_res=1,
                                                                    inverse=False)
    return n, d, fwhm, trunc, ra0, dec0, M


def psf_radius(p):
    _, d, fwhm, trunc = instrument(p)
    return int(trunc * fwhm / (2 * math.sqrt(2 * math.log(2))) / d + 0.5)


def psf_kernel(p):
    """The kernel lenstronomy's GAUSSIAN PSF applies (scipy.ndimage.gaussian_filter: a sampled, normalised, separable
    Gaussian truncated at `truncation` sigma)."""
    _, d, fwhm, _ = instrument(p)
    s = fwhm / (2 * math.sqrt(2 * math.log(2))) / d
    x = np.arange(-psf_radius(p), psf_radius(p) + 1)
    k = np.exp(-0.5 * x**2 / s**2)
    k /= k.sum()
    return np.outer(k, k)


def flops_per_image(p, n_masses):
    n = instrument(p)[0]
    per_pixel = (FLOPS["sie"] + FLOPS["shear"] + n_masses * FLOPS["point_mass"] + FLOPS["ray_shoot"] + FLOPS["sersic"]
                 + 4 * (2 * psf_radius(p) + 1) + FLOPS["flux"])
    return per_pixel * n * n


def matmul_rate(repeats=5):
    "float32 FLOP/s of a 1024x1024 torch matmul on this thread (best of `repeats`)."
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


class Scene:
    """One (preset, substructure): the library's parameters for `n` images and their single-plane lenstronomy kwargs."""

    def __init__(self, preset_name, sub, n):
        from deeplense_fastai.simulate import (
            draw_parameters,
            get_preset,
            lenstronomy_kwargs,
            preset_physics,
        )
        self.name, self.sub = f"{preset_name}_{sub}", sub
        self.p = get_preset(preset_name)
        self.n = n
        self.params = draw_parameters(self.p, np.arange(n), 0, (CLASS[sub],))
        amp = preset_physics(self.p)["source_amp"]
        self.kw = []
        for b in range(n):
            kw = lenstronomy_kwargs(self.p, self.params, b)
            s = float(self.params["theta_E_eff"][b] / self.params["theta_E"][b])
            lens = []
            for m, k in zip(kw["lens_model_list"], kw["kwargs_lens"]):
                k = dict(k)
                if m == "SIE":
                    k["theta_E"] *= s
                elif m == "SHEAR":
                    k["gamma1"] *= s
                    k["gamma2"] *= s
                else:
                    k["theta_E"] *= math.sqrt(s)
                lens.append(k)
            src = {k: v for k, v in kw["kwargs_source"][0].items() if k not in ("amp", "magnitude")}
            self.kw.append(dict(models=kw["lens_model_list"], lens=lens, source=[dict(src, amp=amp)]))
        self.models = self.kw[0]["models"]
        assert all(k["models"] == self.models for k in self.kw), "a scene's lens model list must not change"
        self.n_masses = len(self.models) - 2

    def blocks(self, size):
        "Image indices of the calls of a tool that renders `size` images per call."
        return [list(range(i, i + size)) for i in range(0, self.n - size + 1, size)]


class Tool:
    "A renderer of a scene: `call(j)` makes the images of its j-th call (cycling), as a NumPy array (k, H, W)."
    batch = 1

    def __init__(self, scene):
        self.scene = scene
        self.calls = scene.blocks(self.batch)

    def call(self, j):
        return self.render(self.calls[j % len(self.calls)])

    def run(self, n_images):
        for j in range(n_images // self.batch):
            self.call(j)


class Library(Tool):
    batch = BLOCK

    def __init__(self, scene):
        super().__init__(scene)
        from deeplense_fastai.simulate import render
        self._render = render
        self.prm = [{k: v[idx] for k, v in scene.params.items()} for idx in self.calls]

    def call(self, j):
        return self._render(self.scene.p, self.prm[j % len(self.prm)]).numpy()


class LibraryCompiled(Library):
    "`render(..., compile=True)`: the point-mass kernels fused by torch.compile (the compilation is the first call)."

    def call(self, j):
        return self._render(self.scene.p, self.prm[j % len(self.prm)], compile=True).numpy()


def faithful_nuisance(p, params):
    "The parameters of `params` for the preset's `_nuisance` twin, every varied column at the faithful preset's value."
    n = len(params["index"])
    fixed = dict(halo_e1=p.lens.e1, halo_e2=p.lens.e2, gamma1=p.lens.gamma1, gamma2=p.lens.gamma2,
                 source_R=p.source_galaxy.R, source_n=p.source_galaxy.n, source_e1=p.source_galaxy.e1,
                 source_e2=p.source_galaxy.e2, source_dmag=0.)
    return {**params, **{k: np.full(n, float(v)) for k, v in fixed.items()}}


class LibraryPerImage(Library):
    """The same scene through the `_nuisance` twin: the main lens (SIE + shear) and the Sersic shape computed per image
    from per-image columns (set to the scene's values), as a varied sky needs: no cached field."""

    def __init__(self, scene):
        super().__init__(scene)
        from deeplense_fastai.simulate import get_preset
        self.twin = get_preset(scene.p.name + "_nuisance")
        self.prm = [faithful_nuisance(scene.p, prm) for prm in self.prm]

    def call(self, j):
        return self._render(self.twin, self.prm[j % len(self.prm)]).numpy()


class LibraryMakeImages(Tool):
    """The library's whole path on the `_nuisance` twin: `make_images` (parameter draws, the main lens per image,
    render, noise) for the scene's class. Its lenses are its own draws and it adds noise, so it is timed, not checked
    against lenstronomy (LibraryPerImage checks the same render path)."""
    batch = BLOCK
    checked = False

    def __init__(self, scene):
        super().__init__(scene)
        from deeplense_fastai.simulate import SimSpec, get_preset, make_images
        self._make = make_images
        self.spec = SimSpec(get_preset(scene.p.name + "_nuisance"), seed=0, classes=(CLASS[scene.sub],))

    def call(self, j):
        i = (j % len(self.calls)) * self.batch
        return self._make(self.spec, i, i + self.batch)[0].numpy()


class Lenstronomy(Tool):
    def __init__(self, scene):
        super().__init__(scene)
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        n, d, fwhm, trunc, ra0, dec0, M = pixel_grid(scene.p)
        data = ImageData(background_rms=1., exposure_time=1., ra_at_xy_0=ra0, dec_at_xy_0=dec0, transform_pix2angle=M,
                         image_data=np.zeros((n, n)))
        psf = PSF(psf_type="GAUSSIAN", fwhm=fwhm, pixel_size=d, truncation=trunc)
        self.im = ImageModel(data, psf, lens_model_class=LensModel(scene.models),
                             source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                             kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})

    def render(self, idx):
        return np.stack([self.im.image(self.scene.kw[b]["lens"], self.scene.kw[b]["source"]) for b in idx])


def _q_phi(e1, e2):
    "lenstronomy's (e1, e2) as the axis ratio and angle caustics and paltax take."
    c = math.hypot(e1, e2)
    return (1 - c) / (1 + c), math.atan2(e2, e1) / 2


class Caustics(Tool):
    def __init__(self, scene):
        super().__init__(scene)
        from caustics import (
            SIE,
            BatchedPlane,
            ExternalShear,
            FlatLambdaCDM,
            LensSource,
            Point,
            Sersic,
            SinglePlane,
        )
        kw0 = scene.kw[0]
        sie, shear = kw0["lens"][0], kw0["lens"][1]
        q, phi = _q_phi(sie["e1"], sie["e2"])
        cos = FlatLambdaCDM(name="cosmo")
        lenses = [SIE(name="sie", cosmology=cos, x0=0., y0=0., q=q, phi=phi, Rein=sie["theta_E"]),
                  ExternalShear(name="shear", cosmology=cos, x0=0., y0=0., gamma_1=shear["gamma1"],
                                gamma_2=shear["gamma2"])]
        if scene.n_masses:
            self.pt = Point(name="pt", cosmology=cos)
            lenses.append(BatchedPlane(name="subs", cosmology=cos, lens=self.pt))
        lens = SinglePlane(name="lens", cosmology=cos, lenses=lenses, z_l=0.5, z_s=1.0)
        s = kw0["source"][0]
        sq, sphi = _q_phi(s["e1"], s["e2"])
        self.src = Sersic(name="src", q=sq, phi=sphi, n=s["n_sersic"], Re=s["R_sersic"] / math.sqrt(sq), Ie=s["amp"],
                          use_lenstronomy_k=True)
        n, d, _, _ = instrument(scene.p)
        self.sim = LensSource(lens=lens, source=self.src, pixelscale=d, pixels_x=n,
                              psf=torch.as_tensor(psf_kernel(scene.p), dtype=torch.float32), psf_mode="conv2d",
                              upsample_factor=1, name="sim")
        self.area = d**2               # caustics returns surface brightness; lenstronomy flux per pixel
        order = {id(p): i for i, p in enumerate(self.sim.dynamic_params)}
        self.args = []
        for k in scene.kw:
            vals = {id(self.src.x0): k["source"][0]["center_x"], id(self.src.y0): k["source"][0]["center_y"]}
            if scene.n_masses:
                m = k["lens"][2:]
                vals.update({id(self.pt.x0): [v["center_x"] for v in m], id(self.pt.y0): [v["center_y"] for v in m],
                             id(self.pt.Rein): [v["theta_E"] for v in m]})
            args = [None] * len(order)
            for key, v in vals.items():
                args[order[key]] = torch.tensor(v, dtype=torch.float32)
            self.args.append(args)

    def render(self, idx):
        with torch.no_grad():
            return np.stack([self.sim(self.args[b]).numpy() for b in idx]) * self.area


def _jax_tree(kw):
    import jax.numpy as jnp
    return [{k: jnp.float32(v) for k, v in d.items()} for d in kw]


class Herculens(Tool):
    def __init__(self, scene):
        super().__init__(scene)
        import jax
        import jax.numpy as jnp
        from herculens.Coordinates.pixel_grid import PixelGrid
        from herculens.Instrument.psf import PSF
        from herculens.LensImage.lens_image import LensImage
        from herculens.LightModel.light_model import LightModel
        from herculens.MassModel.mass_model import MassModel
        n, d, fwhm, trunc, ra0, dec0, M = pixel_grid(scene.p)
        li = LensImage(PixelGrid(n, n, M, ra0, dec0),
                       PSF(psf_type="GAUSSIAN", fwhm=fwhm, pixel_size=d, truncation=trunc),
                       lens_mass_model_class=MassModel(scene.models), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": 1})
        model = lambda lens, src: li.model(kwargs_lens=lens, kwargs_source=src)
        # herculens's SERSIC_ELLIPSE measures R_sersic along the major axis, lenstronomy's is the product average
        src = lambda s: [dict(s, R_sersic=s["R_sersic"] / math.sqrt(_q_phi(s["e1"], s["e2"])[0]))]
        self.args = [(_jax_tree(k["lens"]), _jax_tree(src(k["source"][0]))) for k in scene.kw]
        if self.batch == 1:
            self.f = jax.jit(model)
        else:
            self.f = jax.jit(jax.vmap(model))
            stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
            self.args = [(stack([self.args[b][0] for b in idx]), stack([self.args[b][1] for b in idx]))
                         for idx in self.calls]

    def call(self, j):
        if self.batch == 1:
            return self.render(self.calls[j % len(self.calls)])
        return np.asarray(self.f(*self.args[j % len(self.args)]))

    def render(self, idx):
        return np.stack([np.asarray(self.f(*self.args[b])) for b in idx])


class HerculensVmap(Herculens):
    batch = BLOCK


def import_paltax():
    "paltax's simulation modules, without the package `__init__` (it imports flax, clu and tensorflow for training)."
    if "paltax" not in sys.modules:
        spec = importlib.util.find_spec("paltax")
        if spec is None: raise ImportError("paltax is not installed")
        pkg = types.ModuleType("paltax")
        pkg.__spec__ = spec
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["paltax"] = pkg
    from paltax import lens_models, psf_models, source_models
    return lens_models, source_models, psf_models


class Paltax(Tool):
    def __init__(self, scene):
        super().__init__(scene)
        import jax
        import jax.numpy as jnp
        L, S, P = import_paltax()
        n, d, _, _ = instrument(scene.p)
        c = (np.arange(n) - (n - 1) / 2) * d
        gx, gy = (jnp.asarray(a, jnp.float32) for a in np.meshgrid(c, c))
        kernel = jnp.asarray(psf_kernel(scene.p), jnp.float32)

        def image(a):
            ax, ay = L.EPLEllip.derivatives(gx, gy, a[0], 2., a[1], a[2], 0., 0.)
            sx, sy = L.ShearCart.derivatives(gx, gy, a[3], a[4], 0., 0.)
            light = S.SersicElliptic.function(gx - ax - sx, gy - ay - sy, a[5], a[6], a[7], a[8], a[9], a[10], a[11])
            return P._Pixel.convolve(light, dict(kernel_point_source=kernel), {}) * d**2
        self.f = jax.jit(image)
        self.args = []
        for k in scene.kw:
            sie, sh, s = k["lens"][0], k["lens"][1], k["source"][0]
            q, phi = _q_phi(s["e1"], s["e2"])
            self.args.append(jnp.asarray([sie["theta_E"], sie["e1"], sie["e2"], sh["gamma1"], sh["gamma2"], s["amp"],
                                          s["R_sersic"], s["n_sersic"], q, phi, s["center_x"], s["center_y"]],
                                         jnp.float32))

    def render(self, idx):
        return np.stack([np.asarray(self.f(self.args[b])) for b in idx])


MAKERS = dict(deeplense_fastai=Library, deeplense_fastai_compiled=LibraryCompiled,
              deeplense_fastai_per_image=LibraryPerImage, deeplense_fastai_make_images=LibraryMakeImages,
              lenstronomy=Lenstronomy, caustics=Caustics, herculens=Herculens, herculens_vmap=HerculensVmap,
              paltax=Paltax)


def availability(tools):
    "Each tool's version, or why it is skipped."
    out = {}
    for t in tools:
        v = version(DIST[t])
        if v is None:
            out[t] = dict(version=None, status="skipped",
                          reason=f"{DIST[t]} is not installed (pip install -e \".[peers]\")")
            continue
        try:
            if t in ("herculens", "herculens_vmap"):
                import herculens  # noqa: F401
                import jax  # noqa: F401
            elif t == "paltax":
                import_paltax()
            elif t == "caustics":
                import caustics  # noqa: F401
            elif t == "lenstronomy":
                import lenstronomy  # noqa: F401
            out[t] = dict(version=v, status="ok")
        except Exception as e:  # noqa: BLE001  an install that does not import is skipped with its error
            out[t] = dict(version=v, status="skipped", reason=f"import failed: {type(e).__name__}: {e}")
    if out.get("herculens_vmap", {}).get("status") == "ok":
        out["herculens_vmap"]["jax"] = version("jax")
        out["herculens"]["jax"] = version("jax")
    if out.get("paltax", {}).get("status") == "ok":
        out["paltax"]["jax"] = version("jax")
        out["paltax"]["note"] = "smooth scenes only (no point-mass profile); profile functions composed in one jax.jit"
    return out


def start_tools(scene, tools):
    "Each tool set up on `scene` and called once: its table row and, where it runs, the live tool."
    rows, live = {}, {}
    for t in tools:
        if t == "paltax" and scene.n_masses:
            rows[t] = dict(scene=scene.name, tool=t, timed=False,
                           note="no point-mass profile in paltax: not this scene")
            continue
        try:
            t0 = time.perf_counter()
            live[t] = MAKERS[t](scene)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            live[t].call(0)
            rows[t] = dict(scene=scene.name, tool=t, setup_s=round(setup, 4),
                           first_call_s=round(time.perf_counter() - t0, 4),
                           batch=live[t].batch)
        except Exception as e:  # noqa: BLE001  a peer that fails on a scene is reported, not fatal
            rows[t] = dict(scene=scene.name, tool=t, timed=False, note=f"failed: {type(e).__name__}: {e}"[:300])
            live.pop(t, None)
            continue
    return rows, live


def check_agreement(rows, live, check):
    "Each live tool's largest difference from lenstronomy (of the peak) on `check` images; those beyond TOL stop."
    ref = live["lenstronomy"].render(list(range(check)))
    for t in list(live):
        if not getattr(live[t], "checked", True):
            rows[t].update(agreement=None, note="not checked: draws its own lenses and adds noise")
            continue
        img = np.concatenate([live[t].call(j) for j in range(math.ceil(check / live[t].batch))])[:check]
        err = float(max(np.abs(img[i] - ref[i]).max() / np.abs(ref[i]).max() for i in range(check)))
        rows[t].update(agreement=err, agrees=err <= TOL)
        if err > TOL:
            rows[t].update(timed=False, note=f"differs from lenstronomy by {err:.2e} of the peak: not timed")
            live.pop(t)


def timed_rounds(rows, live, a):
    "Interleaved rounds of the live tools, sized by a warm call: rates, medians and ratios to the library in `rows`."
    est = {}
    for t, tool in live.items():            # size the rounds: images per round ~ round_seconds x this warm rate
        t0 = time.perf_counter()
        tool.call(1)
        est[t] = tool.batch / (time.perf_counter() - t0)
    size = {t: tool.batch * max(1, round(a.round_seconds * est[t] / tool.batch)) for t, tool in live.items()}
    rates = {t: [] for t in live}
    for r in range(a.rounds):
        for t, tool in live.items():
            t0 = time.perf_counter()
            tool.run(size[t])
            rates[t].append(size[t] / (time.perf_counter() - t0))
    lib = rates.get("deeplense_fastai")
    for t in live:
        med = statistics.median(rates[t])
        row = rows[t]
        row.update(timed=True, images_per_round=size[t], rates=[round(x, 2) for x in rates[t]],
                   median_img_s=round(med, 2))
        if lib:
            ratios = [x / y for x, y in zip(rates[t], lib)]
            row.update(ratios=[round(x, 4) for x in ratios], ratio_to_library=round(statistics.median(ratios), 4))


def measure_scene(scene, tools, a, log):
    "Agreement, warm-up and interleaved rounds of every available tool on one scene: the scene's table rows."
    rows, live = start_tools(scene, tools)
    check_agreement(rows, live, a.check)
    timed_rounds(rows, live, a)
    for t, row in rows.items():
        agree = float("nan") if row.get("agreement") is None else row["agreement"]
        log(f"| {scene.name} | {t} | {agree:.1e} | {row.get('median_img_s', '-')} | "
            f"{row.get('ratio_to_library', '-')} | {row.get('first_call_s', '-')} | {row.get('note', '')} |")
    return [rows[t] for t in tools if t in rows]


def measure_scenes(a, ok, done, partial):
    "The scenes of `a.scenes` not in `done` measured into it, each saved to `partial` when done (resumable)."
    for name in a.scenes.split(","):
        if name in done:
            print(f"# {name}: kept from {partial}")
            continue
        pname, sub = name.rsplit("_", 1)
        scene = Scene(pname, sub, a.images)
        rows = measure_scene(scene, ok, a, print)
        for r in rows:
            r.update(preset=pname, substructure=sub, n_masses=scene.n_masses,
                     flops_per_image=flops_per_image(scene.p, scene.n_masses))
        done[name] = rows
        write_json(partial, done)


def full_path_targets(table):
    """Issue 27's targets on the whole path with the main lens per image (`deeplense_fastai_make_images`): at least
    1.5x herculens (both forms) on every point-mass scene, at least 3x every peer on smooth scenes. One row per scene:
    the peers compared, those required but not timed (then `met` is None: not measured), and the smallest over the
    compared peers of the median over rounds of the full path's rate over the peer's. The peers render noiseless images
    from given parameters; the full path also draws the parameters and the noise."""
    out = []
    for scene in dict.fromkeys(r["scene"] for r in table):
        rows = {r["tool"]: r for r in table if r["scene"] == scene}
        timed = {t for t, r in rows.items() if r.get("timed")}
        smooth = scene.endswith("_smooth")
        need = 3.0 if smooth else 1.5
        required = [t for t in TOOLS if not t.startswith("deeplense_fastai")]
        required = required if smooth else [t for t in required if t.startswith("herculens")]
        compared = [t for t in required if t in timed]
        missing = [t for t in required if t not in timed and not (t == "paltax" and not smooth)]
        row = dict(scene=scene, need=need, want=f"{need:g}x {'every peer' if smooth else 'herculens'}",
                   peers_compared=compared, peers_missing=missing, peer=None, full_over_peer=None, met=None)
        full = rows.get("deeplense_fastai_make_images")
        if full and full.get("timed") and compared:
            per_peer = {t: statistics.median(f / b for f, b in zip(full["rates"], rows[t]["rates"])) for t in compared}
            row["peer"] = min(per_peer, key=per_peer.get)
            row["full_over_peer"] = round(per_peer[row["peer"]], 3)
            row["met"] = None if missing else row["full_over_peer"] >= need
        out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--round-seconds", type=float, default=0.4, help="about this long per tool per round")
    ap.add_argument("--images", type=int, default=32, help="distinct images drawn per scene (calls cycle over them)")
    ap.add_argument("--check", type=int, default=4, help="images per scene in the agreement check")
    ap.add_argument("--scenes", default=",".join(f"{p}_{s}" for p, s in SCENES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--smoke", action="store_true", help="under a minute: 2 short rounds, 2 images checked, no vmap")
    ap.add_argument("--resume", action="store_true", help="keep the scenes a previous run with these settings measured")
    ap.add_argument("--json", default=None, help="results file (default bench/results/peers.json; '' for none)")
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.round_seconds, a.images, a.check = 2, 0.02, BLOCK, 2
        if a.tools == ",".join(TOOLS): a.tools = ",".join(t for t in TOOLS if t != "herculens_vmap")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    tools = [t for t in a.tools.split(",") if t]
    if "lenstronomy" not in tools or "deeplense_fastai" not in tools:
        ap.error("--tools must include deeplense_fastai and lenstronomy (the subject and the oracle)")
    peers = availability(tools)
    if peers["lenstronomy"]["status"] != "ok":
        sys.exit("lenstronomy (the oracle) is not installed: pip install -e \".[dev]\"")
    ok = [t for t in tools if peers[t]["status"] == "ok"]
    settings = dict(rounds=a.rounds, round_seconds=a.round_seconds, images=a.images, check=a.check, smoke=a.smoke,
                    tools=ok, threads=torch.get_num_threads(), xla_flags=os.environ["XLA_FLAGS"], tolerance=TOL)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    from deeplense_fastai.core import cache_dir
    from deeplense_fastai.simulate import get_preset
    partial = cache_dir("bench", "peers") / f"partial-{key}.json"
    done = json.loads(partial.read_text()) if a.resume and partial.exists() else {}
    print("# one thread; peers: " + ", ".join(f"{t} {v.get('version')}" if v["status"] == "ok" else f"{t} skipped"
                                              for t, v in peers.items()))
    print("| scene | tool | agreement (of peak) | median img/s | ratio to library | first call s | note |")
    print("|---|---|---|---|---|---|---|")
    F = [matmul_rate()]
    measure_scenes(a, ok, done, partial)
    F.append(matmul_rate())
    rate = max(F)
    table = []
    for name in a.scenes.split(","):
        for r in done[name]:
            r["bound_img_s"] = round(rate / r["flops_per_image"], 1)
            if r.get("timed"):
                r["times_bound"] = round(r["bound_img_s"] / r["median_img_s"], 2)
            table.append(r)
    targets = full_path_targets(table)
    for t in targets:
        gone = f" (not timed: {', '.join(t['peers_missing'])})" if t["peers_missing"] else ""
        print(f"# target {t['scene']}: {t['want']}; measured {t['full_over_peer']}x {t['peer']}, met {t['met']}{gone}")
    # target_times_bound: issue 27's target, every scene within 8x of the bound
    bound = dict(target_times_bound=8, flops_per_pixel=FLOPS, transcendental=T,
                 psf="4 (2 r + 1) per pixel, r = int(truncation sigma + 0.5)",
                 matmul_flop_s=[round(x) for x in F], matmul_flop_s_used=round(rate),
                 psf_radius={p: psf_radius(get_preset(p)) for p in ("model_i", "model_ii")})
    if a.json != "":
        save("peers", path=a.json, table=table, targets=targets, peers=peers, bound=bound, settings=settings,
             tolerance=TOL,
             peer_versions={d: version(d) for d in ("caustics", "herculens", "paltax", "jax", "jaxlib", "lenstronomy")})
    return table


if __name__ == "__main__":
    main()
