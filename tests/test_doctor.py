"""`bench doctor`: the self-check passes here, fails loudly on a broken method, refuses a missing device."""

import json

import torch

from cxrbench.benchmark.cli import main
from cxrbench.methods import METHODS
from cxrbench.methods.registry import register_method
from cxrbench.methods.simclr import SimCLR


def test_doctor_on_cpu_passes_every_check_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--profile", "smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert report["passed"] and all(check["passed"] for check in report["checks"])
    names = [check["name"] for check in report["checks"]]
    # every pretraining method under fp32 and bf16, the cells and the DDP step
    for method in ("simclr", "mocov2", "densecl", "byol", "simsiam", "vicreg", "pcrlv2", "optiml"):
        assert sum(name.startswith(f"pretrain {method} ") for name in names) == 2, method
    assert any(name.startswith("frozen and fine-tune cells") for name in names)
    assert any(name.startswith("DistributedDataParallel") for name in names)
    assert all(value > 0 for value in report["speed_images_per_second"].values())
    assert report["environment"]["packages"]["torch"] and report["environment"]["device"] == "cpu"
    assert printed.count("PASS  ") == len(names) and "FAIL" not in printed


def test_a_method_that_raises_in_its_step_fails_the_doctor(tmp_path, capsys):
    @register_method("broken-for-doctor")
    class Broken(SimCLR):
        description = "raises in its training step (test)"

        def training_step(self, views):
            raise RuntimeError("deliberately broken step")

    try:
        out = tmp_path / "doctor.json"
        code = main(["doctor", "--device", "cpu", "--profile", "smoke", "--methods", "broken-for-doctor,simclr", "--out", str(out)])
    finally:
        METHODS.remove("broken-for-doctor")
    printed = capsys.readouterr().out
    assert code == 1
    broken = [line for line in printed.splitlines() if "broken-for-doctor" in line and line.startswith(("PASS", "FAIL"))]
    assert broken and all(line.startswith("FAIL  pretrain broken-for-doctor") for line in broken)
    assert "RuntimeError: deliberately broken step" in broken[0]
    assert any(line.startswith("PASS  pretrain simclr") for line in printed.splitlines())
    report = json.loads(out.read_text())
    assert not report["passed"] and "deliberately broken step" in report["checks"][0]["traceback"]


def test_doctor_on_cuda_without_cuda_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA
    assert main(["doctor", "--device", "cuda"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "CUDA is not available" in error
