"""Pretraining checkpoints: atomic saves at the end of an epoch, the newest readable one on resume."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cxrbench.records.io import atomic_torch_save

CHECKPOINT_PATTERN = "epoch-*.pt"
KEEP_CHECKPOINTS = 2  # the newest and the one before it, in case the newest is unreadable


def latest_checkpoint(checkpoint_dir: Path | None) -> dict | None:
    """The newest checkpoint that loads completely, or None; unreadable ones are reported."""
    if checkpoint_dir is None:
        return None
    for path in sorted(Path(checkpoint_dir).glob(CHECKPOINT_PATTERN), reverse=True):
        try:
            # weights-only: a checkpoint holds tensors and plain containers alone, so a file
            # someone placed in the folder can never run code when it is loaded
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != "cxrbench-pretrain-checkpoint-2":
                raise ValueError("not a cxrbench pretraining checkpoint")
            return state
        except Exception as error:  # truncated zip, foreign or unsafe content: fall back to the previous one
            reason = (str(error).strip().splitlines() or [""])[0]
            warnings.warn(f"{path}: refused or unreadable checkpoint ({type(error).__name__}: {reason}); "
                          f"trying the previous one", stacklevel=2)
    return None


def save_checkpoint(checkpoint_dir: Path, epoch: int, state: dict) -> None:
    checkpoint_dir = Path(checkpoint_dir)
    atomic_torch_save(checkpoint_dir / f"epoch-{epoch:05d}.pt", state)
    for old in sorted(checkpoint_dir.glob(CHECKPOINT_PATTERN))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
