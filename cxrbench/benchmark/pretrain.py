"""The one pretraining loop every method goes through (the method supplies views, loss, optimiser).

The schedule is the one the SimCLR/BYOL/VICReg reference code shares: linear warm-up of the
learning rate, then cosine decay to ``final_lr_fraction`` of the peak, stepped per iteration.
A method that needs another schedule says so through its hyperparameters
(``warmup_epochs``, ``final_lr_fraction``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.base import Method


@dataclass
class PretrainResult:
    encoder_state_dict: dict
    history: list[dict]  # one entry per epoch: mean of each logged scalar
    steps: int
    epochs: float
    seconds: float


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return final_fraction + (1 - final_fraction) * cosine


def pretrain(
    method: Method,
    dataset: PreparedDataset,
    *,
    batch_size: int,
    epochs: float,
    max_steps: int | None,
    seed: int,
    device: torch.device,
    description: str = "pretrain",
) -> PretrainResult:
    """Pretrain ``method`` on the training split of ``dataset`` (labels are never read)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    images = torch.from_numpy(np.ascontiguousarray(dataset.images[dataset.split_positions("train")]))
    if len(images) < batch_size:
        raise ValueError(f"{dataset.name}: {len(images)} training images, fewer than the batch size {batch_size}")
    steps_per_epoch = len(images) // batch_size  # drop_last, as the reference code does
    total_steps = int(round(epochs * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    total_steps = max(1, total_steps)
    hp = method.hparams
    warmup_steps = int(round(getattr(hp, "warmup_epochs", 0) * steps_per_epoch))
    final_fraction = getattr(hp, "final_lr_fraction", 0.0)

    method.to(device).train()
    optimizer = method.build_optimizer(batch_size)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    history: list[dict] = []
    epoch_logs: dict[str, list[float]] = {}
    order = torch.randperm(len(images), generator=generator)
    position = 0
    bar = tqdm(total=total_steps, desc=description, unit="step", leave=False, disable=None)
    for step in range(total_steps):
        if position + batch_size > len(images):
            order, position = torch.randperm(len(images), generator=generator), 0
        batch = images[order[position : position + batch_size]].to(device, non_blocking=True)
        position += batch_size
        factor = learning_rate_factor(step, total_steps, warmup_steps, final_fraction)
        for group, peak in zip(optimizer.param_groups, peak_lrs):
            # a group marked fixed_lr keeps its rate (SimSiam's predictor, official `--fix-pred-lr`)
            group["lr"] = peak if group.get("fixed_lr") else peak * factor
        views = method.make_views(batch, generator=generator if device.type == "cpu" else None)
        loss, logs = method.training_step(views)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method.name}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step((step + 1) / total_steps)
        for key, value in logs.items():
            epoch_logs.setdefault(key, []).append(float(value))
        bar.set_postfix(loss=f"{logs.get('loss', loss.item()):.4f}")
        bar.update(1)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total_steps:
            history.append({"epoch": len(history) + 1, "step": step + 1, "lr": peak_lrs[0] * factor}
                           | {key: float(np.mean(values)) for key, values in epoch_logs.items()})
            epoch_logs = {}
    bar.close()
    method.eval()
    return PretrainResult(
        encoder_state_dict=method.export_encoder(),
        history=history,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        seconds=time.perf_counter() - started,
    )
