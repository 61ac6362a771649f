"""Pretraining checkpoints: an interrupted pretraining resumes to the same weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cxrbench.benchmark.pretraining import loop as pretrain_module
from cxrbench.benchmark.pretraining.checkpoints import latest_checkpoint
from cxrbench.benchmark.pretraining.loop import pretrain
from cxrbench.benchmark.profiles import method_hyperparameters
from cxrbench.methods import get_method

BATCH = 16


class Interrupted(Exception):
    pass


def _pretrain(name, profile, dataset, checkpoint_dir, epochs=2):
    torch.manual_seed(0)
    method = get_method(name)(method_hyperparameters(profile, name))
    return pretrain(method, dataset, batch_size=BATCH, epochs=epochs, max_steps=None, seed=0, device=torch.device("cpu"),
                    checkpoint_dir=checkpoint_dir)


# momentum encoders and queues (non-persistent buffers), a Python RNG and schedule attributes
@pytest.mark.parametrize("name", ["mocov2", "byol", "pcrlv2", "densecl", "optiml"])
def test_interrupted_pretraining_resumes_to_the_uninterrupted_weights(name, smoke_profile, smoke_nih, tmp_path, monkeypatch):
    steps_per_epoch = len(smoke_nih.split_positions("train")) // BATCH
    reference = _pretrain(name, smoke_profile, smoke_nih, tmp_path / "reference")

    def crash_mid_second_epoch(step):
        if step == steps_per_epoch + 1:
            raise Interrupted

    monkeypatch.setattr(pretrain_module, "_fault_injection", crash_mid_second_epoch)
    with pytest.raises(Interrupted):
        _pretrain(name, smoke_profile, smoke_nih, tmp_path / "resumed")
    assert latest_checkpoint(tmp_path / "resumed")["step"] == steps_per_epoch
    monkeypatch.setattr(pretrain_module, "_fault_injection", lambda step: None)
    resumed = _pretrain(name, smoke_profile, smoke_nih, tmp_path / "resumed")
    assert resumed.steps == reference.steps
    for key, value in reference.encoder_state_dict.items():
        torch.testing.assert_close(resumed.encoder_state_dict[key], value, rtol=0, atol=1e-6, msg=key)
    assert [entry["loss"] for entry in resumed.history] == pytest.approx([entry["loss"] for entry in reference.history], abs=1e-6)


def test_a_truncated_checkpoint_is_reported_and_the_previous_one_used(smoke_profile, smoke_nih, tmp_path, monkeypatch):
    steps_per_epoch = len(smoke_nih.split_positions("train")) // BATCH
    def crash_in_third_epoch(step):
        if step == 2 * steps_per_epoch + 1:
            raise Interrupted

    monkeypatch.setattr(pretrain_module, "_fault_injection", crash_in_third_epoch)
    with pytest.raises(Interrupted):
        _pretrain("simclr", smoke_profile, smoke_nih, tmp_path, epochs=3)
    newest = sorted(tmp_path.glob("epoch-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=f"{newest.name}: refused or unreadable checkpoint"):
        state = latest_checkpoint(tmp_path)
    assert state["step"] == steps_per_epoch  # epoch 1's checkpoint, not the truncated epoch 2


def test_sigkill_during_pretraining_resumes_and_ends_with_the_same_records(tmp_path, smoke_nih):
    """The real thing: SIGKILL mid-epoch, then the same command; records match an uninterrupted run."""
    steps_per_epoch = len(smoke_nih.split_positions("train")) // BATCH

    def run(out, kill_at=None):
        env = os.environ.copy()
        env.pop("CXRBENCH_KILL_AT_STEP", None)
        if kill_at is not None:
            env["CXRBENCH_KILL_AT_STEP"] = str(kill_at)
        command = [sys.executable, "-m", "cxrbench", "run", "--methods", "mocov2", "--protocol", "frozen,finetune",
                   "--profile", "smoke", "--fractions", "100", "--set", "pretrain.epochs=2", "--set", "pretrain.max_steps=null",
                   "--out", str(out)]
        return subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert run(tmp_path / "reference").returncode == 0
    killed = run(tmp_path / "resumed", kill_at=steps_per_epoch + 2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    stage = tmp_path / "resumed" / "pretrain" / "mocov2__phantom-nih"
    assert not (stage / "record.json").exists() and [p.name for p in (stage / "checkpoints").iterdir()] == ["epoch-00001.pt"]
    assert run(tmp_path / "resumed").returncode == 0
    assert not (stage / "checkpoints").exists()  # removed once the encoder is exported
    reference_encoder = torch.load(tmp_path / "reference" / "pretrain" / "mocov2__phantom-nih" / "encoder.pth", weights_only=True)
    resumed_encoder = torch.load(stage / "encoder.pth", weights_only=True)
    for key, value in reference_encoder.items():
        torch.testing.assert_close(resumed_encoder[key], value, rtol=0, atol=1e-6, msg=key)
    for protocol in ("frozen", "finetune"):
        name = f"cells/mocov2__phantom-nih__{protocol}__100pct__seed0.json"
        reference = json.loads((tmp_path / "reference" / name).read_text())["metrics"]
        resumed = json.loads((tmp_path / "resumed" / name).read_text())["metrics"]
        assert resumed["mean_auroc"] == pytest.approx(reference["mean_auroc"], abs=1e-6)
        assert resumed["per_class_auroc"] == pytest.approx(reference["per_class_auroc"], abs=1e-6)


class _Planted:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CXRBENCH_PLANTED_MARK']}",))


def test_a_planted_checkpoint_is_refused_and_its_code_never_runs(tmp_path, monkeypatch, smoke_profile, smoke_nih):
    mark = tmp_path / "the-planted-command-ran"
    monkeypatch.setenv("CXRBENCH_PLANTED_MARK", str(mark))
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"format": "cxrbench-pretrain-checkpoint-2", "payload": _Planted()}, checkpoints / "epoch-00009.pt")
    with pytest.warns(UserWarning, match=r"epoch-00009.pt: refused or unreadable checkpoint") as caught:
        assert latest_checkpoint(checkpoints) is None
    assert not mark.exists()
    assert all("\n" not in str(warning.message) for warning in caught)  # one line
    # a genuine checkpoint of every method loads weights-only (PCRLv2's Python RNG included)
    result = _pretrain("pcrlv2", smoke_profile, smoke_nih, tmp_path / "genuine", epochs=2)
    assert result.steps > 0
    state = latest_checkpoint(tmp_path / "genuine")
    assert state is not None and "python_random_state" in state["method"]["attributes"]["scale_rng"]
