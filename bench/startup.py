"""Start-up time of the `deeplense` command, as a user meets it: `deeplense --help`, and the first line of
`deeplense info DIR` on a small simulated dataset, each a fresh process with no terminal (the median of --repeat runs).

    python bench/startup.py [--repeat 5]        # -> bench/results/startup.json

Targets (issue 25): `--help` within 1.5 s and the first line of `info` within 3 s on these machines. The file records
the medians and every run, with the machine's load: a busy machine slows imports too.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import header, write_json, RESULTS


def first_line_seconds(args, env) -> float:
    """Seconds from starting `python -m deeplense_fastai.cli ARGS` to its first line on stdout (the process then
    finishes)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "deeplense_fastai.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, env=env, text=True)
    p.stdout.readline()
    dt = time.perf_counter() - t0
    p.communicate()
    if p.returncode: raise SystemExit(f"deeplense {' '.join(args)} failed ({p.returncode})")
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from deeplense_fastai.dataset import write_dataset
    with tempfile.TemporaryDirectory() as d:
        write_dataset(Path(d) / "ds", "model_ii", n=64, seed=0, progress=False, log=lambda *x: None)
        env = dict(os.environ, DEEPLENSE_CACHE=str(Path(d) / "cache"))
        rows = []
        for name, args, target in (("help", ["--help"], 1.5), ("info first line", ["info", str(Path(d) / "ds")], 3.0)):
            first_line_seconds(args, env)  # warm the file cache once, as a second call would be
            times = [first_line_seconds(args, env) for _ in range(a.repeat)]
            rows.append(dict(command=f"deeplense {args[0]}", what=name, median_s=round(statistics.median(times), 3),
                             runs_s=[round(t, 3) for t in times], target_s=target,
                             met=statistics.median(times) <= target))
            print(f"{name}: median {statistics.median(times):.2f} s (target {target} s) over {a.repeat} runs")
    write_json(RESULTS / "startup.json", dict(header("startup"), repeat=a.repeat, table=rows))


if __name__ == "__main__":
    main()
