"""Data-loader speed against the model's training step, per source.

    python bench/data.py [--bs 64] [--batches 30] [--workers 0]

For each source kind (native dataset, DeepLense per-file directory through its cache, the 2022 memmap pair, plain
arrays) at 64x64 and for a native 150x150 set, prints the batches per second the training DataLoader delivers
(augmentation and normalisation included) next to the steps per second of a ResNet18 training step (forward,
backward, Adam) at the same batch size on the same machine. Data loading must never be the bottleneck: the ratio
should be at least 5. The rows go to bench/results/data.json (with machine, versions, date and command).
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _results import save


def loader_rate(dls, batches):
    it = iter(dls.train)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try: next(it)
        except StopIteration:
            it = iter(dls.train)
            next(it)
        n += 1
    return n / (time.perf_counter() - t0)


def step_rate(size, bs, steps=5):
    from deeplense_fastai.models import get_model
    model = get_model("resnet18")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(bs, 1, size, size), torch.rand(bs, 1)
    def step():
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", default=None, help="results file (default bench/results/data.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import lens_dataloaders
    tmp = Path(tempfile.mkdtemp())
    os.environ["DEEPLENSE_CACHE"] = str(tmp / "cache")
    n64, n150 = 4 * a.bs * 8, 2 * a.bs * 4
    write_dataset(tmp / "native64", "model_ii", n=n64, seed=0, progress=False)
    write_dataset(tmp / "dl64", "model_ii", n=n64, seed=0, fmt="deeplense", progress=False)
    write_dataset(tmp / "native150", "model_i", n=n150, seed=0, progress=False)
    imgs = np.load(tmp / "native64" / "images.npy")[:, 0]
    lab = pd.read_csv(tmp / "native64" / "labels.csv")
    (tmp / "mm").mkdir()
    np.clip(imgs / imgs.max() * 30000, 0, 32767).astype(np.int16).tofile(tmp / "mm" / "images_mmep.npy")
    (10 ** lab.log10_m_axion.to_numpy()).astype(np.float32).tofile(tmp / "mm" / "masses_mmep.npy")
    np.save(tmp / "arrays.npy", imgs.astype(np.float32))
    lab[["log10_m_axion"]].to_csv(tmp / "arrays.csv", index=False)
    sources = [("native (model_ii)", tmp / "native64", 64, {}), ("DeepLense files, cached", tmp / "dl64", 64, {}),
               ("memmap pair (int16)", tmp / "mm", 64, {"shape": (n64, 64, 64)}),
               ("plain .npy + CSV", tmp / "arrays.npy", 64, {}),
               ("native (model_i)", tmp / "native150", 150, {})]
    steps = {64: step_rate(64, a.bs), 150: step_rate(150, a.bs)}
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; bs {a.bs}; "
          f"workers {a.workers}; minmax + square symmetries")
    print("| source | image | loader batches/s | ResNet18 train steps/s | ratio |")
    print("|---|---|---|---|---|")
    rows = []
    for name, path, size, kw in sources:
        dls = lens_dataloaders(path, bs=a.bs, num_workers=a.workers, progress=False, **kw)
        r = loader_rate(dls, a.batches)
        rows.append(dict(source=name, image_px=size, loader_batches_s=round(r, 1), train_steps_s=round(steps[size], 2),
                         ratio=round(r / steps[size], 1)))
        print(f"| {name} | {size}x{size} | {r:.1f} | {steps[size]:.2f} | {r / steps[size]:.0f}x |", flush=True)
    save("data", a.json, bs=a.bs, workers=a.workers, batches=a.batches, table=rows)


if __name__ == "__main__":
    main()
