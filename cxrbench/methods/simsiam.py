"""SimSiam: simple Siamese representation learning with a stop-gradient.

Faithfulness record
===================
Paper:          Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.
Official code:  github.com/facebookresearch/simsiam (``simsiam/builder.py``,
                ``main_simsiam.py`` with ``--fix-pred-lr``).
Building blocks: lightly's ``SimSiamProjectionHead`` (3 layers, BN on every layer, the
                output BN without affine, as official), ``SimSiamPredictionHead``
                (bottleneck, as official), ``NegativeCosineSimilarity``.

Official against ours. "ours" is the method's default (``SimSiamHyperparameters``); a
profile may override a default under ``methods: {simsiam: ...}``, and batch, epochs and
image size are the profile's. ``bench list methods --details simsiam`` prints the value of
every hyperparameter under every profile, read from the profile files (so it cannot drift).

=====================  ================================  ================================
hyperparameter         official                          ours (default)
=====================  ================================  ================================
backbone               ResNet-50, zero_init_residual     ResNet-18, zero_init_residual
projector              f-f-2048 with f the backbone's    f-f-2048 (f = 512; 2048 at R50),
                       width (2048-2048-2048), BN on     BN on every layer, the last
                       every layer, the last without     without affine
                       affine
predictor              2048-512-2048                     2048-512-2048
loss                   symmetric -cos, stop-gradient     same
optimiser              SGD, momentum 0.9, wd 1e-4 on     same
                       all parameters
base lr (x batch/256)  0.05                              0.05
predictor lr           fixed (``--fix-pred-lr``)         fixed
schedule               cosine to 0 set once per epoch,   cosine to 0 set once per epoch,
                       no warm-up                        no warm-up
batch size / epochs    512 / 100                         pretrain.batch_size / .epochs
=====================  ================================  ================================

Views (official, MoCo v2's): RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1)
p 0.8, greyscale p 0.2, GaussianBlur(0.1-2.0) p 0.5, flip, the same for both views.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the projector is
  2048-2048-2048 and the predictor 2048-512-2048, the official ResNet-50 values.
* ResNet-18, batch 64, 300 epochs: the OPTiML paper's protocol for all baselines.
* The projector's last linear layer has no bias (lightly); the official one has a bias that
  it freezes (``requires_grad=False``) and an affine-free BN after it: the same function.
* Grey radiographs: saturation, hue and greyscale dropped; brightness/contrast kept.
* ``projection_dim`` and ``prediction_hidden_dim`` (smoke): narrower heads, so that the smoke
  profile, which only checks that the pipeline runs, stays within seconds.
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``base_lr`` 0.5 and
  ``weight_decay`` 1e-5 (solo-learn's CIFAR SimSiam recipe; the official 0.05 per 256 gives 0.0125 at
  batch 64, too small to move the encoder in ~750 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.base import FIXED_LR, Method
from cxrbench.methods.registry import register_method


@dataclass
class SimSiamHyperparameters:
    projection_dim: int = 2048
    projection_hidden_dim: int | None = None  # official: the backbone's feature width (None: follow it)
    prediction_hidden_dim: int = 512
    base_lr: float = 0.05
    weight_decay: float = 1e-4
    momentum: float = 0.9
    fix_predictor_lr: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)


@register_method("simsiam")
class SimSiam(Method):
    display_name = "SimSiam"
    description = "Siamese network with predictor and stop-gradient (Chen & He 2021)"
    Hyperparameters = SimSiamHyperparameters
    zero_init_residual = True  # official builder: models.__dict__[arch](zero_init_residual=True)
    lr_schedule_unit = "epoch"  # official adjust_learning_rate runs once per epoch

    def __init__(self, hyperparameters: SimSiamHyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.projection_head = SimSiamProjectionHead(self.feature_dim, hp.projection_hidden_dim or self.feature_dim, hp.projection_dim)
        self.prediction_head = SimSiamPredictionHead(hp.projection_dim, hp.prediction_hidden_dim, hp.projection_dim)
        self.criterion = NegativeCosineSimilarity()
        self.view = ViewRecipe(crop_scale=hp.crop_scale, blur_probability=0.5)

    def make_views(self, images, generator=None):
        return [augment(images, self.view, images.shape[-1], generator) for _ in range(2)]

    def training_step(self, views):
        z = [self.projection_head(self.encoder(to_model_input(view))) for view in views]
        p = [self.prediction_head(each) for each in z]
        # D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2
        loss = 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        with torch.no_grad():
            output_std = torch.nn.functional.normalize(z[0], dim=1).std(dim=0).mean().item()
        return loss, {"loss": loss.item(), "z_std": output_std}

    def build_optimizer(self, batch_size):
        hp = self.hparams
        lr = hp.base_lr * batch_size / 256
        groups = [
            {"params": list(self.encoder.parameters()) + list(self.projection_head.parameters())},
            {"params": list(self.prediction_head.parameters()), FIXED_LR: hp.fix_predictor_lr},
        ]
        return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
