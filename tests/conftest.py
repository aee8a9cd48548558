"""Helpers every test module shares: the `deeplense` command as a user's script runs it, the environment of a user with
their own cache, the check that a refusal is one clear line, and one tiny trained run (with its posterior twin) that
several modules use. (Import the helpers with `from conftest import deeplense, ok, refused, user_env`: pytest puts
tests/ on the path; the fixtures need no import.)"""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest


def deeplense(*args, env=None, cwd=None, check=False, **kw) -> subprocess.CompletedProcess:
    """`deeplense ARGS` as a script runs it: a subprocess with no terminal (stdin closed) and default flags. `check`: it
    must exit 0; `kw` goes to `subprocess.run` (a `timeout`, a `preexec_fn` that sets a resource limit)."""
    r = subprocess.run([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=cwd, stdin=subprocess.DEVNULL, **kw)
    if check: ok(r)
    return r


def user_env(root, **changes) -> dict:
    """This process's environment with the cache under `root` (no test touches the user's own cache), then `changes`:
    a value sets that variable, None removes it (e.g. `OMP_NUM_THREADS=None`: no choice made by the user)."""
    e = dict(os.environ, DEEPLENSE_CACHE=str(root / "cache"))
    for k, v in changes.items():
        if v is None: e.pop(k, None)
        else: e[k] = str(v)
    return e


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    "The command succeeded (else its stderr's end is the failure message)."
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def refused(r: subprocess.CompletedProcess, *words) -> str:
    """Exit code 2 and one line on stderr, with no traceback, that names what is wrong (contains every one of `words`);
    notes and progress bars (on by default) aside. Returns that line."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("note:") and "% [" not in l]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words: assert w in lines[0], lines[0]
    return lines[0]


# `make test-fast` runs `pytest -m "not slow"`: a developer's loop of a few minutes. A test is slow when it uses a fixture
# that trains a model (or builds the docs site), lives in a module whose tests each train, or trains in its own body
# (named below, from `make test`'s --durations list). `make test` runs them all.
TRAINED_FIXTURES = {"tiny_run", "tiny_flow", "model", "flow_model", "flow", "run", "run_dir", "dls", "site", "server"}
SLOW_MODULES = {"test_faults", "test_split", "test_threads", "test_user_output", "test_docs_site"}
SLOW_TESTS = {"test_train_on_a_varied_world_from_the_cli", "test_train_on_the_physical_preset_from_the_cli",
              "test_learner_trains_and_exports", "test_gpu_bench_smoke_on_cpu", "test_accelerate_launch_two_cpu_processes",
              "test_deeplense_files_load_and_train_targets", "test_classify_a_simulated_preset",
              "test_class_order_survives_training_export_and_predict", "test_resume_continues_a_classifier_without_task",
              "test_cache_is_reused_and_rebuilt_when_directory_changes", "test_explicit_validation_source_and_meanstd",
              # the slowest of the rest in a measured `make test-fast` (8-13 s each, beside a busy training process)
              "test_overfits_16_images", "test_peers_smoke", "test_train_online_from_the_cli",
              "test_train_on_every_labelled_kind", "test_killed_run_resumes_to_identical_result",
              "test_shards_reassemble_into_the_same_dataset",
              # the slowest left in a `make test-fast` measured on 2026-12-06 (2 cores, load average 5.6: 11 minutes; the
              # library notebooks took 7 more): each starts `deeplense` (torch's import) several times, or two processes
              "test_train_errors_are_one_line", "test_disjoint_shares_across_two_processes", "test_no_disk_writes",
              "test_existing_different_dataset_is_refused_and_untouched",
              "test_train_refuses_unlabelled", "test_corrupted_dataset_is_reported_not_rewritten",
              "test_native_dataset_on_disk", "test_incomplete_shards_are_reported"}


# ---- one tiny trained run, shared by the modules that only need "a run" (test_cli_matrix, test_faults) ----------
# Each test copies a run before changing it; none writes into these folders.
TINY_TRAIN = ("--arch", "xresnet_small", "--epochs", 1, "--bs", 8)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    "48 Model II images written by `deeplense simulate --n 48` with default flags (preset model_ii, seed 0, native)."
    root = tmp_path_factory.mktemp("tiny")
    e = user_env(root, PYTHONWARNINGS=None)
    ok(deeplense("simulate", "--n", 48, "--out", root / "train", env=e))
    return SimpleNamespace(root=root, data=root / "train", env=e)


@pytest.fixture(scope="session")
def tiny_run(tiny_data):
    "xresnet_small trained one epoch on `tiny_data`, default flags (progress bars on): (run folder, the command)."
    t = tiny_data
    r = ok(deeplense("train", "--data", t.data, *TINY_TRAIN, "--out", t.root / "run", env=t.env))
    return t.root / "run", r


@pytest.fixture(scope="session")
def tiny_flow(tiny_data):
    "The same with `--loss flow`, a posterior model: (run folder, the command)."
    t = tiny_data
    r = ok(deeplense("train", "--data", t.data, *TINY_TRAIN, "--loss", "flow", "--out", t.root / "flow", env=t.env))
    return t.root / "flow", r


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or builds the docs site; left out of `make test-fast`")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.originalname if hasattr(item, "originalname") else item.name
        if (TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in SLOW_MODULES
                or name in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
