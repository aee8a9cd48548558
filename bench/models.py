"""Every registered model: parameters, multiply-accumulates at 150x150, and CPU throughput.

    python bench/models.py [--size 64] [--bs 32] [--steps 3]

Training throughput is forward + backward + Adam step on (bs, 1, size, size) batches; inference is a forward pass
in eval mode under no_grad. Both are the best of `--steps` timed steps after one warm-up step. The rows go to
bench/results/models.json (with machine, versions, date and command).
"""
import argparse
import platform
import time

import torch

from _results import save


def rate(f, n, steps):
    f()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None, help="results file (default bench/results/models.json)")
    a = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.models import MODELS, get_model, count_parameters, count_macs
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"throughput at {a.size}x{a.size}, batch {a.bs}")
    print("| model | params | GMACs at 150x150 | train img/s | inference img/s |")
    print("|---|---|---|---|---|")
    x, y = torch.rand(a.bs, 1, a.size, a.size), torch.rand(a.bs, 1)
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        m = get_model(name)
        macs = count_macs(m, 150)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        def train_step():
            m.train()
            loss = torch.nn.functional.mse_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        def infer():
            m.eval()
            with torch.no_grad(): m(x)
        row = dict(model=name, params=count_parameters(m), gmacs_150px=round(macs / 1e9, 2),
                   train_img_s=round(rate(train_step, a.bs, a.steps), 1),
                   infer_img_s=round(rate(infer, a.bs, a.steps), 1))
        rows.append(row)
        print(f"| {name} | {row['params'] / 1e6:.2f}M | {row['gmacs_150px']:.2f} | {row['train_img_s']:.0f} | "
              f"{row['infer_img_s']:.0f} |", flush=True)
    save("models", a.json, image_px=a.size, bs=a.bs, steps=a.steps, table=rows)


if __name__ == "__main__":
    main()
