"""The house's rules, checked on the generated package (issue 12): imports run only downward through the modules,
no function is longer than about 40 lines, and no block of six or more lines is written twice."""
import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "deeplense_fastai"

# Lower layers first: a module may import only the modules before it (at the top or inside a function).
LAYERS = ["core", "streams", "lensing", "simulate", "dataset", "online", "config", "readers", "sources", "transforms", "data",
          "models", "posterior", "learner", "interpret",
          "inputs", "inference", "evaluate", "combine", "run", "cli"]


def modules():
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if not p.stem.startswith("_")}


def package_imports(path: Path) -> set[str]:
    "The package modules a file imports, anywhere in it (`from . import __version__` is not a module)."
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and mod: deps.add(mod.split(".")[0])
            elif mod.startswith("deeplense_fastai."): deps.add(mod.split(".")[1])
            elif mod == "deeplense_fastai" or (node.level == 1 and not mod):
                deps.update(a.name for a in node.names if a.name in LAYERS)
        elif isinstance(node, ast.Import):
            deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("deeplense_fastai."))
    return deps


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS), set(modules()) ^ set(LAYERS)


def test_imports_run_only_downward():
    bad = [f"{m} imports {d}" for m, p in modules().items() for d in sorted(package_imports(p))
           if LAYERS.index(d) >= LAYERS.index(m)]
    assert not bad, bad


def test_the_check_sees_an_upward_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from deeplense_fastai.cli import main\n    from .learner import fit\n")
    assert package_imports(f) == {"cli", "learner"}


def test_no_function_over_40_lines():
    long = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for m, p in modules().items()
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 40]
    assert not long, long


def _code_lines(path: Path):
    "(line number, normalised text) of the lines that carry code (no blank lines, comments, decorators or docstring-only lines)."
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.split("  #")[0].strip()
        if s and not s.startswith(("#", "@", '"', "'")) and s not in (")", "]", "}", "):", "else:", "try:", "return out"):
            out.append((i, s))
    return out


def duplicate_blocks(paths, n=6):
    "Blocks of `n` consecutive code lines that occur more than once in the given files."
    seen = defaultdict(list)
    for p in paths:
        lines = _code_lines(p)
        for k in range(len(lines) - n + 1):
            seen[tuple(s for _, s in lines[k:k + n])].append(f"{p.stem}:{lines[k][0]}")
    return {block: where for block, where in seen.items() if len(where) > 1}


def test_no_block_of_six_lines_written_twice():
    dups = duplicate_blocks(modules().values())
    assert not dups, "\n\n".join("\n".join(b) + f"\n  at {w}" for b, w in dups.items())


def test_the_check_sees_a_duplicate(tmp_path):
    body = "".join(f"    x{i} = f({i})\n" for i in range(6))
    (tmp_path / "a.py").write_text("def a():\n" + body)
    (tmp_path / "b.py").write_text("def b():\n" + body)
    assert len(duplicate_blocks([tmp_path / "a.py", tmp_path / "b.py"])) == 1
