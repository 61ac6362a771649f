"""IDEAL, shipped as its own package, adds a method and a protocol to an untouched cxrbench."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

IDEAL = Path(__file__).resolve().parents[1] / "examples" / "cxrbench-ideal"


@pytest.fixture(scope="module")
def ideal_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("ideal-site")
    source = tmp_path_factory.mktemp("ideal-src") / IDEAL.name
    shutil.copytree(IDEAL, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    return env, target


def bench(env, *argv):
    return subprocess.run([sys.executable, "-m", "cxrbench", *argv], capture_output=True, text=True, env=env)


def test_dense_infonce_is_the_posters_local_loss(ideal_env):
    sys.path.insert(0, str(ideal_env[1]))
    try:
        method = importlib.import_module("cxrbench_ideal.method")
    finally:
        sys.path.remove(str(ideal_env[1]))
    torch.manual_seed(0)
    q = F.normalize(torch.randn(2, 4, 2, 3), dim=1)
    k = F.normalize(torch.randn(2, 4, 2, 3), dim=1)
    tau = 0.1
    # L_loc written out: every position against its partner (positive) and all other key positions
    qs = [q[b, :, i, j] for b in range(2) for i in range(2) for j in range(3)]
    ks = [k[b, :, i, j] for b in range(2) for i in range(2) for j in range(3)]
    terms = []
    for n, query in enumerate(qs):
        positive = torch.exp(query @ ks[n] / tau)
        negatives = sum(torch.exp(query @ key / tau) for m, key in enumerate(ks) if m != n)
        terms.append(-torch.log(positive / (positive + negatives)))
    assert method.dense_infonce(q, k, tau).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_ideal_and_its_protocol_are_listed_from_the_plugin(ideal_env):
    env, _ = ideal_env
    methods = bench(env, "list", "methods")
    assert next(l for l in methods.stdout.splitlines() if l.startswith("ideal")).rstrip().endswith("cxrbench-ideal")
    protocols = bench(env, "list", "protocols")
    assert next(l for l in protocols.stdout.splitlines() if l.startswith("segmentation-semi")).rstrip().endswith("cxrbench-ideal")


def test_ideal_pretrains_and_segmentation_semi_runs_through_bench_run(ideal_env, tmp_path):
    env, _ = ideal_env
    result = bench(env, "run", "--methods", "ideal,densecl", "--protocol", "segmentation-semi", "--profile", "smoke",
                   "--fractions", "10", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("ideal", "densecl"):
        record = json.loads((tmp_path / "cells" / f"{method}__phantom-siim__segmentation-semi__10pct__seed0.json").read_text())
        metrics = record["metrics"]
        assert {"dice_per_image", "assd", "hd95"} <= set(metrics) and metrics["num_unlabelled_images"] > 0
    pretrain = json.loads((tmp_path / "pretrain" / "ideal__phantom-nih" / "record.json").read_text())
    assert pretrain["hyperparameters"]["learning_rate"] == 1e-3  # the plugin's smoke default
    assert pretrain["history"][-1]["positions"] == 4  # layer4 at 64 px: 2 x 2 positions


def test_without_the_plugin_the_error_says_what_to_install(tmp_path, capsys):
    from cxrbench.benchmark.cli import main

    assert main(["run", "--methods", "ideal", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "pip install ./examples/cxrbench-ideal" in capsys.readouterr().err
    assert main(["run", "--methods", "sup1", "--protocol", "segmentation-semi", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "pip install ./examples/cxrbench-ideal" in capsys.readouterr().err
