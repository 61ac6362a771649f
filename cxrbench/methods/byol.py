"""BYOL: bootstrap your own latent.

Faithfulness record
===================
Paper:          Grill et al. "Bootstrap Your Own Latent: A New Approach to Self-Supervised
                Learning", NeurIPS 2020.
Official code:  github.com/deepmind/deepmind-research/tree/master/byol (JAX;
                ``byol_experiment.py``, ``configs/byol.py``, ``utils/augmentations.py``).
Building blocks: lightly's ``BYOLProjectionHead`` / ``BYOLPredictionHead`` (Linear-BN-ReLU-
                Linear, 4096 hidden, 256 out, as official), ``NegativeCosineSimilarity``
                (BYOL's 2 - 2 cos is 2 + 2 x this: same gradient up to a factor 2),
                ``update_momentum`` and ``LARS``.

=====================  =======================  ==============  ==============  ==============
hyperparameter         official                 paper profile   quick profile   smoke profile
=====================  =======================  ==============  ==============  ==============
backbone               ResNet-50                ResNet-18       ResNet-18       ResNet-18
projector / predictor  4096 hidden -> 256       4096 -> 256     4096 -> 256     512 -> 128
target momentum        0.996 -> 1, cosine       same            0.99 -> 1       0.99 -> 1
loss                   2 - 2 cos, symmetrised   same            same            same
optimiser              LARS, momentum 0.9       same            same            same
base lr (x batch/256)  0.2                      0.2             0.2             0.2
weight decay           1.5e-6                   1.5e-6          1.5e-6          1.5e-6
warm-up (epochs)       10                       10              0.5             0
schedule               cosine to 0, per step (all profiles)
batch size             4096                     64              64              16
epochs                 300-1000                 300             3               4 steps
image size             224                      224             64              64
=====================  =======================  ==============  ==============  ==============

Views (official, asymmetric): random crop (0.08-1), flip, colour jitter (0.4, 0.4, 0.2, 0.1)
p 0.8, greyscale p 0.2, blur p 1.0 / 0.1, solarisation p 0.0 / 0.2.

Deviations and why
------------------
* ResNet-18, batch 64, 300 epochs: the OPTiML paper's protocol for all baselines.
* Base momentum 0.99 on quick/smoke: over a few dozen steps 0.996 barely moves the target.
* Grey radiographs: saturation, hue and greyscale dropped; brightness/contrast kept.
* The loss is the mean of the two directions of -cos (lightly) rather than the sum of
  2 - 2 cos; this rescales the loss by 1/4 after the constant, which LARS's layer-wise
  normalisation makes irrelevant to the update direction and size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.utils.lars import LARS

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import FEATURE_DIM, to_model_input
from cxrbench.methods.base import Method, split_weight_decay
from cxrbench.methods.momentum import cosine_momentum, momentum_copy, update_momentum
from cxrbench.methods.registry import register_method


@dataclass
class BYOLHyperparameters:
    hidden_dim: int = 4096
    projection_dim: int = 256
    base_momentum: float = 0.996
    base_lr: float = 0.2
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    lars_eta: float = 0.001
    warmup_epochs: float = 10.0
    final_lr_fraction: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)


@register_method("byol")
class BYOL(Method):
    display_name = "BYOL"
    description = "Bootstrap your own latent: predictor + EMA target, no negatives (Grill et al. 2020)"
    Hyperparameters = BYOLHyperparameters
    checkpoint_attributes = ("target_momentum",)

    def __init__(self, hyperparameters: BYOLHyperparameters | None = None):
        super().__init__(hyperparameters)
        hp = self.hparams
        self.projection_head = BYOLProjectionHead(FEATURE_DIM, hp.hidden_dim, hp.projection_dim)
        self.prediction_head = BYOLPredictionHead(hp.projection_dim, hp.hidden_dim, hp.projection_dim)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projection_head = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()
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
        loss = 0.5 * (self.criterion(online[0], target[1]) + self.criterion(online[1], target[0]))
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
