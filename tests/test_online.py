"""Online training data: reproducible from the seed, new images every epoch, disjoint shares across two real processes,
nothing written to disk, and a real fastai Learner training on it.

The oracles are the simulator's own per-index functions (`simulate.make_images`, `simulate.draw_parameters`) and the
index layout written out here by hand (training image p of epoch e is index 2**32 + e * E + p), never `online`'s code.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from deeplense_fastai.simulate import get_preset, make_images
from deeplense_fastai.data import online_dataloaders
from deeplense_fastai.online import OnlineEpoch

START = 2**32                       # the documented first training index
SMALL = get_preset("model_ii", npix=32)
ENV = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


def decoded(dls, y):
    cfg = dls.lens_config
    return y[:, 0].double().numpy() * cfg.target_std[0] + cfg.target_mean[0]


def passes(dls, n):
    return [[(x.clone(), y.clone()) for x, y in dls.train] for _ in range(n)]


def test_reproducible_from_seed_and_new_every_epoch():
    kw = dict(epoch_size=96, bs=32, valid=16, device="cpu", augment=False, norm="meanstd")
    a, b = online_dataloaders(SMALL, **kw), online_dataloaders(SMALL, **kw)
    pa, pb = passes(a, 2), passes(b, 2)
    for ea, eb in zip(pa, pb):                        # same seed: identical batches, epoch by epoch
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.train.epoch == 2
    mean, std = a.lens_config.image_stats
    for e in range(2):                                # epoch e is images 2**32 + 96 e + [0, 96), as the simulator makes them
        x = torch.cat([xb for xb, _ in pa[e]])[:, 0].double() * std + mean
        ref, prm = make_images(SMALL, START + 96 * e, START + 96 * (e + 1), 0)
        assert torch.allclose(x, ref.double(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        np.testing.assert_allclose(decoded(a, torch.cat([yb for _, yb in pa[e]])), prm["log10_m_axion"], atol=1e-5)
    y0, y1 = (decoded(a, torch.cat([yb for _, yb in p])) for p in pa)
    assert len(np.intersect1d(y0, y1)) == 0           # epoch 1 has new images
    other = online_dataloaders(SMALL, **dict(kw, seed=1))
    assert not torch.equal(next(iter(other.train))[1], pa[0][0][1])
    valid = torch.cat([x for x, _ in a.valid])[:, 0].double() * std + mean   # the fixed set: indices [0, 16)
    assert torch.allclose(valid, make_images(SMALL, 0, 16, 0)[0].double(), rtol=1e-5, atol=1e-5 * float(valid.abs().max()))


DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from deeplense_fastai.data import online_dataloaders
    from deeplense_fastai.online import OnlineSim, OnlineEpoch
    from deeplense_fastai.simulate import get_preset
    from deeplense_fastai.learner import regression_learner, fit, distributed
    seen, call = [], OnlineSim.__call__
    def recording(self, idx):
        seen.append([int(i) for i in idx])
        return call(self, idx)
    OnlineSim.__call__ = recording
    dls = online_dataloaders(get_preset('model_ii', npix=32), epoch_size=100, bs=16, valid=32, device='cpu', num_workers=0)
    learn = regression_learner(dls, 'xresnet_small', path=sys.argv[1], cbs=[OnlineEpoch()])
    with distributed(learn, cpu=True), learn.no_bar(), learn.no_logging():
        fit(learn, 2, 1e-3, log=None, checkpoint=False, save_best=False)
    out = os.path.join(sys.argv[1], f"seen-{os.environ['RANK']}.json")
    with open(out, 'w') as f: json.dump(dict(n_train=dls.lens_config.n_train, seen=seen), f)
    import torch.distributed as dist
    if dist.is_initialized():          # a clean shutdown: gloo threads left running abort the process at exit
        dist.barrier(); dist.destroy_process_group()
""")


