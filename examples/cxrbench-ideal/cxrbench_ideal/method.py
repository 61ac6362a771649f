"""IDEAL pretraining: dense projection head and dense (local) InfoNCE.

Faithfulness record
-------------------
Source: Basak, Chattopadhyay, Kundu, Nag, Mallipeddi, "IDEAL: Improved DEnse LocAL Contrastive
Learning for Semi-Supervised Medical Image Segmentation", ICASSP 2023 (poster; the only source
used here: no official code was consulted).

What the poster fixes, and ours:

====================  ===========================  ===================================
item                  poster                       here
====================  ===========================  ===================================
encoder               ResNet-50                    ResNet-18 (the benchmark's backbone)
projection head       1x1 convolution(s), not MLP  1x1 conv 512->512, BN, ReLU, 1x1 conv
                                                   512->128 (count/width: open, see below)
loss                  L_loc = -1/(DhDw) sum_i log  the same, written as a cross-entropy
                      e(q_i.k_i+/t) / (e(q_i.k_i+  over all key positions of the batch
                      /t) + sum e(q_i.k_i-/t))
positive of q_i       k_i+: position i, other view same position i of the other view
negatives             "other positions and images"  every other position of every image
                                                   of the batch in the key view
optimiser             Adam, lr 1e-5                Adam, lr 1e-5 (paper profile); the
                                                   quick/smoke profiles raise it (below)
====================  ===========================  ===================================

Choices the poster leaves open, recorded:

* the views are one shared crop with independent photometric augmentation, so position i
  of both views sees the same anatomy (the poster's positives need a correspondence and it
  names none);
* features are the last residual stage (layer4) output: 7 x 7 positions at 224 px;
* q and k come from the same encoder, both with gradients, and the loss is symmetrised
  (q from view 1 against keys of view 2 and the reverse, averaged);
* temperature tau = 0.1 (Chaitanya et al.'s value for their local loss, which IDEAL extends);
* head width 128 at the output, as DenseCL's dense head.

Profiles: ``lr`` 1e-5 is the poster's; at 57 steps (quick) nothing moves with it, so the
quick and smoke profiles use 1e-3, and smoke also narrows the head's hidden width to 64
(``--set methods.ideal.learning_rate=...`` changes either).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.methods.augment import ViewRecipe, appearance, geometric
from cxrbench.methods.backbone import dense_features, to_model_input
from cxrbench.methods.base import Method


@dataclass
class IDEALHyperparameters:
    temperature: float = 0.1
    projection_dim: int = 128
    hidden_dim: int = 512
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    final_lr_fraction: float = 1.0  # the poster names no schedule: constant learning rate
    crop_scale: tuple[float, float] = (0.4, 1.0)


def dense_infonce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_loc for dense maps (B, C, H, W), already L2-normalised along C.

    Row i of the logits is position i's query against every key position of the batch;
    its positive is the key at the same position of the same image (the diagonal).
    """
    q = queries.permute(0, 2, 3, 1).reshape(-1, queries.shape[1])
    k = keys.permute(0, 2, 3, 1).reshape(-1, keys.shape[1])
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


class IDEAL(Method):
    display_name = "IDEAL (plugin)"
    description = "dense local contrastive pretraining with a 1x1-conv projection head (Basak et al. 2023)"
    Hyperparameters = IDEALHyperparameters
    # per-profile defaults of a plugin (a profile's own ``methods: {ideal: ...}`` still wins)
    profile_overrides = {"smoke": {"learning_rate": 1e-3, "hidden_dim": 64}, "quick": {"learning_rate": 1e-3}}

    def __init__(self, hyperparameters=None, backbone=None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.dense_head = nn.Sequential(
            nn.Conv2d(self.feature_dim, hp.hidden_dim, kernel_size=1), nn.BatchNorm2d(hp.hidden_dim), nn.ReLU(inplace=True),
            nn.Conv2d(hp.hidden_dim, hp.projection_dim, kernel_size=1),
        )
        self.geometry = ViewRecipe(crop_scale=tuple(hp.crop_scale), flip_probability=0.0)
        self.photometric = ViewRecipe(jitter_probability=0.8, blur_probability=0.5)

    def make_views(self, images, generator=None):
        size = images.shape[-1]
        crop = geometric(images, self.geometry, size, generator)  # one crop: positions correspond
        return [appearance(crop, self.photometric, generator), appearance(crop, self.photometric, generator)]

    def training_step(self, views):
        first, second = (F.normalize(self.dense_head(dense_features(self.encoder, to_model_input(v))), dim=1) for v in views)
        loss = 0.5 * (dense_infonce(first, second, self.hparams.temperature) + dense_infonce(second, first, self.hparams.temperature))
        return loss, {"loss": loss.item(), "positions": float(first.shape[2] * first.shape[3])}

    def build_optimizer(self, batch_size):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
