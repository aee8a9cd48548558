"""Ready for a GPU, in one prepared script: simulation images/s at 64x64 and 150x150, online-training images/s for
ResNet18 and one proposal architecture (Attention U-Net, full width) with the simulation's share of a training step,
the training variants of bench/training.py on the device (channels-last, bfloat16 autocast), and the peers bench of
bench/peers.py with the library's simulator (and caustics) on the device.

    python bench/gpu.py                        # on one CUDA GPU; writes bench/results/gpu.json (after every part)
    python bench/gpu.py --parts sim,peers      # some of the parts: sim, train, variants, peers
    python bench/gpu.py --smoke                # under a minute on a CPU: checks the script (writes only with --json)
    pip install -e ".[peers]"                  # beforehand, for the peers part (a peer not installed is skipped)

Time on one H100 (an estimate: the script has not yet run on one; total_seconds and each part's seconds are recorded):
imports and cuda start 0.5 min, sim 0.5 min, train 4 runs capped at --max-seconds 30 (with the online warm-up) 2.5 min,
variants 1 min, peers 3 min (lenstronomy and the JAX peers on one CPU thread dominate): about 7.5 minutes. Each part
writes the results file when it ends, so a run cut short keeps the parts it finished.

sim: `make_images` on the device for Model II (64x64) and Model I (150x150), DeepLenseSim's 100-point vortex
(and the analytic segment), in the simulator's canonical blocks (512 images on a GPU), timed after a warm-up block,
with the device synchronised before the clock stops; the point-mass vortex also with the keyed counter noise stream
(`noise_stream='counter'`: the whole block's noise at once, no loop over per-image generators; on a CPU it is slower,
bench/results/noise.json).

train (online training): `online_dataloaders` simulating on the training device in the main process,
`regression_learner` (which switches on fastai's float16 mixed precision on CUDA), Ranger at a constant 1e-3; the clock
runs from the end of the warm-up batches to the end of the last timed batch, and the simulation's share is the time
spent inside OnlineSim (synchronised) over that interval. Each measurement stops after --batches batches or
--max-seconds seconds, whichever comes first. Goal on one H100 (issue 14): 20,000 simulated images/s at 150x150,
simulation under 10% of a ResNet18 step.

variants: bench/training.py's `variant_rates` on the device, for xresnet_small and resnet18 on a cached Model II
simulation made on the device (`cached_simulation('model_ii', 8000, 0)`, bs --bs): `fp32` (fastai's MixedPrecision
removed), `default` (the library's: float16 autocast with a grad scaler), `channels_last` (fastai's ChannelsLast with
the default's float16), `bf16` (fastai's MixedPrecision(amp_mode='bf16') instead of float16) and `channels_last+bf16`;
interleaved rounds, per-round ratios to the default, the loss of each variant on the same batches. On a CPU (smoke)
the variants are bench/training.py's: default float32, channels-last, CPU bf16 autocast.

peers: bench/peers.py's scenes, agreement check and interleaved rounds, with the library rendering on the device in
blocks of --peer-block images (returned to host memory as NumPy, as every peer's images are), caustics on the device
where it runs there (else on the CPU, said in its row), herculens and paltax on JAX's default backend (a GPU only where
a CUDA jaxlib is installed; its backend is recorded), lenstronomy (NumPy, the oracle) and every CPU peer on one CPU
thread, as in peers.json. cuDNN's TF32 is switched off for this part, so that the library's images agree with
lenstronomy's to float32 precision.
"""
import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from _results import header, write_json

PARTS = ("sim", "train", "variants", "peers")


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def sim_rate(preset, n, device, compile=False):
    "Simulated images/s for n images (after one warm-up block)."
    from deeplense_fastai.simulate import make_images, block_size
    blk = block_size(device)
    make_images(preset, 0, blk, 0, device=device, compile=compile)            # main-lens field, kernels, compilation
    sync(device)
    t0 = time.perf_counter()
    make_images(preset, blk, blk + n, 0, device=device, compile=compile)
    sync(device)
    return n / (time.perf_counter() - t0)


