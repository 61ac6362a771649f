"""The layering rules of docs/architecture.md, checked with import-linter (its contracts are in
pyproject.toml): the package keeps them, and a planted import that breaks one is caught."""

from __future__ import annotations

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
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, contract", [
    ("reports/tables.py", "from cxrbench.benchmark.runner import Runner", "reports read records, not the runner or the methods"),
    ("reports/figures.py", "import cxrbench.methods", "reports read records, not the runner or the methods"),
    ("methods/simclr.py", "from cxrbench.benchmark import protocols", "methods know nothing of the benchmark or its reports"),
    ("datasets/splits.py", "from cxrbench.methods import get_method", "datasets know nothing of the benchmark, the methods or the reports"),
    ("records/schema.py", "from cxrbench.reports import tables", "records are the bottom layer: they import no other part"),
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
