"""The thread policy against one thread and torch's default, idle and beside a busy process (issue 27, item 5).

    python bench/threads.py          # -> bench/results/threads.json (about 10 minutes on 2 cores)

Why. torch runs CPU operations on one thread per core. Beside one busy process on a 2-core machine, Model I simulation
ran 5-30x slower on torch's default two threads than on one, and a training epoch 2.2x slower.
`core.apply_thread_policy` (applied by every computing command and, before every epoch, by the Learners) takes away the
cores that other runnable work at our priority holds. Target: the policy at least 0.9x the one-thread rate, idle and
loaded.

Protocol. Each measurement is a fresh process (so torch's thread pool starts as a user's would), in alternating rounds:
- `simulate`: `make_images('model_i', 0, 128)` axion images (150x150, 100-point vortex, noise), images per second;
- `train`: one epoch of `xresnet_small` on 1,000 Model II images (fixed data, bs 64, Ranger, one-cycle), images per
  second;
each under three settings: `policy` (no OMP_NUM_THREADS: the library's default), `one thread` (OMP_NUM_THREADS=1) and
`torch default` (torch.set_num_threads(os.cpu_count()), what torch does without the library). `loaded` runs them beside
one busy Python loop at the same priority; `idle` without it (other jobs of this machine at nice 19 may run: they are
recorded in the load average, and the policy does not count them, since the scheduler gives way to us).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import save

ROUNDS = 3
SETTINGS = ("policy", "one thread", "torch default")

SIM = """
import time, torch, os, json
from deeplense_fastai.core import apply_thread_policy
mode = os.environ['MODE']
if mode == 'policy': apply_thread_policy()
elif mode == 'torch default': torch.set_num_threads(os.cpu_count())
from deeplense_fastai.simulate import make_images, get_preset
p = get_preset('model_i')
make_images(p, 0, 8, 0, ('axion',), True, 'cpu')
t0 = time.perf_counter(); make_images(p, 0, 128, 0, ('axion',), True, 'cpu'); dt = time.perf_counter() - t0
print(json.dumps(dict(rate=128 / dt, threads=torch.get_num_threads())))
"""

TRAIN = """
import time, torch, os, json, sys
from deeplense_fastai.core import apply_thread_policy
mode = os.environ['MODE']
if mode == 'policy': apply_thread_policy()
elif mode == 'torch default': torch.set_num_threads(os.cpu_count())
from deeplense_fastai.data import lens_dataloaders
from deeplense_fastai.learner import regression_learner, ThreadPolicy
dls = lens_dataloaders(sys.argv[1], bs=64, progress=False)
learn = regression_learner(dls, 'xresnet_small', path=sys.argv[2])
if mode != 'policy': learn.remove_cbs([c for c in learn.cbs if isinstance(c, ThreadPolicy)])
with learn.no_bar(), learn.no_logging():
    learn.fit_one_cycle(1, 3e-3)                      # warm-up epoch: allocations, kernels
    t0 = time.perf_counter(); learn.fit_one_cycle(1, 3e-3); dt = time.perf_counter() - t0
print(json.dumps(dict(rate=len(dls.train_ds) / dt, threads=torch.get_num_threads())))
"""


def measure(code: str, mode: str, *args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if mode == "one thread": env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=dict(env, MODE=mode), capture_output=True,
                       text=True)
    if r.returncode: sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_case(name: str, code: str, loaded: bool, *args) -> list:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    rows = []
    try:
        time.sleep(0.5)
        for k in range(ROUNDS):
            for mode in (SETTINGS if k % 2 == 0 else SETTINGS[::-1]):      # alternate the order between rounds
                m = measure(code, mode, *args)
                rows.append(dict(case=name, load="loaded" if loaded else "idle", setting=mode, round=k, **m,
                                 load_average=[round(x, 2) for x in os.getloadavg()]))
                print(rows[-1], flush=True)
    finally:
        if busy:
            busy.kill()
            busy.wait()
    return rows


def summary(rows: list) -> list:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for load in ("idle", "loaded"):
            sel = [r for r in rows if r["case"] == case and r["load"] == load]
            if not sel: continue
            med = {s: float(np.median([r["rate"] for r in sel if r["setting"] == s])) for s in SETTINGS}
            thr = {s: sorted({r["threads"] for r in sel if r["setting"] == s}) for s in SETTINGS}
            out.append(dict(case=case, load=load, **{f"{s} rate": round(med[s], 1) for s in SETTINGS},
                            **{f"{s} threads": thr[s] for s in SETTINGS},
                            policy_over_one=round(med["policy"] / med["one thread"], 3),
                            default_over_one=round(med["torch default"] / med["one thread"], 3)))
    return out


def main():
    import tempfile
    from deeplense_fastai.dataset import write_dataset
    tmp = Path(tempfile.mkdtemp())
    write_dataset(tmp / "d", "model_ii", n=1000, seed=0, progress=False)
    rows = []
    for loaded in (False, True):
        rows += run_case("simulate model_i (128 images)", SIM, loaded)
        rows += run_case("train xresnet_small (1 epoch, 900 images)", TRAIN, loaded, tmp / "d", tmp / "run")
    table = summary(rows)
    for t in table: print(t)
    save("threads", settings=dict(rounds=ROUNDS, cores=os.cpu_count()), table=table, rows=rows)


if __name__ == "__main__":
    main()
