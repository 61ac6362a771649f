"""The layering rules of docs/architecture.md, checked with import-linter (its contracts are in
pyproject.toml): the package keeps them, and a planted import that breaks one is caught."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` (its pyproject.toml holds the contracts)."""
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_every_layering_rule():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, contract", [
    ("reports/tables.py", "from cxrbench.benchmark.runner import Runner", "reports read records, not the runner or the methods"),
    ("reports/figures.py", "import cxrbench.methods", "reports read records, not the runner or the methods"),
    ("methods/simclr.py", "from cxrbench.benchmark import protocols", "methods know nothing of the benchmark or its reports"),
    ("datasets/splits.py", "from cxrbench.methods import get_method", "datasets know nothing of the benchmark, the methods or the reports"),
    ("records/schema.py", "from cxrbench.reports import tables", "records are the bottom layer: they import no other part"),
    ("benchmark/protocols/frozen.py", "from cxrbench.benchmark.runner import Runner", "protocols and pretraining never reach back into the orchestration"),
    ("benchmark/pretraining/loop.py", "from cxrbench.benchmark import cli", "protocols and pretraining never reach back into the orchestration"),
])
def test_a_planted_import_that_breaks_a_rule_is_caught(tmp_path, module, planted, contract):
    shutil.copytree(ROOT / "cxrbench", tmp_path / "cxrbench", ignore=shutil.ignore_patterns("__pycache__", "*.gz", "*.yaml"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "cxrbench" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    broken = [line.rstrip() for line in result.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    # the rule itself is broken (a planted import in datasets also breaks the reports' rule, through
    # the reports' import of datasets: import-linter follows chains)
    assert f"{contract} BROKEN" in broken, result.stdout
    assert f"{module.removesuffix('.py').replace('/', '.')} ->" in result.stdout  # the report names the planted import


# --- the shape of the orchestration and the reports (issue 19): short functions, shallow nesting

MAX_FUNCTION_LINES, MAX_NESTING = 60, 3
_BLOCKS = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try, ast.Match)


def _nesting(node: ast.AST, level: int = 0) -> int:
    """The deepest block (for, while, if, with, try, match) inside ``node``; an ``elif`` is at its
    ``if``'s level, and nested functions and classes are measured on their own."""
    deepest = level
    elif_branch = node.orelse[0] if isinstance(node, ast.If) and len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) else None
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        deeper = level if child is elif_branch or not isinstance(child, _BLOCKS) else level + 1
        deepest = max(deepest, _nesting(child, deeper))
    return deepest


def _functions(folders):
    for folder in folders:
        for path in sorted((ROOT / "cxrbench" / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node


def test_no_function_of_the_orchestration_or_reports_is_long_or_deeply_nested():
    too_long = [f"{where} ({node.end_lineno - node.lineno + 1} lines)" for where, node in _functions(["benchmark", "reports", "records"])
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    too_deep = [f"{where} ({_nesting(node)} levels)" for where, node in _functions(["benchmark", "reports", "records"])
                if _nesting(node) > MAX_NESTING]
    assert not too_long and not too_deep, too_long + too_deep


def test_the_nesting_measure_counts_blocks_not_elifs():
    deep = ast.parse("def f(x):\n    for a in x:\n        if a:\n            with a:\n                while a:\n                    pass\n").body[0]
    chain = ast.parse("def g(x):\n    if x == 1:\n        pass\n    elif x == 2:\n        pass\n    elif x == 3:\n        if x:\n            pass\n").body[0]
    assert _nesting(deep) == 4 and _nesting(chain) == 2
