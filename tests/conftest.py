"""Helpers every test module shares: the `deeplense` command as a user's script runs it, and the check that a refusal
is one clear line. (Import them with `from conftest import deeplense, ok, refused`: pytest puts tests/ on the path.)"""
import subprocess
import sys


def deeplense(*args, env=None, cwd=None, check=False) -> subprocess.CompletedProcess:
    "`deeplense ARGS` as a script runs it: a subprocess with no terminal (stdin closed), default flags; `check`: exit 0."
    r = subprocess.run([sys.executable, "-m", "deeplense_fastai.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    if check: ok(r)
    return r


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
TRAINED_FIXTURES = {"model", "flow_model", "flow", "run", "run_dir", "dls", "site", "server"}
SLOW_MODULES = {"test_faults", "test_split", "test_threads", "test_user_output", "test_docs_site"}
SLOW_TESTS = {"test_train_on_a_varied_world_from_the_cli", "test_train_on_the_physical_preset_from_the_cli",
              "test_learner_trains_and_exports", "test_gpu_bench_smoke_on_cpu", "test_accelerate_launch_two_cpu_processes",
              "test_deeplense_files_load_and_train_targets", "test_classify_a_simulated_preset",
              "test_class_order_survives_training_export_and_predict", "test_resume_continues_a_classifier_without_task",
              "test_cache_is_reused_and_rebuilt_when_directory_changes", "test_explicit_validation_source_and_meanstd",
              # the slowest of the rest in a measured `make test-fast` (8-13 s each, beside a busy training process)
              "test_overfits_16_images", "test_peers_smoke", "test_train_online_from_the_cli",
              "test_train_on_every_labelled_kind", "test_killed_run_resumes_to_identical_result",
              "test_shards_reassemble_into_the_same_dataset"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or builds the docs site; left out of `make test-fast`")


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        name = item.originalname if hasattr(item, "originalname") else item.name
        if (TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in SLOW_MODULES
                or name in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
