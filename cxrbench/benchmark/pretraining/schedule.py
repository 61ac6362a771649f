"""The learning-rate schedule of the pretraining loop: linear warm-up, then cosine decay.

It is the schedule the SimCLR/BYOL/VICReg reference code shares, stepped per iteration, or per
epoch for the methods whose official code sets the rate once per epoch (SimSiam, PCRLv2, MoCo v2,
DenseCL); a warm-up, where a method has one, rises every step in either case (``rate_factor``).
"""

from __future__ import annotations

import math


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps  # official SimCLR, BYOL, VICReg: the first step's rate is 0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return final_fraction + (1 - final_fraction) * cosine


def schedule_step(step: int, steps_per_epoch: int, unit: str) -> int:
    """The step the learning-rate schedule is evaluated at: every step, or the epoch's first step.

    Official SimSiam and PCRLv2 set the rate once per epoch (cosine over epochs); the
    schedule at an epoch's first step is exactly that rate.
    """
    if unit == "step":
        return step
    if unit == "epoch":
        return (step // steps_per_epoch) * steps_per_epoch
    raise ValueError(f"lr_schedule_unit {unit!r}: expected 'step' or 'epoch'")


def rate_factor(step: int, steps_per_epoch: int, unit: str, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """The multiplier the loop applies at ``step``: a warm-up, where there is one, rises every step
    in either unit; after it, the cosine is evaluated at the method's unit.

    Stepping the warm-up once per epoch would hold a whole first epoch at rate 0 (the first step's
    official rate) and then jump, which is no warm-up at all. No official epoch-unit recipe here
    has a warm-up; only investigation knobs (MoCo v2's ``warmup_epochs``) give them one.
    """
    at = step if step < warmup_steps else max(schedule_step(step, steps_per_epoch, unit), warmup_steps)
    return learning_rate_factor(at, total_steps, warmup_steps, final_fraction)
