"""The thread policy on the user's path: with a busy process beside it, a command must not run torch on the core that
process holds (two threads beside one busy process ran the simulator 5-30x slower than one thread on a 2-core machine).
The oracle is the machine itself: the cores this process may use, read here from its affinity."""
import subprocess
import sys

import pytest

from deeplense_fastai.core import available_cores
from conftest import deeplense as cli, user_env


def threads_used(stdout: str) -> int:
    line = next(l for l in stdout.splitlines() if l.startswith("training "))
    return int(line.rsplit("(", 1)[1].split()[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("threads")
    from deeplense_fastai.dataset import write_dataset
    write_dataset(root / "d", "model_ii", n=40, seed=0, progress=False)
    return root, user_env(root, OMP_NUM_THREADS=None)                # the default: no choice made by the user


def test_train_leaves_a_busy_core_alone(data):
    root, env = data
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        r = cli("train", "--data", root / "d", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", root / "r1", env=env)
    finally:
        busy.kill(); busy.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    assert threads_used(r.stdout) <= max(1, available_cores() - 1)


def test_threads_flag_and_environment_are_obeyed(data):
    root, env = data
    r = cli("train", "--data", root / "d", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--threads", 2,
            "--out", root / "r2", env=env)
    assert r.returncode == 0 and threads_used(r.stdout) == 2, r.stderr[-2000:]
    r = cli("train", "--data", root / "d", "--arch", "xresnet_small", "--epochs", 1, "--bs", 8, "--out", root / "r3",
            env=dict(env, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and threads_used(r.stdout) == 1, r.stderr[-2000:]
    r = cli("simulate", "--preset", "model_ii", "--n", 4, "--threads", 0, "--out", root / "s", env=env)
    assert r.returncode == 2 and "--threads" in r.stderr and not (root / "s").exists()