def train_rate(preset, arch, bs, batches, warm, max_seconds, device):
    "Online-training images/s and the simulation's share of the timed steps."
    from fastai.callback.core import Callback, CancelFitException
    from deeplense_fastai.core import set_seed
    from deeplense_fastai.learner import regression_learner
    from deeplense_fastai.data import online_dataloaders
    set_seed(0)
    dls = online_dataloaders(preset, epoch_size=(batches + warm + 1) * bs, bs=bs, valid=bs, device=device, augment=True)
    sim = dls.train.sim
    sim.sync = True

    class Clock(Callback):
        order = 55

        def after_batch(self):
            if not self.training: return
            if self.iter == warm - 1:
                sync(device)
                self.t0, self.s0, self.n = time.perf_counter(), sim.seconds, 0
            elif self.iter >= warm:
                self.n += len(self.yb[0])
                if self.iter - warm + 1 >= batches or time.perf_counter() - self.t0 > max_seconds:
                    sync(device)
                    self.t1 = time.perf_counter()
                    raise CancelFitException

    path = Path(os.environ.get("TMPDIR", "/tmp")) / "deeplense-gpu-bench"
    learn = regression_learner(dls, arch, opt="ranger", path=path)
    clock = Clock()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[clock])
    dt = clock.t1 - clock.t0
    sim_s = sim.seconds - clock.s0
    amp = any(type(cb).__name__ == "MixedPrecision" for cb in learn.cbs)
    return dict(preset=dls.lens_config.extra["preset"], image_px=dls.lens_config.image_shape[0], arch=arch, bs=bs,
                mixed_precision=amp, timed_batches=clock.n // bs, seconds=round(dt, 3),
                train_img_per_s=round(clock.n / dt, 1),
                sim_seconds=round(sim_s, 3), sim_share=round(sim_s / dt, 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--arch", default="attention_unet", help="the proposal architecture beside resnet18")
    ap.add_argument("--bs", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40, help="timed training batches per measurement")
    ap.add_argument("--max-seconds", type=float, default=30., help="cap on each timed training measurement")
    ap.add_argument("--n-sim", type=int, default=8192, help="images per simulation measurement")
    ap.add_argument("--compile", action="store_true", help="also measure the simulator with torch.compile")
    ap.add_argument("--parts", default="sim,train,variants,peers", help="comma list of: sim, train, variants, peers")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the variants and of the peers")
    ap.add_argument("--variant-batches", type=int, default=20, help="timed batches per variant and round")
    ap.add_argument("--peer-block", type=int, default=512, help="images per call of the library in the peers part")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script runs")
    ap.add_argument("--json", default=None, help="output (default bench/results/gpu.json; none with --smoke)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    inductor_cache = Path(__file__).resolve().parents[1] / ".cache" / "torchinductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    from deeplense_fastai.core import get_device
    device = get_device(a.device)
    if device.type == "cuda": torch.backends.cudnn.benchmark = True
    if a.smoke:
        a.bs, a.batches, a.n_sim, a.max_seconds, a.rounds, a.variant_batches, a.peer_block = 8, 2, 32, 30., 2, 2, 16
        if a.arch == "attention_unet": a.arch = "attention_unet_small"
    parts = [p for p in a.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown: ap.error(f"unknown parts {sorted(unknown)}: use sim, train, variants, peers")
    warm = 1 if a.smoke else 3
    json_path = a.json or (None if a.smoke else "bench/results/gpu.json")
    t_start = time.perf_counter()
    card = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    out = dict(header("gpu"), device=card, smoke=a.smoke, cuda=torch.version.cuda,
               goals=dict(sim_img_per_s_150px=20000, resnet18_sim_share=0.10, on="one H100"), parts=parts,
               part_seconds={}, simulation=[], training=[])
    print(f"# {card}; torch {torch.__version__}", flush=True)

    def done(part, t0):
        out["part_seconds"][part] = round(time.perf_counter() - t0, 1)
        out["total_seconds"] = round(time.perf_counter() - t_start, 1)
        print(f"# {part}: {out['part_seconds'][part]:.0f} s", flush=True)
        if json_path: write_json(json_path, out)

    steps = dict(sim=lambda: sim_part(a, device, out), train=lambda: train_part(a, device, out, warm),
                 variants=lambda: out.update(variants=variants_part(a, device)),
                 peers=lambda: out.update(peers=peers_part(a, device)))
    for part in [p for p in PARTS if p in parts]:      # in this order: peers last (it leaves torch on one thread)
        t0 = time.perf_counter()
        steps[part]()
        done(part, t0)
    print(f"# total {out['total_seconds']:.0f} s", flush=True)
    if json_path: print(f"written {json_path}")


def sim_part(a, device, out):
    from deeplense_fastai.simulate import get_preset
    from deeplense_fastai.streams import KeyedStreams
    keyed = lambda d: KeyedStreams.for_images(7, np.arange(64), device=d).bits(3, 4096).cpu()
    out["keyed_stream_bits_match_cpu"] = bool(torch.equal(keyed(device), keyed(torch.device("cpu"))))
    print(f"# keyed noise stream: the device's 64-bit words equal the CPU's: {out['keyed_stream_bits_match_cpu']}")
    print("| preset | px | vortex | noise stream | compile | simulated img/s |\n" + "|---" * 6 + "|", flush=True)
    for name in ("model_ii", "model_i"):
        for vortex, stream in (("points", "generator"), ("points", "counter"), ("segment", "generator")):
            for comp in ((False, True) if a.compile else (False,)):
                p = get_preset(name, vortex=vortex, noise_stream=stream)
                r = sim_rate(p, a.n_sim, device, comp)
                out["simulation"].append(dict(preset=name, image_px=p.instrument.npix, vortex=vortex, compile=comp,
                                              noise_stream=stream, n=a.n_sim, img_per_s=round(r, 1)))
                print(f"| {name} | {p.instrument.npix} | {vortex} | {stream} | {comp} | {r:.0f} |", flush=True)


def train_part(a, device, out, warm):
    print("| preset | px | arch | bs | mixed precision | train img/s | simulation share |\n" + "|---" * 7 + "|",
          flush=True)
    for name in ("model_ii", "model_i"):
        for arch in ("resnet18", a.arch):
            r = train_rate(name, arch, a.bs, a.batches, warm, a.max_seconds, device)
            out["training"].append(r)
            print(f"| {name} | {r['image_px']} | {arch} | {a.bs} | {r['mixed_precision']} | "
                  f"{r['train_img_per_s']:.0f} | "
                  f"{r['sim_share']:.1%} |", flush=True)


def variants_part(a, device):
    "bench/training.py's interleaved variants on `device` (fp32 and the library's float16 default too on cuda)."
    import tempfile
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.dataset import cached_simulation
    from training import VARIANTS, Timing, variant_rates
    cuda = device.type == "cuda"
    variants = ("default", "fp32") + VARIANTS[1:] if cuda else VARIANTS
    n, seed, bs = (8000, 0, a.bs) if not a.smoke else (256, 99, a.bs)
    data = cached_simulation("model_ii", n, seed, device=device if cuda else None)
    dls = lens_dataloaders(data, bs=bs, seed=0, progress=False, device=device)
    res = dict(data=f"cached_simulation('model_ii', {n}, {seed})", bs=bs, rounds=a.rounds, batches=a.variant_batches,
               variants=list(variants), tf32_matmul=torch.backends.cuda.matmul.allow_tf32 if cuda else None,
               loss="mse (standardised targets)", rows=[], table=[], same_batches={})
    print("| arch | variant | median img/s | median ratio to default | first-batch loss | valid loss (fp32) |\n"
          + "|---" * 6 + "|",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in (("xresnet_small",) if a.smoke else ("xresnet_small", "resnet18")):
            timing = Timing(a.rounds, a.variant_batches, 1 if a.smoke else 3)
            r = variant_rates(dls, arch, variants, timing, device, Path(tmp) / arch, log=lambda *x: None)
            res["rows"] += r["rows"]
            res["table"] += r["summary"]
            res["same_batches"][arch] = r["same_batches"]
            for t in r["summary"]:
                print(f"| {arch} | {t['variant']} | {t['median_img_per_s']:.0f} | {t['median_ratio_to_default']} | "
                      f"{t['first_batch_loss']} | {t['final_valid_loss_fp32']} |", flush=True)
    return res


def jax_backend_name():
    "The backend jax runs on, or why it is unavailable."
    try:
        import jax
        return jax.default_backend()
    except Exception as e:  # noqa: BLE001
        return f"unavailable: {type(e).__name__}"


def device_makers(P, device, block, jax_backend):
    """bench/peers.py's makers of the library, caustics and herculens_vmap, moved to `device` where they can run there
    (registered in `P.MAKERS`); returns the caustics maker, whose `last` says where its last scene ran."""
    cuda = device.type == "cuda"

    class LibraryDev(P.Library):
        batch = block

        def call(self, j):
            return self._render(self.scene.p, self.prm[j % len(self.prm)], device=device).cpu().numpy()

    class CausticsDev(P.Caustics):
        "caustics on the device where it runs there (a test render), else on the CPU; `last` says where, and why not."
        last = dict(device="cpu")

        def __init__(self, scene):
            super().__init__(scene)
            CausticsDev.last = dict(device="cpu")
            if not cuda: return
            cpu_args = self.args
            try:
                self.sim.to(device=device)
                self.args = [[x.to(device) if torch.is_tensor(x) else x for x in args] for args in cpu_args]
                with torch.no_grad(): self.sim(self.args[0]).cpu()
                CausticsDev.last = dict(device=str(device))
            except Exception as e:  # noqa: BLE001  caustics that cannot run on the device runs on the CPU
                self.sim.to(device="cpu")
                self.args = cpu_args
                CausticsDev.last = dict(device="cpu", why_not_device=f"{type(e).__name__}: {e}"[:200])

        def render(self, idx):
            with torch.no_grad():
                return np.stack([self.sim(self.args[b]).cpu().numpy() for b in idx]) * self.area

    class HerculensVmapDev(P.Herculens):
        batch = block if jax_backend == "gpu" else P.BLOCK

    P.MAKERS.update(deeplense_fastai=LibraryDev, caustics=CausticsDev, herculens_vmap=HerculensVmapDev)
    return CausticsDev


def peers_part(a, device):
    "bench/peers.py's scenes and protocol with the library (and caustics, where it can) on `device`."
    import argparse as _ap
    import peers as P                       # sets OMP/MKL/XLA one-thread variables for what is imported after it
    cuda = device.type == "cuda"
    if cuda: torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)                # the CPU peers as in peers.json (the GPU parts ran before this one)
    block = a.peer_block
    jax_backend = jax_backend_name()
    CausticsDev = device_makers(P, device, block, jax_backend)
    tools = [t for t in P.TOOLS if not (a.smoke and t == "herculens_vmap")]
    avail = P.availability(tools)
    res = dict(device=str(device), library_block=block, jax_backend=jax_backend, cudnn_tf32=False if cuda else None,
               peers=avail, table=[], protocol="bench/peers.py's (agreement with lenstronomy, then interleaved rounds)")
    if avail["lenstronomy"]["status"] != "ok":
        res["skipped"] = "lenstronomy (the oracle) is not installed: pip install -e \".[dev]\""
        print(f"# peers skipped: {res['skipped']}", flush=True)
        return res
    ok = [t for t in tools if avail[t]["status"] == "ok"]
    images = max(block, P.BLOCK, 32) if not a.smoke else P.BLOCK
    pa = _ap.Namespace(rounds=a.rounds, round_seconds=0.02 if a.smoke else 0.4, check=2 if a.smoke else 4)
    scenes = (["model_ii_smooth", "model_ii_vortex"] if a.smoke else [f"{p}_{s}" for p, s in P.SCENES])
    print("| scene | tool | agreement (of peak) | median img/s | ratio to library | first call s | note |\n"
          + "|---" * 7 + "|",
          flush=True)
    for name in scenes:
        pname, sub = name.rsplit("_", 1)
        scene = P.Scene(pname, sub, images)
        rows = P.measure_scene(scene, ok, pa, lambda x: print(x, flush=True))
        for r in rows:
            r.update(preset=pname, substructure=sub, n_masses=scene.n_masses,
                     device=str(device) if r["tool"] == "deeplense_fastai" else
                     ("jax " + str(jax_backend)) if r["tool"] in ("herculens", "herculens_vmap", "paltax") else "cpu")
            if r["tool"] == "caustics": r.update(CausticsDev.last)
        res["table"] += rows
    res["threads"] = torch.get_num_threads()
    return res


if __name__ == "__main__":
    main()
