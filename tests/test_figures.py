"""Figures are generated, never typed: every number the README's performance table and the performance page quote
must be a value recorded in a results file under bench/results/ (the benchmark scripts write them)."""
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PERF = ROOT / "nbs" / "tutorials" / "performance.ipynb"

# a number as written in prose or a table: 1,000  0.143  -4.1e-03  6.8 (in 6.8x)  9.5 (in 9.5%)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]*\d)(%?)")
CODE = re.compile(r"`[^`]*`|\$[^$]*\$")          # code spans (commands, dates, versions) and TeX are not figures


def _values(x, out):
    """All numbers in a JSON document: numeric leaves, and the numbers written inside its strings (notes, protocols)."""
    if isinstance(x, dict):
        for v in x.values(): _values(v, out)
    elif isinstance(x, list):
        for v in x: _values(v, out)
    elif isinstance(x, bool) or x is None:
        pass
    elif isinstance(x, (int, float)):
        out.append(float(x))
    elif isinstance(x, str):
        out.extend(v for v, _ in _numbers(x))
    return out


def _numbers(text):
    """(value, tolerance) of each number in `text` outside code spans; the tolerance is half a unit of its last digit."""
    out = []
    for m in NUMBER.finditer(CODE.sub(" ", text)):
        s = m.group(0).rstrip("%").replace(",", "")
        mant, _, exp = s.lower().partition("e")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        value = float(s) / (100 if m.group(1) else 1)
        tol = 0.5 * 10 ** (-decimals) * 10 ** (int(exp) if exp else 0) / (100 if m.group(1) else 1)
        out.append((value, tol))
    return out


def recorded(value, tol, values):
    """Is `value` (printed to within `tol`) one of the recorded values, after rounding?"""
    return any(abs(v - value) <= tol * (1 + 1e-9) + 1e-12 or math.isclose(v, value, rel_tol=1e-9) for v in values)


@pytest.fixture(scope="module")
def values():
    files = sorted(RESULTS.glob("*.json"))
    assert files, "no results files in bench/results"
    out = []
    for f in files: _values(json.loads(f.read_text()), out)
    return out


def readme_performance_table():
    """The rows (lists of cells) of the first table under the README's '## Performance' heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in section.splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]   # skip header and |---|


def test_number_parsing():
    assert [v for v, _ in _numbers("MAE 0.143, 7,200 images, 6.8x, `python x.py --n 512`, 9.5%")] == [0.143, 7200, 6.8, 0.095]
    assert recorded(0.143, 0.0005, [0.14308]) and not recorded(0.144, 0.0005, [0.14308])
    assert recorded(997, 0.5, [996.8]) and recorded(-4.1e-3, 0.05e-3, [-0.0041186])


def test_readme_performance_figures_are_recorded(values):
    rows = readme_performance_table()
    assert rows, "the README has no performance table"
    missing = [(row[0], v) for row in rows for cell in row for v, tol in _numbers(cell) if not recorded(v, tol, values)]
    assert not missing, f"README performance figures not found in bench/results/*.json: {missing}"


def _perf_notebook():
    return json.loads(PERF.read_text())["cells"]


def test_performance_page_types_no_figures():
    """The page's own prose (markdown cells) holds no number outside code spans and names (ResNet18): figures come
    from the results."""
    typed = [(i, m.group(0)) for i, c in enumerate(_perf_notebook()) if c["cell_type"] == "markdown"
             for m in re.finditer(r"(?<![A-Za-z_\d])\d+", CODE.sub(" ", "".join(c["source"])))]
    assert not typed, f"numbers typed into performance.ipynb's markdown (cell, number): {typed}"


def test_performance_page_sentences_quote_recorded_figures(values):
    """Sentences the page generates (markdown outputs) quote only values that are in a results file."""
    texts = ["".join(o["data"]["text/markdown"]) for c in _perf_notebook() if c["cell_type"] == "code"
             for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert texts, "performance.ipynb has no generated sentences: execute it before committing"
    missing = [(t[:60], v) for t in texts for v, tol in _numbers(t) if not recorded(v, tol, values)]
    assert not missing, f"performance page figures not found in bench/results/*.json: {missing}"
