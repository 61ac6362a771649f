"""Supervised baseline rows of the OPTiML paper: Sup.1 (random init) and Sup.2 (ImageNet init).

Faithfulness record
===================
Paper: OPTiML, Section IV ("Method Compared"): "supervised, including initialization with
random (Sup.1) and ImageNet (Sup.2) weights". There is no pretraining stage: the protocols
train a ResNet-18 from the stated initialisation.

* Sup.1: torchvision ResNet-18 with its default (Kaiming) initialisation, drawn from the
  cell's seed, so every seed of a cell starts from a different random network. Under the
  frozen protocol this is a linear probe on random features, the floor every pretraining
  method must beat.
* Sup.2: torchvision ResNet-18 with its ImageNet weights (``IMAGENET1K_V1``, the weights API),
  loaded from the torch hub cache or from ``weights_path``. Where neither exists (an offline
  machine that never downloaded them) its cells are reported as missing with the reason;
  they are never replaced by another initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrbench.methods.base import Method
from cxrbench.methods.registry import register_method


@dataclass
class NoHyperparameters:
    pass


@dataclass
class ImageNetInit:
    encoder_init: str = "imagenet"
    weights_path: str | None = None  # a torchvision state dict of the run's ResNet (18 or 50); default: the hub cache


@register_method("sup1")
class Sup1(Method):
    display_name = "Sup.1"
    description = "Supervised baseline: random initialisation, no pretraining"
    is_baseline = True
    baseline_rank = 1
    is_random_init = True
    pretrains = False
    Hyperparameters = NoHyperparameters


@register_method("sup2")
class Sup2(Method):
    display_name = "Sup.2"
    description = "Supervised baseline: ImageNet initialisation (torchvision weights), no pretraining"
    is_baseline = True
    baseline_rank = 0
    pretrains = False
    Hyperparameters = ImageNetInit
