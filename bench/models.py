"""Every registered model: parameters, multiply-accumulates at 150x150, and CPU throughput.

    python bench/models.py [--size 64] [--bs 32] [--steps 3]

Training throughput is forward + backward + Adam step on (bs, 1, size, size) batches; inference is a forward pass
in eval mode under no_grad. Both are the best of `--steps` timed steps after one warm-up step.
"""
import argparse
import platform
import time

import torch


def rate(f, n, steps):
    f()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter(); f(); best = min(best, time.perf_counter() - t0)
    return n / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    import warnings; warnings.filterwarnings("ignore")
    from deeplense_fastai.models import MODELS, get_model, count_parameters, count_macs
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"throughput at {a.size}x{a.size}, batch {a.bs}")
    print("| model | params | GMACs at 150x150 | train img/s | inference img/s |")
    print("|---|---|---|---|---|")
    x, y = torch.rand(a.bs, 1, a.size, a.size), torch.rand(a.bs, 1)
    for name in MODELS:
        torch.manual_seed(0)
        m = get_model(name)
        macs = count_macs(m, 150)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        def train_step():
            m.train(); loss = torch.nn.functional.mse_loss(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
        def infer():
            m.eval()
            with torch.no_grad(): m(x)
        print(f"| {name} | {count_parameters(m) / 1e6:.2f}M | {macs / 1e9:.2f} | {rate(train_step, a.bs, a.steps):.0f} | "
              f"{rate(infer, a.bs, a.steps):.0f} |", flush=True)


if __name__ == "__main__":
    main()
