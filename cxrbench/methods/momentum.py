"""Building blocks shared by the momentum-encoder methods (MoCo v2, BYOL, DenseCL)."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from lightly.models.utils import batch_shuffle_distributed, batch_unshuffle_distributed, deactivate_requires_grad, update_momentum
from torch import nn

from cxrbench.distributed import world

__all__ = ["momentum_copy", "update_momentum", "cosine_momentum", "shuffle_bn_forward"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that is only ever updated by EMA, never by gradients."""
    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's target momentum: tau = 1 - (1 - base) * (cos(pi * progress) + 1) / 2, rising to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def shuffle_bn_forward(forward: Callable, images: torch.Tensor, splits: int):
    """MoCo's shuffle-BN: the key encoder's BatchNorm never sees the query encoder's batch.

    Under torchrun (several processes) this is the official scheme: the global key batch is
    shuffled across processes (lightly's ``batch_shuffle_distributed``), each process encodes
    its share with its own BatchNorm statistics, and the outputs are gathered back into the
    original order. ``splits`` is then unused: each process is one of the official GPUs.

    In one process the batch is permuted, split into ``splits`` chunks that each go through
    the key encoder on their own (own BN statistics, as one GPU would), and the outputs are
    put back in the original order. ``splits = 1`` disables it.
    ``forward`` may return one tensor or a tuple of tensors with the batch first.
    """
    if world().distributed:
        shuffled, restore = batch_shuffle_distributed(images)
        output = forward(shuffled)
        if isinstance(output, torch.Tensor):
            return batch_unshuffle_distributed(output.contiguous(), restore)
        # contiguous: NCCL refuses strided tensors (channels-last feature maps, flattened)
        return tuple(batch_unshuffle_distributed(part.contiguous(), restore) for part in output)
    if splits <= 1:
        return forward(images)
    order = torch.randperm(images.shape[0], device=images.device)
    chunks = [forward(chunk) for chunk in images[order].chunk(splits)]
    single = isinstance(chunks[0], torch.Tensor)
    outputs = [torch.cat(parts) for parts in zip(*[(c,) if single else c for c in chunks])]
    restored = []
    for output in outputs:
        unshuffled = torch.empty_like(output)
        unshuffled[order] = output
        restored.append(unshuffled)
    return restored[0] if single else tuple(restored)
