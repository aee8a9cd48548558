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
