"""What every method is to the runner: a small, documented interface.

The runner never branches on a method's name. It asks a method for

* ``pretrains``           whether it has a self-supervised pretraining stage at all;
* ``make_views(images)``  augmented views of a uint8 batch (B, H, W);
* ``training_step(views)``  the loss and a dict of scalar logs;
* ``build_optimizer(...)`` its optimiser (official choice: LARS, SGD, Adam ...), with each
  param group's peak learning rate; the loop moves every group's rate by ``lr_schedule()``
  (linear warm-up, then cosine), except a group marked ``FIXED_LR``;
* ``lr_schedule()``       that schedule: warm-up epochs, the cosine's final fraction of the peak,
  and whether the cosine moves every step or once per epoch (a warm-up rises every step);
* ``after_optimizer_step(progress)``  hooks such as momentum-encoder updates;
* ``encoder``             the torchvision ResNet trunk it trains and exports (``backbone``:
  ResNet-18 by default, the paper's; ResNet-50 with ``model.backbone``), whose pooled width
  ``feature_dim`` (512 or 2048) its heads are built from;
* ``unavailable_reason``  why it cannot run here (weights it cannot load), if so;
* ``checkpoint_state()`` / ``load_checkpoint_state()``  everything a resumed pretraining
  needs: parameters, *all* buffers (lightly's queues are non-persistent buffers, absent
  from ``state_dict``) and the plain attributes named in ``checkpoint_attributes``.

A hyperparameter dataclass may carry ``encoder_init`` ("random" or "imagenet") and
``weights_path``; the base class builds the encoder from them. It may carry ``warmup_epochs``
and ``final_lr_fraction``; the default ``lr_schedule()`` reads them (none: no warm-up, cosine
to 0).

What a record says of a method comes from its class: ``display_name``, ``is_baseline``,
``baseline_rank``, ``is_random_init`` and, for an ablation variant, ``ablation`` (Table III's
switches).

A method file adds its heads, its loss and its view recipe on top of this, nothing else.
Hyperparameters are a dataclass per method whose defaults are the official values; a
profile overrides them by name (``methods: {vicreg: {...}}``) and the resolved values are
stored in every record.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import random
from typing import Any, ClassVar

import torch
from torch import nn

from cxrbench.methods.backbone import encoder_state_dict, feature_dim, imagenet_weights_missing, resnet_encoder


# a param group with this key set keeps its peak learning rate (official SimSiam's `--fix-pred-lr`)
FIXED_LR = "fixed_lr"


@dataclasses.dataclass(frozen=True)
class LrSchedule:
    """Linear warm-up from 0 over ``warmup_epochs``, rising every step, then cosine decay to
    ``final_lr_fraction`` of the peak, evaluated every step or at each epoch's first step
    (``unit="epoch"``)."""

    warmup_epochs: float = 0.0
    final_lr_fraction: float = 0.0
    unit: str = "step"


class Method(nn.Module):
    """Base class of every method, pretraining or not."""

    # Filled in by the registry decorator.
    name: ClassVar[str] = ""
    # Shown in tables and listings.
    display_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Supervised baselines are the first rows of every table.
    is_baseline: ClassVar[bool] = False
    # which baseline a table compares every row with: the lowest rank among the baselines present
    # (the paper's Sup.2, ImageNet initialisation, 0; Sup.1, random initialisation, 1). Stored in
    # each record, so reports choose the baseline from the records alone.
    baseline_rank: ClassVar[int | None] = None
    # the row that tells whether a method learned at all (an untrained network): the learning check
    # compares every other method's cells with this one's
    is_random_init: ClassVar[bool] = False
    pretrains: ClassVar[bool] = True
    # ablation variants are run by name or through their group, not by ``--methods all``
    listed_in_all: ClassVar[bool] = True
    # the ``methods:`` entry of a profile that configures this method (variants share their parent's)
    profile_key: ClassVar[str | None] = None
    Hyperparameters: ClassVar[type] = None  # a dataclass; official values as defaults
    # non-tensor attributes that change during pretraining (a schedule's current value, a
    # Python RNG): saved in checkpoints so a resumed run continues exactly where it stopped
    checkpoint_attributes: ClassVar[tuple[str, ...]] = ()
    # a plugin's defaults per profile name, applied under the profile's own ``methods:`` entry
    profile_overrides: ClassVar[dict[str, dict]] = {}
    # True where a step's loss leaves some trainable parameters out (PCRLv2 draws one decoder
    # scale per step): DistributedDataParallel must then look for them after every forward
    leaves_parameters_unused: ClassVar[bool] = False
    # the encoder's residual blocks start as the identity (last BN of each block at zero), as
    # in official SimSiam and VICReg
    zero_init_residual: ClassVar[bool] = False
    # how often the runner's warm-up + cosine schedule moves the learning rate: "step" (most
    # official code) or "epoch" (official SimSiam and PCRLv2 set it once per epoch)
    lr_schedule_unit: ClassVar[str] = "step"
    # an ablation variant's switches (Table III: {"var+cov": bool, "CV-SIM": bool}); None for a
    # method that is not one. Stored in its records: the ablation table reads them there.
    ablation: ClassVar[dict[str, bool] | None] = None
    # the trunk when the run names none: the paper's ResNet-18 (the run's ``model.backbone``
    # chooses per run; an encoder row's file fixes its own)
    backbone: ClassVar[str] = "resnet18"

    def __init__(self, hyperparameters: Any | None = None, backbone: str | None = None):
        super().__init__()
        self.hparams = hyperparameters if hyperparameters is not None else self.Hyperparameters()
        self.backbone = type(self).trunk(backbone)
        self.feature_dim = feature_dim(self.backbone)  # the pooled width every head starts from
        self.encoder = resnet_encoder(self.backbone, init=getattr(self.hparams, "encoder_init", "random"),
                                      weights_path=getattr(self.hparams, "weights_path", None),
                                      zero_init_residual=self.zero_init_residual)

    @classmethod
    def create(cls, hyperparameters: Any | None = None, backbone: str | None = None) -> "Method":
        """An instance on ``backbone``. A method whose ``__init__`` takes no ``backbone`` (plugins
        written before backbones existed) is built as before on its default trunk."""
        if cls.takes_backbone():
            return cls(hyperparameters, backbone=backbone)
        return cls(hyperparameters)

    @classmethod
    def takes_backbone(cls) -> bool:
        return "backbone" in inspect.signature(cls.__init__).parameters

    @classmethod
    def cannot_run(cls, hyperparameters: Any, backbone: str | None = None) -> str | None:
        """Why this method's cells cannot run under a run's backbone (None if they can): a trunk it
        cannot be built on, or its ``unavailable_reason`` (one argument in plugins that predate
        backbones)."""
        if backbone and not cls.takes_backbone() and backbone != cls.backbone:
            return (f"its __init__ takes no backbone argument, so it runs on {cls.backbone} only "
                    f"(add backbone=None to __init__ and pass it to Method.__init__; README: Add a method)")
        if len(inspect.signature(cls.unavailable_reason).parameters) >= 2:
            return cls.unavailable_reason(hyperparameters, backbone or cls.backbone)
        return cls.unavailable_reason(hyperparameters)

    @classmethod
    def trunk(cls, requested: str | None) -> str:
        """The backbone this method runs on when the run asks for ``requested`` (None: its default;
        a method that takes no backbone argument stays on its default)."""
        return requested if requested and cls.takes_backbone() else cls.backbone

    @classmethod
    def resolve_hyperparameters(cls, overrides: dict | None) -> Any:
        """The method's hyperparameters with a profile's overrides; unknown keys are an error."""
        overrides = dict(overrides or {})
        known = {f.name for f in dataclasses.fields(cls.Hyperparameters)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{cls.name}: unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
        defaults = cls.Hyperparameters()
        for field in dataclasses.fields(cls.Hyperparameters):
            if field.name not in overrides:
                continue
            default, value = getattr(defaults, field.name), overrides[field.name]
            problem = _kind_mismatch(default, value)
            if problem:
                raise ValueError(f"{cls.name}: hyperparameter {field.name}={value!r}: {problem}")
            if isinstance(default, tuple):
                overrides[field.name] = tuple(value)
            elif isinstance(default, int) and not isinstance(default, bool):
                overrides[field.name] = int(value)  # 1024.0 from YAML or --set: a whole number
        return cls.Hyperparameters(**overrides)

    @classmethod
    def provenance(cls) -> dict | None:
        """Where the row's weights come from, for its records (an encoder row: its file's SHA-256,
        format and key mapping); None for a method trained here."""
        return None

    @classmethod
    def unavailable_reason(cls, hyperparameters: Any, backbone: str = "resnet18") -> str | None:
        """Why this method cannot run on this machine (e.g. weights it cannot load), or None.

        The runner reports such a method's cells as missing, with this reason, and never
        replaces it by something else.
        """
        if getattr(hyperparameters, "encoder_init", "random") == "imagenet":
            return imagenet_weights_missing(getattr(hyperparameters, "weights_path", None), backbone)
        return None

    def export_encoder(self) -> dict[str, torch.Tensor]:
        return encoder_state_dict(self.encoder)

    def checkpoint_state(self) -> dict:
        return {
            "state_dict": self.state_dict(),
            "buffers": {name: buffer.detach().clone() for name, buffer in self.named_buffers()},
            "attributes": {name: _plain(getattr(self, name)) for name in self.checkpoint_attributes},
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["state_dict"])
        buffers = dict(self.named_buffers())
        with torch.no_grad():
            for name, value in state["buffers"].items():
                buffers[name].copy_(value)
        for name, value in state["attributes"].items():
            setattr(self, name, _from_plain(value))

    # --- the pretraining interface (methods with ``pretrains = False`` need none of it)

    def make_views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        # DistributedDataParallel synchronises gradients of what runs through ``forward``
        return self.training_step(views)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def build_optimizer(self, batch_size: int) -> torch.optim.Optimizer:
        """The optimiser over the trainable parameters, each param group at its peak learning rate
        for this (global) batch size. A group with ``FIXED_LR: True`` keeps that rate throughout."""
        raise NotImplementedError

    def lr_schedule(self) -> LrSchedule:
        """The schedule the pretraining loop applies to ``build_optimizer``'s rates; default: the
        hyperparameters' ``warmup_epochs`` and ``final_lr_fraction`` where it has them."""
        return LrSchedule(warmup_epochs=float(getattr(self.hparams, "warmup_epochs", 0.0)),
                          final_lr_fraction=float(getattr(self.hparams, "final_lr_fraction", 0.0)),
                          unit=self.lr_schedule_unit)

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step taken, with progress in [0, 1]; default: nothing.

        Not called after a step that fp16's gradient scaler skipped (overflowing gradients)."""


def _kind_mismatch(default, value) -> str | None:
    """Why ``value`` cannot replace a hyperparameter whose official value is ``default`` (None if it can)."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")

    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if number(value) and value == int(value) else "expected a whole number"
    if isinstance(default, float):
        return None if number(value) else "expected a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default) or not all(number(v) for v in value):
            return f"expected {len(default)} numbers like {list(default)}"
    return None


def _plain(value):
    """An attribute as plain containers, so that checkpoints load with ``torch.load(weights_only=True)``
    (which never runs code from a file): a Python ``random.Random`` becomes its state tuple."""
    if isinstance(value, random.Random):
        return {"python_random_state": value.getstate()}
    return copy.deepcopy(value)


def _from_plain(value):
    if isinstance(value, dict) and set(value) == {"python_random_state"}:
        generator = random.Random()
        generator.setstate(tuple(value["python_random_state"]) if not isinstance(value["python_random_state"], tuple)
                           else value["python_random_state"])
        return generator
    return value


def split_weight_decay(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights with decay; biases and norm parameters without.

    With our LARS (``methods/lars.py``) a group with ``weight_decay == 0`` is also excluded from the
    layer-wise adaptation, which is what the official SimCLR/BYOL/VICReg code does.
    """
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
