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


def _entry_points_of(tmp_path, monkeypatch, group, entries):
    """``importlib.metadata.entry_points(group=...)`` as an installed package would make it: the
    named objects live in a module under ``tmp_path``."""
    import importlib.metadata

    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(name, value, group) for name, value in entries]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None, **kw: points if group == points[0].group else real(group=group, **kw))


def test_a_dataset_plugin_registers_through_its_entry_point_and_a_bad_one_is_a_warning(tmp_path, monkeypatch):
    from cxrbench.datasets import DATASET_ORIGINS, DATASETS

    (tmp_path / "my_sites.py").write_text(
        "class MySite:\n    description = 'a site of mine'\n    task = 'classification'\n"
        "    def load(self, data_settings):\n        return data_settings\n\n"
        "class NotASource:\n    pass\n")
    _entry_points_of(tmp_path, monkeypatch, "cxrbench.datasets",
                     [("my-site", "my_sites:MySite"), ("broken", "my_sites:NotASource"), ("phantom-nih", "my_sites:MySite"),
                      ("missing", "no_such_module:Site")])
    monkeypatch.setattr(DATASETS, "plugins_loaded", False)
    with pytest.warns(UserWarning) as warned:
        DATASETS.load_plugins()
    try:
        assert DATASETS.get("my-site")().load({"x": 1}) == {"x": 1} and DATASET_ORIGINS["my-site"] == "my_sites:MySite"
        messages = sorted(str(w.message) for w in warned)
        assert len(messages) == 3 and all(m.startswith("cxrbench: plugin dataset ") for m in messages)
        assert any("'broken'" in m and "not a dataset source class" in m for m in messages)
        assert any("'phantom-nih'" in m and "built-in dataset" in m for m in messages)  # a built-in name stays the built-in's
        assert any("'missing'" in m and "failed to load" in m for m in messages)
        assert DATASET_ORIGINS["phantom-nih"] == "built-in" and "broken" not in DATASETS
    finally:
        DATASETS.remove("my-site")
