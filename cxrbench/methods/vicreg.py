"""VICReg: Variance-Invariance-Covariance Regularization.

Faithfulness record
===================
Paper:          Bardes, Ponce, LeCun. "VICReg: Variance-Invariance-Covariance Regularization
                for Self-Supervised Learning", ICLR 2022.
Official code:  github.com/facebookresearch/vicreg (``main_vicreg.py``, ``augmentations.py``).
Building blocks: lightly's ``VICRegLoss`` (same three terms, same 1e-4 epsilon, variance
                averaged over the two branches, covariance summed over them and divided by
                the feature dimension, gathering across processes as a constructor flag) and
                ``VICRegProjectionHead``; LARS in the official form (``lars.py``).

Official against ours: "ours" is the method's default; a profile may override a default
under ``methods: {vicreg: ...}`` and sets batch, epochs and image size. ``bench list methods
--details vicreg`` prints every hyperparameter under every profile, read from the profile
files (so it cannot drift).

=====================  =================  ======================
hyperparameter         official           ours (default)
=====================  =================  ======================
backbone               ResNet-50,         ResNet-18,
                       zero_init_residual zero_init_residual
expander               8192-8192-8192     2048-2048-2048
sim / std / cov coeff  25 / 25 / 1        25 / 25 / 1
optimiser              LARS, eta 0.001,   same
                       momentum 0.9
base lr (x batch/256)  0.2                0.2
weight decay           1e-6               1e-6
warm-up (epochs)       10                 10
schedule               cosine to 0.001 x peak lr, per step; first warm-up step's rate 0
batch size             2048               the profile's
epochs                 1000 (100 default) the profile's
image size             224                the profile's
=====================  =================  ======================

Views (official ``TrainTransform``): RandomResizedCrop(224, scale 0.08-1, bicubic), flip 0.5,
ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, RandomGrayscale 0.2, GaussianBlur p 1.0 / 0.1
(sigma 0.1-2.0), Solarization p 0.0 / 0.2, ImageNet normalisation.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the expander takes
  the 2,048 features; its width stays ``expander_dim`` (official at ResNet-50: 8192, set
  ``methods.vicreg.expander_dim=8192``).
* ResNet-18, 2048-wide expander, batch 64, 300 epochs: the OPTiML paper's protocol for every
  baseline (its expander is 3 x 2048). Smaller profiles shrink epochs and, for ``smoke``, the
  expander width (``expander_dim``), only to fit their time budget.
* Grey radiographs: saturation and hue jitter and random greyscale are dropped (no colour);
  brightness 0.4 / contrast 0.4 with p 0.8 are kept. Crops are bilinear (``roi_align``)
  rather than bicubic. Blur sigma is scaled with the image size (0.1-2.0 px at 224 px).
* lightly's projection head gives the last linear layer a bias; the official projector has
  ``bias=False`` there. The effect on the loss is a constant shift absorbed by the
  invariance term; kept for the shared building block.
* LARS exclusion: official filters 1-D parameters (biases, BN) from both weight decay and
  adaptation; here they are put in a group with weight decay 0, which our LARS (``lars.py``,
  the official trust ratio eta ||w|| / ||g + wd w||) excludes from both: the same rule.
* zero_init_residual as official: each residual block starts as the identity.
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``expander_dim`` 512. With
  batch 64 a 2,048-wide embedding has a covariance of rank <= 63 that cannot be diagonal with
  unit variances, so the covariance term pulls every variance down and the loss stayed near
  collapse (22.1 for 40 epochs, where a collapsed embedding scores 25); 512 / 64 is
  solo-learn's CIFAR ratio 2,048 / 256. Also ``lars_eta`` 0.02, ``base_lr`` 0.3, ``weight_decay`` 1e-4,
  ``crop_scale`` 0.2-1 (solo-learn's CIFAR recipe) and warm-up 1 epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from cxrbench.methods.lars import LARS

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.base import Method, split_weight_decay
from cxrbench.methods.registry import register_method


@dataclass
class VICRegHyperparameters:
    expander_dim: int = 2048  # paper (OPTiML) width; official 8192
    invariance_coeff: float = 25.0
    variance_coeff: float = 25.0
    covariance_coeff: float = 1.0
    base_lr: float = 0.2  # scaled by batch_size / 256
    weight_decay: float = 1e-6
    lars_eta: float = 0.001
    momentum: float = 0.9
    final_lr_fraction: float = 0.001
    warmup_epochs: float = 10.0
    crop_scale: tuple[float, float] = (0.08, 1.0)


@register_method("vicreg")
class VICReg(Method):
    display_name = "VICReg"
    description = "Variance-invariance-covariance regularisation (Bardes et al. 2022), lightly loss + official-form LARS"
    Hyperparameters = VICRegHyperparameters
    zero_init_residual = True  # official main_vicreg.py: resnet.__dict__[arch](zero_init_residual=True)

    def __init__(self, hyperparameters: VICRegHyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.expander = VICRegProjectionHead(
            input_dim=self.feature_dim, hidden_dim=hp.expander_dim, output_dim=hp.expander_dim, num_layers=3
        )
        self.criterion = VICRegLoss(
            lambda_param=hp.invariance_coeff,
            mu_param=hp.variance_coeff,
            nu_param=hp.covariance_coeff,
            gather_distributed=True,  # a no-op in a single process
        )
        self.views = (
            ViewRecipe(crop_scale=hp.crop_scale, blur_probability=1.0, solarize_probability=0.0),
            ViewRecipe(crop_scale=hp.crop_scale, blur_probability=0.1, solarize_probability=0.2),
        )

    def make_views(self, images, generator=None):
        size = images.shape[-1]
        return [augment(images, recipe, size, generator) for recipe in self.views]

    def training_step(self, views):
        first, second = (self.expander(self.encoder(to_model_input(view))) for view in views)
        loss = self.criterion(first, second)
        with torch.no_grad():
            std = first.float().std(dim=0).mean().item()
        return loss, {"loss": loss.item(), "expander_std": std}

    def build_optimizer(self, batch_size):
        hp = self.hparams
        lr = hp.base_lr * batch_size / 256
        return LARS(
            split_weight_decay(self, hp.weight_decay),
            lr=lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            trust_coefficient=hp.lars_eta,
        )