def test_disjoint_shares_across_two_processes(tmp_path):
    "accelerate launch, 2 CPU processes, fastai's DistributedDL: every image of 2 epochs rendered exactly once."
    script = tmp_path / "ddp_online.py"
    script.write_text(DDP_SCRIPT)
    (tmp_path / "run").mkdir()
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "29517",
           "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, ACCELERATE_USE_CPU="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    E = 128                                           # 100 rounded up to 2 processes x 16 images
    for rank in (0, 1):                               # each rank wrote what it rendered (a file: stdouts interleave)
        res = json.loads((tmp_path / "run" / f"seen-{rank}.json").read_text())
        assert res["n_train"] == E
        batches = [b for b in res["seen"] if len(b) > 1]   # (a one-image call is fastai probing the batch types)
        got = sorted(i for b in batches for i in b)
        want = sorted(START + e * E + p for e in range(2) for p in range(rank * E // 2, (rank + 1) * E // 2))
        assert got == want, f"rank {rank}: {len(got)} images rendered, {len(set(got))} distinct, {len(want)} expected"
        assert all(len(b) == 16 for b in batches)     # whole batches: nothing padded, nothing dropped


NO_WRITES = textwrap.dedent("""
    from deeplense_fastai.data import online_dataloaders
    from deeplense_fastai.simulate import get_preset
    for workers in (0, 2):
        dls = online_dataloaders(get_preset('model_ii', npix=32), epoch_size=64, bs=16, valid=16, device='cpu',
                                 num_workers=workers, norm='meanstd')
        for _ in range(2):
            n = sum(len(x) for x, _ in dls.train)
        assert n == 64 and sum(len(x) for x, _ in dls.valid) == 16
    print('done')
""")


def test_no_disk_writes(tmp_path):
    "Building the loaders and two epochs (in-process and in workers) leave the working directory, cache and TMPDIR empty."
    cwd, cache, tmp = tmp_path / "cwd", tmp_path / "cache", tmp_path / "tmp"
    for d in (cwd, tmp): d.mkdir()
    env = dict(ENV, DEEPLENSE_CACHE=str(cache), XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-c", NO_WRITES], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-3000:]
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_learner_trains_and_exports(tmp_path):
    "The library's Learner, fit, export_run and predict on online data; OnlineEpoch keeps epochs in step."
    from deeplense_fastai.learner import regression_learner, fit, export_run
    from deeplense_fastai.inference import predict
    dls = online_dataloaders(SMALL, epoch_size=128, bs=32, valid=64, device="cpu")
    learn = regression_learner(dls, "xresnet_small", path=tmp_path, cbs=[OnlineEpoch()])
    with learn.no_bar(), learn.no_logging():
        fit(learn, 2, 3e-3, checkpoint=False)
    assert dls.train.epoch == 2 and dls.train.sim.images >= 256
    valid_loss = learn.recorder.values[-1][1]
    assert np.isfinite(valid_loss)
    run = export_run(learn, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "online" and cfg["preset"] == "model_ii" and cfg["n_train"] == 128
    assert (run / "model.pkl").stat().st_size < 4 * (run / "weights.safetensors").stat().st_size + 2**20   # no images inside
    pred = predict(run, dls.valid.dataset.src)
    assert len(pred) == 64 and pred["pred_log10_m_axion"].between(-26, -20).all()


def test_gpu_bench_smoke_on_cpu(tmp_path):
    "bench/gpu.py --smoke runs on a CPU and writes its JSON (simulation rates, training rates and shares)."
    out = tmp_path / "gpu.json"
    bench = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    r = subprocess.run([sys.executable, str(bench), "--smoke", "--device", "cpu", "--json", str(out)], capture_output=True,
                       text=True, env=dict(ENV, TMPDIR=str(tmp_path)), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {s["image_px"] for s in res["simulation"]} == {64, 150} and all(s["img_per_s"] > 0 for s in res["simulation"])
    assert [t["arch"] for t in res["training"]] == ["resnet18", "attention_unet_small"] * 2
    assert all(0 < t["sim_share"] < 1 and t["train_img_per_s"] > 0 for t in res["training"])
    assert res["smoke"] and res["device"]
    assert res["versions"]["torch"] == importlib.metadata.version("torch")   # the distribution's version, as bench records it
