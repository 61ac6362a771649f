import math

import numpy as np
import pytest
import torch
import torchvision

from cxrbench.benchmark.protocols.metrics import auroc_per_class
from cxrbench.benchmark.pretraining.loop import pretrain
from cxrbench.benchmark.pretraining.schedule import learning_rate_factor
from cxrbench.benchmark.protocols.registry import PROTOCOLS
from cxrbench.methods import get_method


def test_learning_rate_warms_up_then_decays_to_the_final_fraction():
    total, warmup = 100, 10
    factors = [learning_rate_factor(step, total, warmup, 0.001) for step in range(total)]
    # official SimCLR/BYOL/VICReg warm-up: step / warmup_steps, so the first step's rate is 0
    assert factors[0] == 0.0 and factors[warmup - 1] == pytest.approx(0.9) and factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert learning_rate_factor(total, total, warmup, 0.001) == pytest.approx(0.001)
    midpoint = warmup + (total - warmup) // 2
    assert factors[midpoint] == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)


def test_pretraining_changes_the_encoder_and_exports_a_torchvision_resnet18(smoke_nih):
    cls = get_method("vicreg")
    method = cls(cls.resolve_hyperparameters({"expander_dim": 64, "warmup_epochs": 0}))
    before = {k: v.clone() for k, v in method.export_encoder().items()}
    result = pretrain(method, smoke_nih, batch_size=8, epochs=1, max_steps=2, seed=0, device=torch.device("cpu"))
    assert result.steps == 2 and len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    changed = [k for k in before if not torch.equal(before[k], result.encoder_state_dict[k])]
    assert "layer4.1.conv2.weight" in changed
    missing, unexpected = torchvision.models.resnet18().load_state_dict(result.encoder_state_dict, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_snapshots_are_the_encoder_at_the_steps_asked_for(smoke_nih):
    cls = get_method("vicreg")
    method = cls(cls.resolve_hyperparameters({"expander_dim": 64, "warmup_epochs": 0}))
    result = pretrain(method, smoke_nih, batch_size=8, epochs=1, max_steps=3, seed=0, device=torch.device("cpu"),
                      snapshot_steps=(1, 3))
    assert sorted(result.snapshots) == [1, 3]
    assert all(torch.equal(result.snapshots[3][k], v) for k, v in result.encoder_state_dict.items())
    assert not torch.equal(result.snapshots[1]["layer4.1.conv2.weight"], result.snapshots[3]["layer4.1.conv2.weight"])


def test_pretraining_writes_its_per_step_curves_for_tensorboard_and_the_record(smoke_nih, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cls = get_method("simclr")
    method = cls(cls.resolve_hyperparameters({"warmup_epochs": 0}))
    result = pretrain(method, smoke_nih, batch_size=8, epochs=1, max_steps=3, seed=0, device=torch.device("cpu"),
                      log_dir=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"pretrain/loss", "pretrain/lr", "pretrain/images_per_second"} <= set(events.Tags()["scalars"])
    losses = events.Scalars("pretrain/loss")
    assert [event.step for event in losses] == [1, 2, 3]
    assert [entry["step"] for entry in result.step_history] == [1, 2, 3]
    np.testing.assert_allclose([event.value for event in losses], [entry["loss"] for entry in result.step_history], rtol=1e-6)
    assert len(result.step_seconds) == 3 and all(seconds > 0 for seconds in result.step_seconds)


def test_frozen_features_use_batchnorm_statistics_of_the_training_images(smoke_nih):
    """Every encoder's BN statistics are re-estimated on the training images before pooling:
    the stored statistics (here: absurd ones) must not change the features."""
    from cxrbench.benchmark.protocols.base import as_input, load_encoder
    from cxrbench.benchmark.protocols.frozen import reestimate_batchnorm

    torch.manual_seed(0)
    state = get_method("sup1")().export_encoder()
    absurd = {k: (v + 5.0 if k.endswith("running_mean") else v * 9.0 if k.endswith("running_var") else v) for k, v in state.items()}
    frozen = PROTOCOLS["frozen"]
    features = frozen.prepare_shared(state, smoke_nih, torch.device("cpu"))["features"]
    np.testing.assert_allclose(frozen.prepare_shared(absurd, smoke_nih, torch.device("cpu"))["features"], features, rtol=1e-4, atol=1e-5)
    # the first BN's statistics are the mean and (unbiased) variance of conv1's output over the training images
    encoder = load_encoder(state, torch.device("cpu"))
    train_images = smoke_nih.images[smoke_nih.split_positions("train")]
    reestimate_batchnorm(encoder, train_images, torch.device("cpu"), batch_size=len(train_images))
    with torch.no_grad():
        conv1 = encoder.conv1(as_input(train_images, torch.device("cpu")))
    torch.testing.assert_close(encoder.bn1.running_mean, conv1.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encoder.bn1.running_var, conv1.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert not encoder.training


def test_auroc_skips_labels_without_positives_and_averages_the_rest():
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.8, 0.2, 0.7], [0.1, 0.5, 0.6]])
    metrics = auroc_per_class(targets, scores, ["a", "b", "c"])
    assert metrics["per_class_auroc"] == {"a": 1.0, "b": None, "c": 0.75}
    assert metrics["mean_auroc"] == pytest.approx(0.875)
    assert metrics["undefined_classes"] == ["b"]


