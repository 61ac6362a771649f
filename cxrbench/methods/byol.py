"""BYOL: bootstrap your own latent.

Faithfulness record
===================
Paper:          Grill et al. "Bootstrap Your Own Latent: A New Approach to Self-Supervised
                Learning", NeurIPS 2020.
Official code:  github.com/deepmind/deepmind-research/tree/master/byol (JAX;
                ``byol_experiment.py``, ``configs/byol.py``, ``utils/augmentations.py``).
Building blocks: lightly's ``ProjectionHead`` (the projector and predictor blocks below),
                ``NegativeCosineSimilarity`` (the loss is written from it in the official
                form), ``update_momentum``; LARS in the official form (``lars.py``).

Official against ours. "ours" is the method's default (``BYOLHyperparameters``); a profile
may override a default under ``methods: {byol: ...}``, and batch, epochs and image size are
the profile's. ``bench list methods --details byol`` prints the value of every
hyperparameter under every profile, read from the profile files (so it cannot drift).

The official config (``configs/byol.py``) has one preset per length: 40 epochs (lr 0.45,
wd 1e-6, tau 0.97), 100 (0.45, 1e-6, 0.99), 300 (0.3, 1e-6, 0.99), 1000 (0.2, 1.5e-6,
0.996). Our defaults are the 300-epoch preset: the paper profile's length. Every profile
follows that preset; quick and smoke shorten only the warm-up (their runs are shorter
than any preset, and the 40-epoch preset's tau 0.97 is for 40 epochs of ImageNet, not
for a few dozen steps).

=====================  ================================  ================================
hyperparameter         official (300-epoch preset)       ours (default)
=====================  ================================  ================================
backbone               ResNet-50                         ResNet-18 (the OPTiML protocol)
projector              Linear(bias)-BN-ReLU-Linear(no    Linear(no bias)-BN-ReLU-Linear(no
                       bias), 4096 hidden -> 256         bias), 4096 -> 256
predictor              same shape, 256-4096-256          same
target network         its own random initialisation     its own random initialisation
                       (rng_target), then EMA            (drawn after the online one);
                                                         ``target_from_online``: a copy
                                                         of the online one (no profile's)
target momentum tau    0.99 -> 1, cosine                 0.99 -> 1, cosine
loss                   mean(2 - 2 cos) of each           same
                       direction, the two summed
optimiser              LARS, momentum 0.9, eta 1e-3;     the same LARS (``lars.py``)
                       biases and norms excluded
base lr (x batch/256)  0.3                               0.3
weight decay           1e-6                              1e-6
warm-up                10 epochs, first step's rate 0    10 epochs (profiles may shorten
                                                         it), first step's rate 0
schedule               cosine to 0, per step             cosine to 0, per step
batch size / epochs    4096 / 300                        pretrain.batch_size / .epochs
=====================  ================================  ================================

Views (official, asymmetric): random crop (0.08-1), flip, colour jitter (0.4, 0.4, 0.2, 0.1)
p 0.8, greyscale p 0.2, blur p 1.0 / 0.1, solarisation p 0.0 / 0.2.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the projector is
  2048-4096-256, the official ResNet-50 values.
* ResNet-18, batch 64, 300 epochs: the OPTiML paper's protocol for all baselines.
* The projector's first linear layer has no bias (lightly): BatchNorm follows it and
  removes any constant shift, so the bias is redundant; it only differs in being a
  parameter that LARS would not adapt.
* Grey radiographs: saturation, hue and greyscale dropped; brightness/contrast kept.
* ``hidden_dim`` and ``projection_dim`` (smoke): narrower heads, so that the smoke profile,
  which only checks that the pipeline runs, stays within seconds.
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``lars_eta`` 0.02, ``base_lr`` 1.0,
  ``weight_decay`` 1e-5, ``crop_scale`` 0.2-1 (solo-learn's CIFAR BYOL recipe), warm-up 1 epoch.
* ``target_from_online`` (an investigation knob, no profile's): the target starts as a copy of
  the online network, as solo-learn and lightly start it. Tried because BYOL's features collapse
  on the phantom in the ``standard`` profile (README, "Why BYOL did not learn"); it did not help.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import deactivate_requires_grad
from cxrbench.methods.lars import LARS
from torch import nn

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import resnet_encoder, to_model_input
from cxrbench.methods.base import Method, split_weight_decay
from cxrbench.methods.momentum import cosine_momentum, update_momentum
from cxrbench.methods.registry import register_method


@dataclass
class BYOLHyperparameters:
    """Official BYOL's 300-epoch preset (``configs/byol.py``)."""

    hidden_dim: int = 4096
    projection_dim: int = 256
    base_momentum: float = 0.99
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    lars_eta: float = 0.001
    warmup_epochs: float = 10.0
    final_lr_fraction: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # official: False (the target has its own random initialisation); True starts it as a copy
    # of the online network, as solo-learn and lightly do (the BYOL code's comment: no
    # significant difference either way, over ImageNet-length schedules)
    target_from_online: bool = False


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> ProjectionHead:
    """Official BYOL MLP (projector and predictor): Linear-BN-ReLU-Linear, the last without bias."""
    return ProjectionHead([(in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
                           (hidden_dim, out_dim, None, None, False)])


def regression_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official BYOL loss of one direction: mean over the batch of 2 - 2 cos(online, target)."""
    return (2 - 2 * F.cosine_similarity(online, target.detach(), dim=1)).mean()


@register_method("byol")
class BYOL(Method):
    display_name = "BYOL"
    description = "Bootstrap your own latent: predictor + EMA target, no negatives (Grill et al. 2020)"
    Hyperparameters = BYOLHyperparameters
    checkpoint_attributes = ("target_momentum",)

    def __init__(self, hyperparameters: BYOLHyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.projection_head = byol_mlp(self.feature_dim, hp.hidden_dim, hp.projection_dim)
        self.prediction_head = byol_mlp(hp.projection_dim, hp.hidden_dim, hp.projection_dim)
        # official: the target network is initialised on its own (its own random key), not
        # copied from the online network; from then on it only follows it by EMA
        self.target_encoder = resnet_encoder(self.backbone, zero_init_residual=self.zero_init_residual)
        self.target_projection_head = byol_mlp(self.feature_dim, hp.hidden_dim, hp.projection_dim)
        if hp.target_from_online:
            self.target_encoder.load_state_dict(self.encoder.state_dict())
            self.target_projection_head.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projection_head)
        self.target_momentum = hp.base_momentum
        self.views = (
            ViewRecipe(crop_scale=hp.crop_scale, blur_probability=1.0, solarize_probability=0.0),
            ViewRecipe(crop_scale=hp.crop_scale, blur_probability=0.1, solarize_probability=0.2),
        )

    def make_views(self, images, generator=None):
        return [augment(images, recipe, images.shape[-1], generator) for recipe in self.views]

    def training_step(self, views):
        inputs = [to_model_input(view) for view in views]
        online = [self.prediction_head(self.projection_head(self.encoder(x))) for x in inputs]
        with torch.no_grad():
            target = [self.target_projection_head(self.target_encoder(x)) for x in inputs]
        # official: the two directions' mean regression losses summed
        loss = regression_loss(online[0], target[1]) + regression_loss(online[1], target[0])
        return loss, {"loss": loss.item(), "target_momentum": self.target_momentum}

    def after_optimizer_step(self, progress):
        # official: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, applied after each update
        self.target_momentum = cosine_momentum(self.hparams.base_momentum, progress)
        update_momentum(self.encoder, self.target_encoder, self.target_momentum)
        update_momentum(self.projection_head, self.target_projection_head, self.target_momentum)

    def build_optimizer(self, batch_size):
        hp = self.hparams
        online = (self.encoder, self.projection_head, self.prediction_head)  # the target is EMA-only
        groups = [group for module in online for group in split_weight_decay(module, hp.weight_decay)]
        return LARS(groups, lr=hp.base_lr * batch_size / 256, momentum=hp.momentum,
                    weight_decay=hp.weight_decay, trust_coefficient=hp.lars_eta)
