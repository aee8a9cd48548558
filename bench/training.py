"""fastai's training loop with channels-last and bfloat16 autocast against the default (issue 27, item 6).

    OMP_NUM_THREADS=1 nice -n 10 python bench/training.py      # -> bench/results/training.json (about 7 min, 1 thread)
    python bench/training.py --smoke --json ''                     # seconds: checks that the script runs

What is timed: the library's own Learner, `regression_learner(dls, arch)` (Ranger, the default loss `mse` on
standardised targets, its callbacks), on `lens_dataloaders` of a cached Model II simulation
(`dataset.cached_simulation('model_ii', 2000, 99)`: 64x64, 1,800 training images, bs 64, the square's symmetries),
`learn.fit(1, 1e-3)` (constant learning rate) stopped after --batches training batches; the clock runs over the whole
`fit` call (the loop, data loading and augmentation included, no validation). Variants:
- `default`: float32, contiguous memory (what the library does on a CPU);
- `channels_last`: fastai's `ChannelsLast` callback (the model in torch.channels_last; activations follow it);
- `bf16`: `torch.autocast('cpu', dtype=torch.bfloat16)` around the forward pass and the loss, by a small callback here
  (`CPUAutocast`): fastai's own `MixedPrecision(amp_mode='bf16')` opens a *cuda* autocast, which does nothing on a CPU;
- `channels_last+bf16`: both.
Every variant starts from the same weights (`set_seed(0)` before the learner), runs --warmup untimed batches, then
--rounds interleaved rounds (default, channels_last, bf16, channels_last+bf16, then again; short rounds of a few
batches, so that a change in the machine's load falls on the variants of a round alike), each round seeded so that
every variant trains on the same batches in it (a checksum of each batch is compared). Per round images/s, the ratio
of each variant to the default in the same round, and the medians. Loss: the training loss of every batch (the same
batches for every variant), its mean per round, and at the end the float32 validation loss of each variant's weights on
the same --valid-images held-out images; the first warm-up batch (same weights, same batch) shows the forward
pass's precision alone. The CPU's flags that matter for bf16 (avx512_bf16, amx_bf16) are recorded from /proc/cpuinfo.

Run it with OMP_NUM_THREADS=1: on a shared 2-core machine more threads measure the neighbours. The load average at
the start and at each round is recorded.

`variant_rates` is also what bench/gpu.py runs on cuda (where the library's default is fastai's float16
MixedPrecision, and bf16 is fastai's MixedPrecision(amp_mode='bf16')).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from _results import save

VARIANTS = ("default", "channels_last", "bf16", "channels_last+bf16")
ARCHS = ("xresnet_small", "resnet18")


class Timing(NamedTuple):
    "How `variant_rates` times the variants."
    rounds: int  # interleaved rounds of every variant
    batches: int  # timed training batches per variant and round
    warmup: int  # untimed batches per variant before the rounds


def cpu_flags() -> dict:
    "The /proc/cpuinfo flags that decide whether bfloat16 matmuls and convolutions have hardware support."
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
    return {f: f in flags for f in keep}


def make_callbacks():
    "The callbacks the variants add (fastai's imports are deferred until a bench runs)."
    from fastai.callback.core import Callback, CancelFitException

    class CPUAutocast(Callback):
        "bfloat16 autocast on the CPU around the forward pass and the loss (fastai's MixedPrecision opens a cuda one)."
        order = 10

        def before_batch(self):
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

        def after_pred(self):
            self.learn.pred = self.pred.float() if torch.is_tensor(self.pred) else self.pred

        def after_loss(self): self.ctx.__exit__(None, None, None)

    class Steps(Callback):
        "Record each training batch's loss and checksum; stop the fit after `n` training batches."
        order = 90

        def __init__(self, n, device):
            self.n, self.device, self.losses, self.sums = n, device, [], []

        def after_batch(self):                   # tensors, read after the fit: no device sync inside the loop
            if not self.training: return
            self.losses.append(self.loss.detach())
            self.sums.append(self.xb[0].detach().float().sum())
            if len(self.losses) >= self.n:
                if self.device.type == "cuda": torch.cuda.synchronize(self.device)
                raise CancelFitException

        def after_fit(self): self.losses, self.sums = [float(x) for x in self.losses], [float(x) for x in self.sums]

    return CPUAutocast, Steps


def with_variant(learn, variant: str, device):
    "Add the callbacks of `variant` to a learner from `regression_learner` (on cuda: fp16 AMP is the library default)."
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.fp16 import MixedPrecision
    CPUAutocast, _ = make_callbacks()
    if device.type == "cuda" and ("bf16" in variant or variant == "fp32"):
        learn.remove_cbs([c for c in learn.cbs if isinstance(c, MixedPrecision)])
    if "channels_last" in variant: learn.add_cb(ChannelsLast())
    if "bf16" in variant: learn.add_cb(MixedPrecision(amp_mode="bf16") if device.type == "cuda" else CPUAutocast())
    return learn


def valid_loss(learn, xb, yb) -> float:
    "float32, eval-mode loss of the learner's weights on fixed held-out images (the same for every variant)."
    m = learn.model
    m.eval()
    with torch.no_grad():
        out = float(learn.loss_func(m(xb.contiguous()), yb))
    m.train()
    return out


def same_batches(dls, seed: int):
    "Seed everything that draws a training batch: torch and NumPy (augmentation) and the DataLoader's own shuffle rng."
    import random
    from deeplense_fastai.core import set_seed
    set_seed(seed)
    dls.train.rng = random.Random(seed)     # fastai's DataLoader shuffles with its own generator, reseeded from itself


def variant_rates(dls, arch: str, variants, timing: Timing, device, path, valid_images=256, log=print) -> dict:
    "Interleaved rounds of `variants` of `regression_learner(dls, arch)`: rows per (variant, round) and a summary."
    rounds, batches, warmup = timing
    from deeplense_fastai.core import set_seed
    from deeplense_fastai.learner import regression_learner, weights_digest
    _, Steps = make_callbacks()
    learners, digests, first = {}, {}, {}
    for v in variants:
        set_seed(0)
        learn = with_variant(regression_learner(dls, arch, path=path), v, device)
        digests[v] = weights_digest(learn.model)
        same_batches(dls, 1)
        s = Steps(warmup, device)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-3, cbs=[s])
        learners[v], first[v] = learn, s.losses[0]
    assert len(set(digests.values())) == 1, "the variants must start from the same weights"
    vx, vy = [], []
    for xb, yb in dls.valid:
        vx.append(xb)
        vy.append(yb)
        if sum(len(x) for x in vx) >= valid_images: break
    vx, vy = torch.cat(vx)[:valid_images], torch.cat(vy)[:valid_images]
    rows = []
    for r in range(rounds):
        for v in variants:
            learn = learners[v]
            s = Steps(batches, device)
            same_batches(dls, 100 + r)              # the same batches (order, augmentation) for every variant
            if device.type == "cuda": torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with learn.no_bar(), learn.no_logging():
                learn.fit(1, 1e-3, cbs=[s])
            dt = time.perf_counter() - t0
            n = batches * dls.train.bs                # fastai's training DataLoader drops the last partial batch
            rows.append(dict(arch=arch, variant=v, round=r, seconds=round(dt, 4), img_per_s=round(n / dt, 2),
                             mean_train_loss=statistics.fmean(s.losses), batch_sums=s.sums,
                             load_average=[round(x, 2) for x in os.getloadavg()]))
            log(f"{arch} round {r} {v}: {n / dt:.1f} img/s, mean loss {rows[-1]['mean_train_loss']:.4f}")
    base = {r["round"]: r for r in rows if r["variant"] == variants[0]}
    same = all(max(abs(a - b) for a, b in zip(r["batch_sums"], base[r["round"]]["batch_sums"])) <=
               1e-3 * max(1., max(abs(b) for b in base[r["round"]]["batch_sums"])) for r in rows)
    summary = []
    for v in variants:
        sel = [r for r in rows if r["variant"] == v]
        ratios = [r["img_per_s"] / base[r["round"]]["img_per_s"] for r in sel]
        d_loss = [r["mean_train_loss"] - base[r["round"]]["mean_train_loss"] for r in sel]
        med = statistics.median(r["img_per_s"] for r in sel)
        summary.append(dict(arch=arch, variant=v, median_img_per_s=round(med, 1),
                            ratios_to_default=[round(x, 3) for x in ratios],
                            median_ratio_to_default=round(statistics.median(ratios), 3),
                            min_ratio=round(min(ratios), 3), max_ratio=round(max(ratios), 3),
                            first_batch_loss=round(first[v], 5),
                            first_batch_loss_minus_default=float(f"{first[v] - first[variants[0]]:.3g}"),
                            last_round_train_loss=round(sel[-1]["mean_train_loss"], 5),
                            train_loss_minus_default=[float(f"{x:.3g}") for x in d_loss],
                            final_valid_loss_fp32=round(valid_loss(learners[v], vx, vy), 5)))
    for r in rows: del r["batch_sums"]
    return dict(rows=rows, summary=summary, same_batches=same, start_weights=digests[variants[0]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batches", type=int, default=4, help="timed training batches per variant and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per variant before the rounds")
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="images of the cached Model II simulation (seed 99)")
    ap.add_argument("--smoke", action="store_true", help="2 rounds of 2 batches of 16 images, xresnet_small only")
    ap.add_argument("--json", default=None, help="results file (default bench/results/training.json; '' for none)")
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.batches, a.warmup, a.bs, a.archs = 2, 2, 1, 16, "xresnet_small"
    import warnings
    warnings.filterwarnings("ignore")
    from deeplense_fastai.data import lens_dataloaders
    from deeplense_fastai.dataset import cached_simulation
    import tempfile
    device = torch.device("cpu")
    load0 = [round(x, 2) for x in os.getloadavg()]
    data = cached_simulation("model_ii", a.n, 99)
    dls = lens_dataloaders(data, bs=a.bs, seed=0, progress=False)
    print(f"# {torch.get_num_threads()} thread(s), load average {load0}, cpu flags {cpu_flags()}", flush=True)
    out = dict(rows=[], table=[], same_batches={})
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs.split(","):
            res = variant_rates(dls, arch, VARIANTS, Timing(a.rounds, a.batches, a.warmup), device, Path(tmp) / arch)
            out["rows"] += res["rows"]
            out["table"] += res["summary"]
            out["same_batches"][arch] = res["same_batches"]
    print("| arch | variant | median img/s | ratio to default | ratio range | first-batch loss | valid loss fp32 |"
          "\n"
          + "|---" * 7 + "|")
    for t in out["table"]:
        print(f"| {t['arch']} | {t['variant']} | {t['median_img_per_s']} | {t['median_ratio_to_default']} | "
              f"{t['min_ratio']}-{t['max_ratio']} | {t['first_batch_loss']} | {t['final_valid_loss_fp32']} |")
    settings = dict(data=f"cached_simulation('model_ii', {a.n}, 99)", n_train=len(dls.train_ds), bs=a.bs,
                    rounds=a.rounds, batches=a.batches, warmup=a.warmup, loss="mse (standardised targets)",
                    opt="ranger", lr=1e-3, variants=list(VARIANTS), threads=torch.get_num_threads(), smoke=a.smoke)
    if a.json != "":
        save("training", path=a.json, settings=settings, cpu_flags=cpu_flags(), load_average_start=load0,
             mkldnn_bf16=bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
             cpu_capability=torch.backends.cpu.get_cpu_capability(), **out)


if __name__ == "__main__":
    main()
