"""SimCLR: a simple framework for contrastive learning of visual representations.

Faithfulness record
===================
Paper:          Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning
                of Visual Representations", ICML 2020.
Official code:  github.com/google-research/simclr (TF; ``run.py``, ``objective.py``,
                ``data_util.py``), SimCLR v1 settings.
Building blocks: lightly's ``NTXentLoss`` (in-batch negatives, 2N-2 per anchor, both
                directions; ``gather_distributed=True`` collects the global batch under
                multi-process training, as the official ``tpu_cross_replica_concat``),
                ``ProjectionHead`` (the blocks below); LARS in the official form (``lars.py``).

Official against ours. "ours" is the method's default (``SimCLRHyperparameters``); a profile
may override a default under ``methods: {simclr: ...}``, and batch, epochs and image size are
the profile's. ``bench list methods --details simclr`` prints the value of every
hyperparameter under every profile, read from the profile files (so it cannot drift).

=====================  ===============================  ===============================
hyperparameter         official (SimCLR v1)             ours (default)
=====================  ===============================  ===============================
backbone               ResNet-50                        ResNet-18 (the OPTiML protocol)
projection head        Linear(no bias)-BN-ReLU,         same, 512 hidden (the backbone's
                       Linear(no bias)-BN without       width, as official: the hidden
                       shift (center=False); hidden =   width is the input's) -> 128
                       backbone width (2048) -> 128
loss                   mean CE of view a's anchors +    same (2 x lightly's NTXentLoss,
                       mean CE of view b's (objective   which averages over all 2N)
                       .py: loss_a + loss_b)
temperature            0.1                              0.1
optimiser              LARS, momentum 0.9, eta 1e-3;    the same LARS (``lars.py``), the
                       biases and BN excluded from      rate outside the momentum buffer
                       decay and adaptation
base lr (x batch/256)  0.3 (linear scaling)             0.3
weight decay           1e-6                             1e-6
warm-up                10 epochs, first step's rate 0   10 epochs (profiles may shorten
                                                        it), first step's rate 0
schedule               cosine to 0, per step            cosine to 0, per step
batch size / epochs    4096 / 100-1000                  pretrain.batch_size / .epochs
=====================  ===============================  ===============================

Views (official ``preprocess_for_train``): random crop with resize (area 0.08-1, aspect
3/4-4/3), flip 0.5, colour distortion of strength 1 (brightness 0.8, contrast 0.8,
saturation 0.8, hue 0.2) with p 0.8, greyscale p 0.2, Gaussian blur p 0.5 (ImageNet;
sigma 0.1-2.0), the same recipe for both views.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the projection head
  is 2048-2048-128 (hidden = the backbone's width), the official ResNet-50 values.
* ResNet-18, batch 64, 300 epochs: the OPTiML paper's protocol for all baselines. The hidden
  width of the head follows the backbone's feature width (512), as the official head does.
* The v1 head (2 layers), as the SimCLR paper; the repository's default since v2 is 3
  layers (``--num_proj_layers=3``).
* Grey radiographs: colour distortion keeps brightness 0.8 and contrast 0.8; saturation, hue
  and random greyscale have no meaning on one channel and are dropped.
* Crops are bilinear through ``roi_align``; blur sigma scales with image size.
* Batch 64 gives 126 negatives per anchor instead of 8190: this is the paper's protocol,
  and it is the reason SimCLR is weakest at small batch in the SimCLR paper.
* LARS keeps the learning rate outside the momentum buffer (as official VICReg and BYOL);
  official SimCLR puts it inside. The steps are equal while the rate is constant and differ
  while warm-up or the cosine change it, by the rate's change over the momentum's memory.
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``lars_eta`` 0.02 (official
  0.001: a step would move a layer by lr x eta ~ 2e-5 of its norm, and ~750 steps leave the
  encoder near its initialisation), ``temperature`` 0.2, ``weight_decay`` 1e-5 and ``crop_scale`` 0.2-1
  (solo-learn's short-schedule CIFAR recipe; an 8 % crop of 64 px is smaller than most
  findings), warm-up 1 epoch. Measured on the phantom: README, "Profiles".
"""

from __future__ import annotations

from dataclasses import dataclass

from lightly.loss import NTXentLoss
from lightly.models.modules.heads import ProjectionHead
from torch import nn
from cxrbench.methods.lars import LARS

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.base import Method, split_weight_decay
from cxrbench.methods.registry import register_method


@dataclass
class SimCLRHyperparameters:
    temperature: float = 0.1
    projection_dim: int = 128
    base_lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    lars_eta: float = 0.001
    warmup_epochs: float = 10.0
    final_lr_fraction: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 1.0


def simclr_v1_head(in_dim: int, out_dim: int) -> ProjectionHead:
    """Official SimCLR v1 projection head: Linear-BN-ReLU, Linear-BN without shift (center=False).

    No linear layer has a bias (each is followed by BatchNorm); the hidden width is the input's.
    lightly's ``SimCLRProjectionHead`` gives the last BatchNorm a learned shift, so the blocks
    are spelt out here.
    """
    last_norm = nn.BatchNorm1d(out_dim)
    last_norm.register_parameter("bias", None)  # scale learned, shift not (TF's center=False)
    return ProjectionHead([(in_dim, in_dim, nn.BatchNorm1d(in_dim), nn.ReLU()), (in_dim, out_dim, last_norm, None)])


@register_method("simclr")
class SimCLR(Method):
    display_name = "SimCLR"
    description = "Contrastive NT-Xent with in-batch negatives (Chen et al. 2020), lightly loss + official-form LARS"
    Hyperparameters = SimCLRHyperparameters

    def __init__(self, hyperparameters: SimCLRHyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.projection_head = simclr_v1_head(self.feature_dim, hp.projection_dim)
        self.criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True)
        strength = 0.8 * hp.jitter_strength
        self.view = ViewRecipe(crop_scale=hp.crop_scale, brightness=strength, contrast=strength, blur_probability=0.5)

    def make_views(self, images, generator=None):
        return [augment(images, self.view, images.shape[-1], generator) for _ in range(2)]

    def training_step(self, views):
        first, second = (self.projection_head(self.encoder(to_model_input(view))) for view in views)
        # official objective: loss_a + loss_b, each a mean over its N anchors; lightly's
        # NTXentLoss is the mean over all 2N anchors, half of that
        loss = 2 * self.criterion(first, second)
        return loss, {"loss": loss.item()}

    def build_optimizer(self, batch_size):
        hp = self.hparams
        return LARS(split_weight_decay(self, hp.weight_decay), lr=hp.base_lr * batch_size / 256,
                    momentum=hp.momentum, weight_decay=hp.weight_decay, trust_coefficient=hp.lars_eta)
