"""Supervised baseline rows: Sup.1 (random initialisation) of the OPTiML paper.

Faithfulness record
===================
Paper: OPTiML, Section IV ("Method Compared"): "supervised, including initialization with
random (Sup.1) and ImageNet (Sup.2) weights". There is no pretraining stage: the protocols
train a ResNet-18 from the stated initialisation.

* Sup.1: torchvision ResNet-18 with its default (Kaiming) initialisation, drawn from the
  cell's seed, so every seed of a cell starts from a different random network. Under the
  frozen protocol this is a linear probe on random features, the floor every pretraining
  method must beat.
* Sup.2 (ImageNet initialisation) needs torchvision's ImageNet weights, which these
  machines cannot download; it arrives with the baseline-methods issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrbench.methods.base import Method
from cxrbench.methods.registry import register_method


@dataclass
class NoHyperparameters:
    pass


@register_method("sup1")
class Sup1(Method):
    display_name = "Sup.1"
    description = "Supervised baseline: random initialisation, no pretraining"
    is_baseline = True
    pretrains = False
    Hyperparameters = NoHyperparameters
