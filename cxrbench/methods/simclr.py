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
                ``SimCLRProjectionHead`` and ``LARS``.

=====================  ====================  ==============  ==============  ==============
hyperparameter         official              paper profile   quick profile   smoke profile
=====================  ====================  ==============  ==============  ==============
backbone               ResNet-50             ResNet-18       ResNet-18       ResNet-18
projection head        2 layers, BN, 2048    2 layers, 512   2 layers, 512   2 layers, 512
                       hidden -> 128         hidden -> 128   hidden -> 128   hidden -> 128
temperature            0.1                   0.1             0.1             0.1
optimiser              LARS, momentum 0.9    same            same            same
base lr (x batch/256)  0.3 (linear scaling)  0.3             0.3             0.3
weight decay           1e-6                  1e-6            1e-6            1e-6
warm-up (epochs)       10                    10              0.5             0
schedule               cosine to 0, per step (all profiles)
batch size             4096                  64              64              16
epochs                 100-1000              300             3               4 steps
image size             224                   224             64              64
=====================  ====================  ==============  ==============  ==============

Views (official ``preprocess_for_train``): random crop with resize (area 0.08-1, aspect
3/4-4/3), flip 0.5, colour distortion of strength 1 (brightness 0.8, contrast 0.8,
saturation 0.8, hue 0.2) with p 0.8, greyscale p 0.2, Gaussian blur p 0.5 (ImageNet;
sigma 0.1-2.0), the same recipe for both views.

Deviations and why
------------------
* ResNet-18, batch 64, 300 epochs: the OPTiML paper's protocol for all baselines. The hidden
  width of the head follows the backbone's feature width (512), as the official head does
  (it keeps the input width).
* Grey radiographs: colour distortion keeps brightness 0.8 and contrast 0.8; saturation, hue
  and random greyscale have no meaning on one channel and are dropped.
* Crops are bilinear through ``roi_align``; blur sigma scales with image size.
* Batch 64 gives 126 negatives per anchor instead of 8190: this is the paper's protocol,
  and it is the reason SimCLR is weakest at small batch in the SimCLR paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from lightly.utils.lars import LARS

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import FEATURE_DIM, to_model_input
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


@register_method("simclr")
class SimCLR(Method):
    display_name = "SimCLR"
    description = "Contrastive NT-Xent with in-batch negatives (Chen et al. 2020), lightly loss + LARS"
    Hyperparameters = SimCLRHyperparameters

    def __init__(self, hyperparameters: SimCLRHyperparameters | None = None):
        super().__init__(hyperparameters)
        hp = self.hparams
        self.projection_head = SimCLRProjectionHead(FEATURE_DIM, FEATURE_DIM, hp.projection_dim, num_layers=2)
        self.criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True)
        strength = 0.8 * hp.jitter_strength
        self.view = ViewRecipe(crop_scale=hp.crop_scale, brightness=strength, contrast=strength, blur_probability=0.5)

    def make_views(self, images, generator=None):
        return [augment(images, self.view, images.shape[-1], generator) for _ in range(2)]

    def training_step(self, views):
        first, second = (self.projection_head(self.encoder(to_model_input(view))) for view in views)
        loss = self.criterion(first, second)
        return loss, {"loss": loss.item()}

    def build_optimizer(self, batch_size):
        hp = self.hparams
        return LARS(split_weight_decay(self, hp.weight_decay), lr=hp.base_lr * batch_size / 256,
                    momentum=hp.momentum, weight_decay=hp.weight_decay, trust_coefficient=hp.lars_eta)
