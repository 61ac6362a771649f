"""Several processes, one pretraining: torchrun + DistributedDataParallel.

``bench run`` started under ``torchrun --nproc_per_node N`` (one or several nodes) finds the
process group in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``...). Every process then pretrains the same method on its share of each global
batch, the losses that need the whole batch gather it across processes (with gradients),
and only rank 0 writes checkpoints, encoders and records. Evaluation cells, which are
independent of each other, are shared out between the ranks.

Backend: NCCL on GPUs, gloo on CPUs (the tests run 2 gloo processes on one CPU machine).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def init_from_environment(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes, if any; returns the world and this rank's device.

    Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialised.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return world(), device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # a long timeout: ranks wait at barriers while rank 0 alone exports an encoder and computes
    # its diagnostics, and while the rank with one cell more (a paper-profile fine-tune cell
    # can take hours) finishes it; a rank that fails ends the others through torchrun
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=24))
    return world(), device


@contextlib.contextmanager
def process_group_from_environment(device: torch.device):
    """``init_from_environment`` for a ``with`` block; a block that ends normally leaves the group it joined.

    A gloo process that ends without ``destroy_process_group`` can abort at interpreter exit
    (SIGABRT, "terminate called without an active exception": gloo's threads still hold
    tensors while Python is torn down; pytorch/pytorch#190489), and torchrun then fails a run
    whose records were all written. Only a block that ends normally leaves the group: NCCL's
    destroy waits for the other ranks, so a rank that raised while they wait in a collective
    would hang there instead of exiting and letting torchrun end them. A group that was there
    before the block is left alone.
    """
    was_initialised = dist.is_available() and dist.is_initialized()
    here, device = init_from_environment(device)
    yield here, device
    if not was_initialised and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo takes CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_across_processes(values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged scalar over the processes (one all-reduce for all of them)."""
    if not world().distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(stacked)
    return {key: value / world().size for key, value in zip(keys, stacked.tolist())}


def gather_objects(value) -> list:
    """``value`` of every rank, in rank order (a list of one in a single process)."""
    if not world().distributed:
        return [value]
    values = [None] * world().size
    dist.all_gather_object(values, value)
    return values


def sum_across_processes(count: int) -> int:
    if not world().distributed:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(total)
    return int(total.item())


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """The global batch: every process's rows in rank order; gradients flow back to their owners.

    lightly's ``GatherLayer`` all-reduces the incoming gradients in backward, so a loss
    computed on the gathered batch by every process, averaged by DDP, has the gradient of
    the same loss computed in one process.
    """
    if not world().distributed:
        return tensor
    from lightly.utils.dist import gather

    return torch.cat(gather(tensor.contiguous()), dim=0)  # NCCL refuses strided (e.g. channels-last) views


class ProcessGroupBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any backend.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors (it is written for NCCL), so on CPU/gloo
    this small replacement is used instead: per-channel sums and sums of squares are summed
    over the processes through ``gather_with_gradients`` (so gradients reach every process's
    share of the batch), and the batch is normalised with the global mean and (biased) variance, as BatchNorm does
    on the whole batch in one process. Running statistics take the unbiased variance, as
    BatchNorm does. On GPUs ``convert_sync_batchnorm`` uses torch's own SyncBatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world().distributed):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        # statistics in float32 whatever the autocast dtype: E[x^2] - E[x]^2 in bf16 loses the variance
        values = input.float()
        count = torch.tensor([values.numel() / values.shape[1]], dtype=values.dtype, device=values.device)
        local = torch.cat([values.sum(dims), (values * values).sum(dims), count])
        total = gather_with_gradients(local[None]).sum(dim=0)
        channels = values.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        shape = [1, channels] + [1] * (values.dim() - 2)
        output = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            output = output * self.weight.view(shape)
        if self.bias is not None:  # None: a scale without a shift (SimCLR's last head norm)
            output = output + self.bias.view(shape)
        return output.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` normalised over the global batch (names and weights kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorm(module)


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, ProcessGroupBatchNorm):
        replacement = ProcessGroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name in ("weight", "bias"):
            if module.affine and getattr(module, name) is None:
                replacement.register_parameter(name, None)  # e.g. a norm with a scale and no shift
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                getattr(replacement, name).requires_grad_(getattr(module, name).requires_grad)
        return replacement
    for name, child in module.named_children():
        setattr(module, name, _replace_batchnorm(child))
    return module
