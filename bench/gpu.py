"""Ready for a GPU: simulation images/s at 64x64 and 150x150, online-training images/s with mixed precision for ResNet18
and one proposal architecture (Attention U-Net, full width), and the simulation's share of a training step.

    python bench/gpu.py                        # on one CUDA GPU, under ten minutes; writes bench/results/gpu.json
    python bench/gpu.py --smoke                # a minute on a CPU: checks the script (writes only with --json)

Simulation: `make_images` on the device for Model II (64x64) and Model I (150x150), DeepLenseSim's 100-point vortex
(and the analytic segment), in the simulator's canonical blocks (512 images on a GPU), timed after a warm-up block,
with the device synchronised before the clock stops. Training: `online_dataloaders` simulating on the training device
in the main process, `regression_learner` (which switches on fastai's mixed precision on CUDA), Ranger at a constant
1e-3; the clock runs from the end of the warm-up batches to the end of the last timed batch, and the simulation's share
is the time spent inside OnlineSim (synchronised) over that interval. Each training measurement stops after
--batches batches or --max-seconds seconds, whichever comes first. Goal on one H100 (issue 14): 20,000 simulated
images/s at 150x150, simulation under 10% of a ResNet18 step.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _results import header, write_json


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

    learn = regression_learner(dls, arch, opt="ranger", path=Path(os.environ.get("TMPDIR", "/tmp")) / "deeplense-gpu-bench")
    clock = Clock()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[clock])
    dt = clock.t1 - clock.t0
    sim_s = sim.seconds - clock.s0
    amp = any(type(cb).__name__ == "MixedPrecision" for cb in learn.cbs)
    return dict(preset=dls.lens_config["preset"], image_px=dls.lens_config["image_shape"][0], arch=arch, bs=bs,
                mixed_precision=amp, timed_batches=clock.n // bs, seconds=round(dt, 3), train_img_per_s=round(clock.n / dt, 1),
                sim_seconds=round(sim_s, 3), sim_share=round(sim_s / dt, 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--arch", default="attention_unet", help="the proposal architecture beside resnet18")
    ap.add_argument("--bs", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40, help="timed training batches per measurement")
    ap.add_argument("--max-seconds", type=float, default=60., help="cap on each timed training measurement")
    ap.add_argument("--n-sim", type=int, default=8192, help="images per simulation measurement")
    ap.add_argument("--compile", action="store_true", help="also measure the simulator with torch.compile")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script runs")
    ap.add_argument("--json", default=None, help="output (default bench/results/gpu.json; none with --smoke)")
    a = ap.parse_args()
    import warnings; warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torchinductor"))
    from deeplense_fastai.core import get_device
    from deeplense_fastai.simulate import get_preset
    import fastai, deeplense_fastai
    device = get_device(a.device)
    if device.type == "cuda": torch.backends.cudnn.benchmark = True
    if a.smoke:
        a.bs, a.batches, a.n_sim, a.max_seconds = 8, 2, 32, 30.
        if a.arch == "attention_unet": a.arch = "attention_unet_small"
    warm = 1 if a.smoke else 3
    json_path = a.json or (None if a.smoke else "bench/results/gpu.json")
    t_start = time.perf_counter()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    out = dict(header("gpu"), device=card, smoke=a.smoke, cuda=torch.version.cuda,
               goals=dict(sim_img_per_s_150px=20000, resnet18_sim_share=0.10, on="one H100"), simulation=[], training=[])
    print(f"# {card}; torch {torch.__version__}", flush=True)
    print("| preset | px | vortex | compile | simulated img/s |\n|---|---|---|---|---|", flush=True)
    for name in ("model_ii", "model_i"):
        for vortex in ("points", "segment"):
            for comp in ((False, True) if a.compile else (False,)):
                p = get_preset(name, vortex=vortex)
                r = sim_rate(p, a.n_sim, device, comp)
                out["simulation"].append(dict(preset=name, image_px=p.instrument.npix, vortex=vortex, compile=comp, n=a.n_sim, img_per_s=round(r, 1)))
                print(f"| {name} | {p.instrument.npix} | {vortex} | {comp} | {r:.0f} |", flush=True)
    print("| preset | px | arch | bs | mixed precision | train img/s | simulation share |\n|---|---|---|---|---|---|---|", flush=True)
    for name in ("model_ii", "model_i"):
        for arch in ("resnet18", a.arch):
            r = train_rate(name, arch, a.bs, a.batches, warm, a.max_seconds, device)
            out["training"].append(r)
            print(f"| {name} | {r['image_px']} | {arch} | {a.bs} | {r['mixed_precision']} | {r['train_img_per_s']:.0f} | {r['sim_share']:.1%} |", flush=True)
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"# total {out['total_seconds']:.0f} s", flush=True)
    if json_path:
        write_json(json_path, out)
        print(f"written {json_path}")


if __name__ == "__main__":
    main()
