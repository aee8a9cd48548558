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


def _commands(x):
    """Every `command` string recorded anywhere in a results document (a file may merge several runs)."""
    if isinstance(x, dict):
        own = [x["command"]] if isinstance(x.get("command"), str) else []
        return own + [c for v in x.values() for c in _commands(v)]
    return [c for v in x for c in _commands(v)] if isinstance(x, list) else []


@pytest.fixture(scope="module")
def results():
    """{name: (document, all its numbers)} of every results file (a benchmark may write one file per case into a
    folder, as bench/accuracy.py does: bench/results/accuracy/<preset>-<arch>.json is named accuracy/<preset>-<arch>)."""
    files = sorted(RESULTS.rglob("*.json"))
    assert files, "no results files in bench/results"
    docs = {str(f.relative_to(RESULTS).with_suffix("")): json.loads(f.read_text()) for f in files}
    return {k: (d, _values(d, [])) for k, d in docs.items()}


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


def test_readme_performance_figures_are_recorded(results):
    """Each row names its command; every number in the row is a value of the results file that command wrote."""
    rows = readme_performance_table()
    assert rows, "the README has no performance table"
    for row in rows:
        cmd = re.findall(r"`([^`]*)`", row[-1])
        assert cmd, f"README performance row names no command: {row}"
        owners = [v for d, v in results.values() if any(c == cmd[0] or cmd[0].endswith("/" + c) for c in _commands(d))]
        assert owners, f"no results file was written by `{cmd[0]}` (README row {row[0]!r})"
        values = [x for v in owners for x in v]
        missing = [v for cell in row for v, tol in _numbers(cell) if not recorded(v, tol, values)]
        assert not missing, f"README row {row[0]!r}: {missing} not in the results of `{cmd[0]}`"


def _perf_notebook():
    return json.loads(PERF.read_text())["cells"]


def test_performance_page_types_no_figures():
    """The page's own prose (markdown cells) holds no number outside code spans and names (ResNet18): figures come
    from the results."""
    typed = [(i, m.group(0)) for i, c in enumerate(_perf_notebook()) if c["cell_type"] == "markdown"
             for m in re.finditer(r"(?<![A-Za-z_\d])\d+", CODE.sub(" ", "".join(c["source"])))]
    assert not typed, f"numbers typed into performance.ipynb's markdown (cell, number): {typed}"


def test_performance_page_sentences_quote_recorded_figures(results):
    """Sentences the page generates (markdown outputs) quote only values of the results files their cell reads
    (named in the cell as results['name'], results.get('name') or show_results('name'), or a folder of results files
    read as R/'folder'; else the previous cell's)."""
    names, checked = [], 0
    for cell in _perf_notebook():
        if cell["cell_type"] != "code": continue
        src = "".join(cell["source"])
        folders = re.findall(r"R\s*/\s*'(\w+)'", src)
        names = (re.findall(r"(?:results\[|results\.get\(|show_results\()'(\w+)'", src)
                 + [k for f in folders for k in results if k.startswith(f + "/")]) or names
        values = [x for n in names if n in results for x in results[n][1]]
        for o in cell.get("outputs", []):
            if "text/markdown" not in o.get("data", {}): continue
            text, checked = "".join(o["data"]["text/markdown"]), checked + 1
            missing = [v for v, tol in _numbers(text) if not recorded(v, tol, values)]
            assert not missing, f"performance page: {missing} in {text[:80]!r} not in bench/results/{names}"
    assert checked, "performance.ipynb has no generated sentences: execute it before committing"


def test_benchmarks_import_what_exists():
    """The scripts that write the results still run against the library: every `from deeplense_fastai.X import name`
    in bench/*.py (also inside functions) names something the module has (a module move would otherwise surface
    only when a benchmark is next run, hours in)."""
    import ast
    import importlib
    import importlib.util
    missing = []
    for script in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deeplense_fastai"):
                mod = importlib.import_module(node.module)
                missing += [f"{script.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(mod, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert not missing, f"benchmarks import names that no longer exist: {missing}"
