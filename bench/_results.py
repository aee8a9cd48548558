"""One way for every benchmark to write what it measured: bench/results/<name>.json.

Each file carries, beside the results, where and how they were measured: the machine (CPU model, cores, torch
threads, GPU), the library versions, the UTC date and the exact command line. Tabular results go under `table`, a
list of records (one dict per row), so that the performance page can render any results file the same way.

    from _results import save
    save("simulate", table=rows, settings=vars(args))      # -> bench/results/simulate.json
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where the benchmark ran: platform, CPU model and cores, torch threads, GPU (None without CUDA), and the load
    average when the results are written (other jobs on a shared machine slow a measurement down)."""
    out = dict(platform=platform.platform(), cpu=cpu_model(), cpus=os.cpu_count(), gpu=None,
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    if "torch" in sys.modules:        # report torch's state only where the benchmark uses torch
        import torch
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    if hasattr(os, "getloadavg"):
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def versions() -> dict:
    """Versions of Python and of the libraries the benchmarks use (None where a library is not installed)."""
    out = dict(python=platform.python_version())
    for name in ("torch", "fastai", "numpy", "lenstronomy", "deeplense_fastai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def command(argv: list[str] | None = None) -> str:
    """The command line that ran the benchmark, with the script's path relative to the repository."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT) if argv and argv[0] else "?"
    env = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if os.environ.get("OMP_NUM_THREADS") else []
    return " ".join(env + ["python", script] + list(argv[1:]))


def trained(valid_losses) -> bool:
    """Did a run train at all? Its best validation loss fell below its first epoch's. A run that never did is not a
    baseline: the benches mark it `trained: false` and refuse to rank or compare it."""
    return bool(min(valid_losses) < valid_losses[0])


def mean_sd(values) -> dict:
    """Mean and sample sd (None for one value) of a figure over training seeds, with how many seeds."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None
    return dict(n=len(v), mean=m, sd=sd)


def versus(a: dict, b: dict, min_seeds: int = 3) -> str:
    """Is `a` lower than `b` beyond seed noise? Both are `mean_sd` of a figure where lower is better (an MAE), and may
    carry `trained`. 'first lower', 'second lower', 'not separated' (the means differ by at most twice the larger seed
    sd), or why no call is made: a run that never trained is not a baseline, fewer than `min_seeds` seeds measure too
    little noise."""
    if not (a.get("trained", True) and b.get("trained", True)):
        return "refused: a run that never trained is not a baseline"
    if min(a["n"], b["n"]) < min_seeds or a["sd"] is None or b["sd"] is None:
        return f"fewer than {min_seeds} training seeds: not called"
    d, bar = b["mean"] - a["mean"], 2 * max(a["sd"], b["sd"])
    return "not separated" if abs(d) <= bar else ("first lower" if d > 0 else "second lower")


def header(name: str) -> dict:
    """The fields every results file starts with."""
    return dict(benchmark=name, command=command(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                machine=machine(), versions=versions())


def write_json(path, doc: dict) -> Path:
    """Write `doc` to `path` atomically (a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def save(name: str, path=None, **results) -> Path:
    """Write bench/results/<name>.json (or `path`): the header of `name` followed by `results`."""
    path = Path(path) if path else RESULTS / f"{name}.json"
    out = write_json(path, {**header(name), **results})
    print(f"written {os.path.relpath(out, Path.cwd())}")
    return out
