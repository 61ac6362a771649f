"""GPU behaviour: run where CUDA is present, deselected elsewhere (see conftest.py).

What a CPU cannot show: autocast and the fp16 gradient scaler on CUDA kernels, a momentum
encoder left alone when the scaler skips a step, the Sinkhorn solver on CUDA against POT,
views made on the GPU equal to views made on the CPU from the same generator state, and every
method's pretraining under bf16 and channels-last on the device.
"""

import numpy as np
import ot
import pytest
import torch

from cxrbench.benchmark.pretraining.loop import StepRunner, TrainingOptions, pretrain
from cxrbench.methods import available_methods, get_method
from cxrbench.methods.sinkhorn import sinkhorn_solve

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
PRETRAINING = [name for name in available_methods() if get_method(name).pretrains]


def _method(name):
    cls = get_method(name)
    small = {field: value for field, value in {"expander_dim": 256, "hidden_dim": 512, "projection_dim": 128,
                                                 "queue_size": 32, "warmup_epochs": 0}.items()
             if field in cls.Hyperparameters.__dataclass_fields__}
    return cls(cls.resolve_hyperparameters(small))


@pytest.mark.parametrize("name", PRETRAINING)
def test_views_made_on_the_gpu_equal_views_made_on_the_cpu(name, smoke_nih):
    method = _method(name)
    images = torch.from_numpy(np.ascontiguousarray(smoke_nih.images[:16]))
    on_cpu = method.make_views(images, generator=torch.Generator().manual_seed(3))
    on_gpu = method.make_views(images.to(CUDA), generator=torch.Generator().manual_seed(3))
    assert len(on_cpu) == len(on_gpu)
    for cpu_view, gpu_view in zip(on_cpu, on_gpu):
        assert gpu_view.device.type == "cuda"
        torch.testing.assert_close(gpu_view.cpu(), cpu_view, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PRETRAINING)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_method_pretrains_on_the_gpu_under_autocast_and_channels_last(name, precision, smoke_nih):
    torch.manual_seed(0)
    method = _method(name)
    before = {k: v.clone() for k, v in method.export_encoder().items()}
    result = pretrain(method, smoke_nih, batch_size=8, epochs=1, max_steps=3, seed=0, device=CUDA,
                      options=TrainingOptions(precision=precision, channels_last=True, augment_on="device"))
    assert np.isfinite(result.history[-1]["loss"])
    assert not torch.equal(before["layer4.1.conv2.weight"], result.encoder_state_dict["layer4.1.conv2.weight"])


@pytest.mark.parametrize("name", ["byol", "mocov2"])
def test_a_step_the_fp16_scaler_skips_leaves_the_momentum_encoder_alone(name, smoke_nih):
    torch.manual_seed(0)
    method = _method(name)
    runner = StepRunner(method, CUDA, TrainingOptions(precision="fp16"))
    optimizer = method.build_optimizer(8)
    images = torch.from_numpy(np.ascontiguousarray(smoke_nih.images[:8])).to(CUDA)
    views = method.make_views(images, generator=torch.Generator().manual_seed(0))
    runner(views, optimizer, 0, 0.1)  # one ordinary step
    state = {k: v.detach().clone() for k, v in method.state_dict().items()}
    # an overflowing gradient: the scaler must skip the optimiser step, and the momentum update with it
    first = next(p for p in method.parameters() if p.requires_grad)
    handle = first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    scale = runner.scaler.get_scale()
    runner(views, optimizer, 1, 0.2)
    handle.remove()
    assert runner.scaler.get_scale() < scale
    for key, value in method.state_dict().items():
        if value.is_floating_point() and "running_" not in key and "num_batches" not in key and "queue" not in key:
            assert torch.equal(value, state[key]), key


def test_sinkhorn_on_cuda_matches_pot():
    generator = torch.Generator().manual_seed(0)
    M = torch.rand(8, 64, 64, generator=generator, dtype=torch.float64)
    a = torch.full((8, 64), 1 / 64, dtype=torch.float64)
    b = torch.full((8, 64), 1 / 64, dtype=torch.float64)
    plan, *_ = sinkhorn_solve(M.to(CUDA), a.to(CUDA), b.to(CUDA), epsilon=0.05, max_iter=5000, tol=1e-12)
    reference = ot.solve_batch(M.numpy(), reg=0.05, a=a.numpy(), b=b.numpy(), max_iter=20000, tol=1e-13, reg_type="entropy")
    np.testing.assert_allclose(plan.cpu().numpy(), reference.plan, atol=1e-9)


@pytest.mark.multigpu
def test_torchrun_on_two_gpus_pretrains_with_sync_batchnorm_over_nccl(tmp_path):
    """Two ranks over NCCL with BatchNorm synchronised: one pretraining record of 2 processes,
    and the cells written once (rank 0), as the gloo test on the CPU checks."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxrbench", "run",
               "--methods", "mocov2", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
               "--fractions", "10,100", "--sync-batchnorm", "--precision", "bf16", "--device", "cuda", "--out", str(out)]
    result = subprocess.run(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:]
    record = json.loads((out / "pretrain" / "mocov2__phantom-nih" / "record.json").read_text())
    assert record["processes"] == 2 and record["pretrain_settings"]["sync_batchnorm"] is True
    assert len(list((out / "cells").glob("*.json"))) == 2
