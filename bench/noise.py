"""Noise in one batched stream (issue 27 item 3): the keyed counter stream against one generator per image.

    OMP_NUM_THREADS=1 python bench/noise.py                      # bench/results/noise.json
    OMP_NUM_THREADS=1 python bench/noise.py [--rounds 9] [--block 16] [--reps 3] [--json PATH]

For one canonical block of images (16 on a CPU) of each noise recipe (Model I's counts, Model II's CCD, and the counts
counted once of `fsub_physical`), the noiseless images are rendered once; then the preset's noise function of
`lensing` is timed three ways, in interleaved rounds (each round times every variant once, as the best of --reps calls):

- 'generator': one `torch.Generator` per image, seeded by `core.image_seed` (the default: `Observation.stream`
  'generator', the frozen bytes of the faithful presets);
- 'one_generator': the same function with torch's global generator for the whole block (not batch-independent; here
  only to measure what the loop over per-image generators itself costs);
- 'counter': the keyed counter stream of `streams.KeyedStreams` (`Observation.stream='counter'`).

Each call builds its random source too (the per-image generators and their seeds, or the keys), as `add_noise` does.
The figures are medians over rounds of the times (ms per image) and of the per-round ratios to 'generator' (the
machine is shared and noisy: only ratios from one run compare). Beside them, a statistics check of the two streams on
the block: the mean and the variance of (noisy - exposure * model) over the block, each stream's, so that a wrong
sampler shows as a different variance, not only as a different speed.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

from _results import save

RECIPES = (("model_i", "counts"), ("model_ii", "ccd"), ("fsub_physical", "counts_once"))


def noise_call(preset, model, params, stream):
    "The preset's noise function on the block with the chosen random source ('generator', 'one_generator', 'counter')."
    from deeplense_fastai.core import image_seed
    from deeplense_fastai.lensing import ccd_noise, counts_noise, counts_once_noise
    from deeplense_fastai.streams import KeyedStreams
    f = dict(counts=counts_noise, ccd=ccd_noise, counts_once=counts_once_noise)[preset.observation.noise]
    t = torch.as_tensor(params["exposure"], dtype=model.dtype)
    bg = preset.observation.background_rms

    def run():
        if stream == "generator":
            src = [torch.Generator().manual_seed(image_seed(0, int(i), 1)) for i in params["index"]]
        elif stream == "counter": src = KeyedStreams.for_images(0, params["index"])
        else: src = None
        return f(model, t, bg, src)
    return run


def best(f, reps):
    "Best of `reps` calls, seconds."
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return min(out)


def residual_stats(preset, model, params, out):
    "Mean and variance of (image - noiseless counts) over the block, in the image's units."
    t = torch.as_tensor(params["exposure"], dtype=torch.float64)[:, None, None]
    scale = t if preset.observation.noise in ("counts", "counts_once") else 1.0
    r = out.double() - model.double() * scale
    return dict(mean=float(r.mean()), var=float(r.var()))


def one_recipe(name, a):
    "Rounds of the three variants on one preset's block."
    from deeplense_fastai.simulate import SimSpec, get_preset, render
    p = get_preset(name)
    params = SimSpec(p, seed=0).draw(np.arange(a.block))
    model = render(p, params)
    calls = {s: noise_call(p, model, params, s) for s in ("generator", "one_generator", "counter")}
    rounds = []
    for _ in range(a.rounds):
        rounds.append({s: best(f, a.reps) for s, f in calls.items()})
    ms = {s: 1e3 * float(np.median([r[s] for r in rounds])) / a.block for s in calls}
    ratio = {s: float(np.median([r["generator"] / r[s] for r in rounds])) for s in ("one_generator", "counter")}
    checks = {s: residual_stats(p, model, params, calls[s]()) for s in ("generator", "counter")}
    return dict(preset=name, noise=p.observation.noise, npix=p.instrument.npix,
                ms_per_image_generator=ms["generator"], ms_per_image_one_generator=ms["one_generator"],
                ms_per_image_counter=ms["counter"], speed_one_generator_vs_generator=ratio["one_generator"],
                speed_counter_vs_generator=ratio["counter"],
                residual_var_counter_over_generator=checks["counter"]["var"] / checks["generator"]["var"],
                residual_mean_generator=checks["generator"]["mean"], residual_mean_counter=checks["counter"]["mean"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    ap.add_argument("--block", type=int, default=16, help="images per block (default 16, the CPU block)")
    ap.add_argument("--reps", type=int, default=3, help="calls per variant per round, best taken (default 3)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/noise.json)")
    a = ap.parse_args(argv)
    table = []
    for name, _ in RECIPES:
        row = one_recipe(name, a)
        print(f"{name:14s} {row['noise']:12s} generator {row['ms_per_image_generator']:.3f} ms/img, "
              f"one generator {row['speed_one_generator_vs_generator']:.2f}x, "
              f"counter {row['speed_counter_vs_generator']:.2f}x, "
              f"residual variance counter/generator {row['residual_var_counter_over_generator']:.3f}")
        table.append(row)
    save("noise", path=a.json, table=table, settings=dict(vars(a), command="OMP_NUM_THREADS=1 python bench/noise.py " +
                                                          " ".join(sys.argv[1:] if argv is None else argv)),
         threads=torch.get_num_threads(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"))


if __name__ == "__main__":
    main()
