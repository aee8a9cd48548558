"""`make lint`: ruff on the exported package and the bench, with the rules in pyproject.toml's [tool.ruff].

One exception, and only one: nbdev writes each module's `__all__` itself, wrapping the names at 120 characters and
then putting `__all__ = ` in front (nbdev/maker.py, `ModuleMaker.make`, nbdev 3.3), so that generated first line can
reach 130 characters and no notebook edit can shorten it. E501 on a line that begins with `__all__ = [` in the package
(at most 130 characters) is dropped; every other finding fails the check, printed as ruff prints it.
"""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, TARGETS = ROOT / "deeplense_fastai", ("deeplense_fastai", "bench")


def nbdev_all_line(finding: dict) -> bool:
    "Is this an E501 on the `__all__` line that nbdev generates (not ours to wrap)?"
    path = Path(finding["filename"])
    if finding["code"] != "E501" or PACKAGE not in path.parents: return False
    line = path.read_text().splitlines()[finding["location"]["row"] - 1]
    return line.startswith("__all__ = [") and len(line) <= 130      # nbdev's 120 plus its prefix, never more


def main() -> int:
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "--output-format", "json", *TARGETS], cwd=ROOT, capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        print(out.stderr, file=sys.stderr)
        return 2
    found = [f for f in json.loads(out.stdout) if not nbdev_all_line(f)]
    for f in found:
        rel = Path(f["filename"]).relative_to(ROOT)
        print(f"{rel}:{f['location']['row']}:{f['location']['column']}: {f['code']} {f['message']}")
    print(f"ruff: {len(found)} finding(s)" if found else "ruff: all checks passed (nbdev's own __all__ lines aside)")
    return 1 if found else 0


if __name__ == "__main__": sys.exit(main())