@pytest.mark.parametrize("protocol_name", ["frozen", "finetune"])
def test_protocols_touch_test_once_with_the_selected_model(protocol_name, smoke_nih, smoke_profile):
    torch.manual_seed(0)
    state = get_method("sup1")().export_encoder()
    protocol = PROTOCOLS[protocol_name]
    shared = protocol.prepare_shared(state, smoke_nih, torch.device("cpu"))
    result = protocol.run(state, smoke_nih, 100, 0, smoke_profile["evaluation"][protocol_name], torch.device("cpu"), shared)
    test = smoke_nih.split_positions("test")
    assert result.predictions["scores"].shape == (len(test), len(smoke_nih.label_columns))
    assert result.predictions["image_ids"].tolist() == smoke_nih.index["image_id"].iloc[test].tolist()
    assert 0 <= result.selection["val_score"] <= 1 and result.selection["val_metric"] == "mean_auroc"
    assert result.num_train_images == len(smoke_nih.split_positions("train"))


def test_frozen_probe_learns_a_linearly_separable_label(smoke_nih, smoke_profile):
    """With features that encode the label, the linear probe must reach AUROC 1."""
    targets = smoke_nih.targets(np.arange(len(smoke_nih.index)))
    rng = np.random.default_rng(0)
    features = np.concatenate([targets * 3, rng.normal(size=(len(targets), 20))], axis=1).astype(np.float32)
    config = dict(smoke_profile["evaluation"]["frozen"], epochs=100, learning_rates=[0.5])
    result = PROTOCOLS["frozen"].run(None, smoke_nih, 100, 0, config, torch.device("cpu"), {"features": features})
    defined = [v for v in result.metrics["per_class_auroc"].values() if v is not None]
    assert defined and min(defined) > 0.99


def test_finetune_stops_after_patience_evaluations_without_improvement(smoke_nih, smoke_profile, monkeypatch):
    from cxrbench.benchmark.protocols import finetune as protocols

    # validation scores 0.9, 0.8, 0.7, ...: the best is the first evaluation
    scores = iter([0.9 - 0.1 * i for i in range(20)])
    monkeypatch.setattr(protocols, "auroc_per_class",
                        lambda *args: {"mean_auroc": next(scores), "per_class_auroc": {}, "undefined_classes": []})
    torch.manual_seed(0)
    state = get_method("sup1")().export_encoder()
    config = dict(smoke_profile["evaluation"]["finetune"], max_steps=12, eval_every=1, patience=2)
    result = PROTOCOLS["finetune"].run(state, smoke_nih, 100, 0, config, torch.device("cpu"))
    assert result.selection["step"] == 1 and result.selection["steps_run"] == 3  # stopped two evaluations later


def test_the_loop_warms_an_epoch_unit_method_up_every_step(smoke_nih):
    """MoCo v2 sets its cosine once per epoch; a warm-up (its investigation knob) must still rise
    every step in the loop: 0, 1/E, 2/E, ... of the peak over the first epoch of E steps, not a whole
    epoch at rate 0."""
    cls = get_method("mocov2")
    method = cls(cls.resolve_hyperparameters({"queue_size": 16, "warmup_epochs": 1}))
    steps_per_epoch = len(smoke_nih.split_positions("train")) // 8
    assert steps_per_epoch >= 4
    result = pretrain(method, smoke_nih, batch_size=8, epochs=2, max_steps=4, seed=0, device=torch.device("cpu"))
    peak = method.hparams.base_lr * 8 / 256
    assert [entry["lr"] for entry in result.step_history] == pytest.approx([peak * step / steps_per_epoch for step in range(4)])
