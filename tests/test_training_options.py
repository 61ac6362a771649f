"""The GPU options of pretraining (precision, channels-last), checked on the CPU."""

from __future__ import annotations

import pytest
import torch

from cxrbench.benchmark.pretraining.loop import StepRunner, TrainingOptions
from cxrbench.benchmark.profiles import load_profile, method_hyperparameters
from cxrbench.methods import get_method


def _two_steps(name: str, options: TrainingOptions, fp16_init_scale: float | None = None) -> tuple[list[float], torch.nn.Module]:
    images = torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    method = get_method(name)(method_hyperparameters(load_profile("smoke"), name))
    method.train()
    views = method.make_views(images, generator=torch.Generator().manual_seed(1))
    step_runner = StepRunner(method, torch.device("cpu"), options)
    if fp16_init_scale is not None:
        step_runner.scaler = torch.amp.GradScaler("cpu", init_scale=fp16_init_scale)
    optimizer = method.build_optimizer(8)
    losses = [step_runner(views, optimizer, step, progress=0.5)[1]["loss"] for step in range(2)]
    return losses, method


@pytest.mark.parametrize("name", ["simclr", "optiml"])
def test_channels_last_changes_the_layout_not_the_result(name):
    reference, _ = _two_steps(name, TrainingOptions())
    losses, method = _two_steps(name, TrainingOptions(channels_last=True))
    assert method.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert losses == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("name", ["vicreg", "optiml"])
def test_bf16_autocast_trains_close_to_fp32(name):
    reference, _ = _two_steps(name, TrainingOptions())
    losses, method = _two_steps(name, TrainingOptions(precision="bf16"))
    # bf16 keeps 8 bits of mantissa: the losses agree to about a percent, not to float32 precision
    assert losses == pytest.approx(reference, rel=2e-2)
    assert losses != reference  # autocast did run the forward in bf16
    assert all(parameter.dtype == torch.float32 for parameter in method.parameters())  # master weights stay fp32


@pytest.mark.parametrize("name", ["vicreg", "optiml"])
def test_fp16_autocast_with_its_gradient_scaler_trains_close_to_fp32(name):
    reference, _ = _two_steps(name, TrainingOptions())
    # the default initial scale (2^16) overflows these losses' first gradients, and the scaler then
    # skips that step as designed; 2^8 does not, so both steps are taken and comparable
    losses, method = _two_steps(name, TrainingOptions(precision="fp16"), fp16_init_scale=2.0**8)
    assert losses == pytest.approx(reference, rel=2e-2)
    assert losses != reference  # autocast did run the forward in fp16
    assert losses[1] != losses[0]  # the first step was taken
    assert all(parameter.dtype == torch.float32 for parameter in method.parameters())


@pytest.mark.parametrize(
    "settings, named",
    [({"precision": "fp8"}, "fp8"), ({"augment_on": "tpu"}, "tpu"), ({"channels_last": "yes"}, "channels_last")],
)
def test_bad_training_options_are_named(settings, named):
    with pytest.raises(ValueError, match=named):
        TrainingOptions.from_settings(settings)


def _encoder_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def test_fp16_step_skipped_by_the_gradient_scaler_leaves_the_momentum_encoder_alone():
    images = torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    method = get_method("mocov2")(method_hyperparameters(load_profile("smoke"), "mocov2")).train()
    views = method.make_views(images, generator=torch.Generator().manual_seed(1))
    step_runner = StepRunner(method, torch.device("cpu"), TrainingOptions(precision="fp16"))
    optimizer = method.build_optimizer(8)
    # a first step the scaler takes (scale 1 cannot overflow) moves the online encoder away from the
    # momentum one, so that a momentum update after a skipped step would show
    # (growth_interval=1: the scale grows after this step, which must count as a step taken)
    step_runner.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1)
    momentum_before = _encoder_weights(method.key_encoder)
    step_runner(views, optimizer, 0, progress=0.5)
    assert step_runner.scaler.get_scale() == 2.0
    assert any(not torch.equal(a, b) for a, b in zip(momentum_before, _encoder_weights(method.key_encoder)))
    # a scale of 2^100 overflows every fp16 gradient: the scaler skips the step
    step_runner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    online, momentum = _encoder_weights(method.encoder), _encoder_weights(method.key_encoder)
    assert any(not torch.equal(a, b) for a, b in zip(online, momentum))
    step_runner(views, optimizer, 1, progress=0.5)
    assert step_runner.scaler.get_scale() < 2.0**100  # it did skip
    assert all(torch.equal(a, b) for a, b in zip(online, _encoder_weights(method.encoder)))
    assert all(torch.equal(a, b) for a, b in zip(momentum, _encoder_weights(method.key_encoder)))
