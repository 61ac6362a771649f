"""A third-party method, installed as its own package, runs through `bench run` untouched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cxrbench-example"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Install the example plugin into a private target directory (not the test environment)."""
    target = tmp_path_factory.mktemp("plugin-site")
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    source = tmp_path_factory.mktemp("plugin-src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
    )
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    return env


def bench(env, *argv):
    return subprocess.run([sys.executable, "-m", "cxrbench", *argv], capture_output=True, text=True, env=env)


def test_plugin_is_listed_with_its_package(plugin_env):
    result = bench(plugin_env, "list", "methods")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("rotnet"))
    assert line.rstrip().endswith("cxrbench-example")


def test_plugin_runs_through_bench_run_and_all_includes_it(plugin_env, tmp_path):
    result = bench(plugin_env, "run", "--methods", "rotnet", "--protocol", "frozen", "--profile", "smoke",
                   "--fractions", "100", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "cells" / "rotnet__phantom-nih__frozen__100pct__seed0.json").read_text())
    assert record["method_display_name"] == "RotNet (plugin)"
    pretrain = json.loads((tmp_path / "pretrain" / "rotnet__phantom-nih" / "record.json").read_text())
    assert "rotation_accuracy" in pretrain["history"][-1]
    planned = bench(plugin_env, "run", "--methods", "all", "--profile", "smoke", "--protocol", "probe")
    assert planned.returncode == 2  # validation happens before work; 'all' resolved without error
    without_plugin = bench({k: v for k, v in plugin_env.items() if k != "PYTHONPATH"}, "list", "methods")
    assert "rotnet" not in without_plugin.stdout
