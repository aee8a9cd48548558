"""fastai's training-loop overhead against a bare PyTorch loop on the same model, data and batches.

    python bench/overhead.py [--arch resnet18] [--bs 64] [--batches 40] [--repeats 3]

Both loops consume the same fastai DataLoader (the same memory-mapped images, min-max normalisation and square
symmetries) and train the same model with the same optimiser (Adam, fixed learning rate); the fastai side is
`regression_learner(...).fit(1)` with its recorder and callbacks (training phase timed by a callback), the bare side is
a plain forward/backward/step loop. The ratio of the two times is fastai's overhead; the target is at most 1.10. The two
loops alternate `--repeats` times and the best time of each is kept (shared machines are noisy).
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from _results import save


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="results file (default bench/results/overhead.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.dataset import write_dataset
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.learner import regression_learner
    from fastai.optimizer import Adam
    root = Path(tempfile.mkdtemp())
    n = int(a.bs * a.batches / 0.9) + a.bs
    write_dataset(root / "d", "model_ii", n=n, seed=0, progress=False)
    dls = lens_dataloaders(root / "d", bs=a.bs, valid_pct=0.1, seed=0)
    dls.train.drop_last = True
    n_batches = len(dls.train)

    from fastai.callback.core import Callback

    class TrainTime(Callback):
        "Wall time of the training phase of the epoch only (no validation, no metrics)."
        def before_train(self): self.t0 = time.perf_counter()
        def after_train(self): self.seconds = time.perf_counter() - self.t0

    def fastai_epoch():
        learn = regression_learner(dls, a.arch, opt="adam", path=root / "run", metrics=[])
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-3)                 # builds the optimiser and warms up, outside the timing
            timer = TrainTime()
            learn.fit(1, 1e-3, cbs=timer)
        return timer.seconds

    def bare_epoch():
        from deeplense_fastai.models import get_model
        model = get_model(a.arch)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-5)
        loss_fn = torch.nn.MSELoss()
        model.train()
        t0 = time.perf_counter()
        for xb, yb in dls.train:
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0

    fa, ba = [], []
    for _ in range(a.repeats):
        ba.append(bare_epoch())
        fa.append(fastai_epoch())
    f, b = min(fa), min(ba)
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; {a.arch}, "
          f"bs {a.bs}, {n_batches} training batches of 64x64 Model II images; best of {a.repeats}")
    print("| loop | seconds per epoch (training only) | images/s | ratio |")
    print("|---|---|---|---|")
    print(f"| bare PyTorch | {b:.2f} | {n_batches * a.bs / b:.0f} | 1.00 |")
    print(f"| fastai Learner | {f:.2f} | {n_batches * a.bs / f:.0f} | {f / b:.3f} |")
    save("overhead", a.json, arch=a.arch, bs=a.bs, batches=n_batches, repeats=a.repeats, table=[
        dict(loop="bare PyTorch", seconds_per_epoch=round(b, 3), img_s=round(n_batches * a.bs / b, 1), ratio=1.0),
        dict(loop="fastai Learner", seconds_per_epoch=round(f, 3), img_s=round(n_batches * a.bs / f, 1),
             ratio=round(f / b, 3))])


if __name__ == "__main__":
    main()
