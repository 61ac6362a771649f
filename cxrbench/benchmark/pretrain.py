"""The one pretraining loop every method goes through (the method supplies views, loss, optimiser).

The schedule is the one the SimCLR/BYOL/VICReg reference code shares: linear warm-up of the
learning rate, then cosine decay to ``final_lr_fraction`` of the peak, stepped per iteration.
A method that needs another schedule says so through its hyperparameters
(``warmup_epochs``, ``final_lr_fraction``).

With a ``checkpoint_dir`` the loop saves, atomically at the end of every epoch, everything it
needs to continue: the method (parameters, buffers, plain attributes), the optimiser, the
step, the data order and position, the history and both random generators. Started again
with the same arguments it resumes from the newest readable checkpoint (a truncated or
corrupt one is reported and the one before it used) and ends with the same weights as an
uninterrupted run on CPU.
"""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrbench.benchmark.records import atomic_torch_save
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


CHECKPOINT_PATTERN = "epoch-*.pt"
KEEP_CHECKPOINTS = 2  # the newest and the one before it, in case the newest is unreadable


def latest_checkpoint(checkpoint_dir: Path | None) -> dict | None:
    """The newest checkpoint that loads completely, or None; unreadable ones are reported."""
    if checkpoint_dir is None:
        return None
    for path in sorted(Path(checkpoint_dir).glob(CHECKPOINT_PATTERN), reverse=True):
        try:
            # our own file, holding optimiser state and RNG states, so not weights-only
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or state.get("format") != "cxrbench-pretrain-checkpoint-1":
                raise ValueError("not a cxrbench pretraining checkpoint")
            return state
        except Exception as error:  # truncated zip, wrong content: fall back to the previous one
            warnings.warn(f"{path}: unreadable checkpoint ({type(error).__name__}: {error}); trying the previous one", stacklevel=2)
    return None


def _save_checkpoint(checkpoint_dir: Path, epoch: int, state: dict) -> None:
    checkpoint_dir = Path(checkpoint_dir)
    atomic_torch_save(checkpoint_dir / f"epoch-{epoch:05d}.pt", state)
    for old in sorted(checkpoint_dir.glob(CHECKPOINT_PATTERN))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def _fault_injection(step: int) -> None:
    """Test hook: ``CXRBENCH_KILL_AT_STEP=N`` kills this process with SIGKILL before step N."""
    target = os.environ.get("CXRBENCH_KILL_AT_STEP")
    if target is not None and step == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


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
    checkpoint_dir: Path | None = None,
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
    position, first_step, seconds_before = 0, 0, 0.0
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        if resumed["total_steps"] != total_steps or resumed["batch_size"] != batch_size:
            raise ValueError(f"{checkpoint_dir}: checkpoint of another schedule ({resumed['total_steps']} steps of "
                             f"{resumed['batch_size']}), expected {total_steps} steps of {batch_size}")
        method.load_checkpoint_state(resumed["method"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["torch_rng"])
        if resumed.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        order, position, history = resumed["order"], resumed["position"], resumed["history"]
        first_step, seconds_before = resumed["step"], resumed["seconds"]
    bar = tqdm(total=total_steps, initial=first_step, desc=description, unit="step", leave=False, disable=None)
    for step in range(first_step, total_steps):
        _fault_injection(step)
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
            if checkpoint_dir is not None and step + 1 < total_steps:
                _save_checkpoint(checkpoint_dir, len(history), {
                    "format": "cxrbench-pretrain-checkpoint-1",
                    "method": method.checkpoint_state(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "order": order, "position": position, "history": history, "step": step + 1,
                    "total_steps": total_steps, "batch_size": batch_size,
                    "seconds": seconds_before + time.perf_counter() - started,
                })
    bar.close()
    method.eval()
    return PretrainResult(
        encoder_state_dict=method.export_encoder(),
        history=history,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        seconds=seconds_before + time.perf_counter() - started,
    )
