"""MoCo v2: momentum contrast with an MLP head and stronger augmentation.

Faithfulness record
===================
Paper:          Chen, Fan, Girshick, He. "Improved Baselines with Momentum Contrastive
                Learning", arXiv 2003.04297 (2020); MoCo: He et al., CVPR 2020.
Official code:  github.com/facebookresearch/moco (``moco/builder.py``, ``main_moco.py`` with
                ``--mlp --moco-t 0.2 --aug-plus --cos``).
Building blocks: lightly's ``MoCoProjectionHead`` (Linear-ReLU-Linear, no BN, as official),
                ``NTXentLoss`` with a memory bank (query against its key and the queue, cross
                entropy with the positive first: the official InfoNCE), ``update_momentum``.

Official against ours: "ours" is the method's default; a profile may override a default
under ``methods: {mocov2: ...}`` and sets batch, epochs and image size. ``bench list methods
--details mocov2`` prints every hyperparameter under every profile, read from the profile
files (so it cannot drift).

=====================  ====================  ======================
hyperparameter         official              ours (default)
=====================  ====================  ======================
backbone               ResNet-50             ResNet-18
head                   2048-2048-128         512-512-128
queue size K           65,536                65,536
momentum m             0.999                 0.999
temperature            0.2                   0.2
optimiser              SGD, momentum 0.9     same (``optimizer: lars``: LARS, no profile's)
lr (batch 256)         0.03 (x batch/256)    0.03 (x batch/256)
weight decay           1e-4                  1e-4
schedule               cosine to 0 set once per epoch, no warm-up (official and ours;
                       ``warmup_epochs`` adds one, no profile's)
batch size             256                   the profile's
epochs                 200                   the profile's
shuffle-BN             across 8 GPUs         2 chunks
head BatchNorm         none                  none (``head_batch_norm``: after each layer; no profile)
image size             224                   the profile's
=====================  ====================  ======================

Views (official ``aug-plus``): RandomResizedCrop(224, scale 0.2-1), ColorJitter(0.4, 0.4,
0.4, 0.1) p 0.8, greyscale p 0.2, GaussianBlur(0.1-2.0) p 0.5, flip, the same for both views.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the head is
  2048-2048-128, the official ResNet-50 values.
* ``queue_size`` (quick, smoke): 65,536 keys are 5% of ImageNet; on a small phantom a queue
  that long would hold keys many epochs old from a changing encoder, so the short profiles
  cut it below their training-set size (a multiple of the batch).
* ``momentum`` (quick, smoke): over a few dozen steps 0.999 leaves the key encoder almost at
  its random initialisation (1 - 0.999^38 = 4% update), so the short profiles use 0.99.
* Shuffle-BN: in one process, which cannot shuffle across GPUs, the key batch is permuted
  and encoded in 2 chunks (32 images each at batch 64, the official per-GPU batch), each with
  its own BN statistics, then un-permuted (``shuffle_bn_forward``). Under torchrun it is the
  official scheme: keys shuffled across processes, each encoding its share, then gathered
  back; the queue takes the keys of all processes (no deviation there).
* Grey radiographs: saturation, hue and random greyscale dropped; brightness/contrast kept.
* lr follows the official linear scaling (0.03 per 256).
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``base_lr`` 0.3 (solo-learn's
  CIFAR MoCo v2+ value; the official 0.03 per 256 is 0.0075 at batch 64), ``queue_size`` 1,024 keys
  and key-encoder ``momentum`` 0.99. The queue must stay shorter than the training set (3,725
  images): a queue as long as an epoch holds every image's key from the epoch before, so each
  query meets an earlier key of its own image among its negatives (ImageNet's 65,536 keys are 5 %
  of its images).
* ``head_batch_norm`` (BatchNorm after each layer of the head, as in MoCo v3) is no profile's setting: it was
  tried because the official head collapses on this phantom (README, "Why MoCo v2 did not learn")
  and it did not make MoCo v2 learn there; nor did a 3-epoch warm-up (``warmup_epochs``, also no
  profile's; measured when a warm-up was still stepped once per epoch, its first epoch at rate
  0), nor twice the epochs; MoCo v3's optimiser for ResNets with its BatchNorm head and a warm-up
  (``optimizer: lars``, ``lars_eta`` 0.02 as SimCLR's here; no profile's) only starts it.
  It learns here once, on top of those, the loss is symmetric and the queue holds 128 keys (with
  the key encoder's momentum 0 or 0.99; either change without the other was not enough; README,
  "Why MoCo v2 did not learn"): then it is no longer MoCo v2.
* ``symmetric_loss`` (no profile's): both directions, each with a queue of its own, as
  solo-learn's MoCo v2+ computes it (MoCo v3's loss is symmetric too, without a queue); the
  official loss is one-directional. Tried because, of what separates MoCo v2 from SimCLR here,
  the loss was left (README).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.base import Method, split_weight_decay
from cxrbench.methods.lars import LARS
from cxrbench.methods.momentum import momentum_copy, shuffle_bn_forward, update_momentum
from cxrbench.methods.registry import register_method


@dataclass
class MoCoV2Hyperparameters:
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    projection_dim: int = 128
    base_lr: float = 0.03  # per 256 images
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    shuffle_bn_splits: int = 2
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # linear warm-up from 0 (official: none), rising every step; after it the cosine is set once per epoch
    warmup_epochs: float = 0.0
    # BatchNorm after each layer of the projection head, as in MoCo v3 (v2's official head has none)
    head_batch_norm: bool = False
    # official: "sgd"; "lars" (an investigation knob, no profile's) is MoCo v3's optimiser for
    # ResNets, in SimCLR's form: biases and norms neither decayed nor adapted, trust ``lars_eta``
    optimizer: str = "sgd"
    lars_eta: float = 0.02
    # official: False (one direction: view 1's query against view 2's key); True (an investigation
    # knob, no profile's) adds view 2's query against view 1's key, each direction with a queue of
    # its own (solo-learn's MoCo v2+; MoCo v3's loss is symmetric too, with in-batch keys and no
    # queue), the two losses averaged
    symmetric_loss: bool = False


MOCO_OPTIMIZERS = ("sgd", "lars")


def check_moco_optimizer(name: str, hyperparameters) -> None:
    """A MoCo-family method's ``optimizer`` must be one it can build: refused when the method is
    made, before any pretraining starts."""
    if hyperparameters.optimizer not in MOCO_OPTIMIZERS:
        raise ValueError(f"{name}: optimizer {hyperparameters.optimizer!r}: expected one of {', '.join(MOCO_OPTIMIZERS)}")


def moco_optimizer(method, batch_size: int) -> torch.optim.Optimizer:
    """MoCo's optimiser (also DenseCL's): SGD over every trainable parameter, weight decay on
    all of them, lr = base_lr x batch / 256. Momentum copies have no gradient and are left out.
    With ``optimizer: lars``, LARS over the same parameters instead (see the hyperparameter)."""
    hp = method.hparams
    lr = hp.base_lr * batch_size / 256
    if hp.optimizer == "lars":
        return LARS(split_weight_decay(method, hp.weight_decay), lr=lr, momentum=hp.sgd_momentum,
                    weight_decay=hp.weight_decay, trust_coefficient=hp.lars_eta)
    trainable = [p for p in method.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=lr, momentum=hp.sgd_momentum, weight_decay=hp.weight_decay)


@register_method("mocov2")
class MoCoV2(Method):
    display_name = "MoCoV2"
    description = "Momentum contrast v2: key encoder, 65k-key queue, MLP head (Chen et al. 2020)"
    Hyperparameters = MoCoV2Hyperparameters
    lr_schedule_unit = "epoch"  # official main_moco.py --cos: adjust_learning_rate once per epoch

    def __init__(self, hyperparameters: MoCoV2Hyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        check_moco_optimizer(self.name, hp)
        self.projection_head = MoCoProjectionHead(self.feature_dim, self.feature_dim, hp.projection_dim,
                                                  batch_norm=hp.head_batch_norm)
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projection_head = momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(temperature=hp.temperature, memory_bank_size=(hp.queue_size, hp.projection_dim),
                                    gather_distributed=True)
        if hp.symmetric_loss:
            # a queue of its own: in one shared queue, the first direction's keys (view 2's, of
            # this batch) would be negatives of view 2's queries of the same images in the second
            self.reverse_criterion = NTXentLoss(temperature=hp.temperature, gather_distributed=True,
                                                memory_bank_size=(hp.queue_size, hp.projection_dim))
        self.view = ViewRecipe(crop_scale=hp.crop_scale, blur_probability=0.5)

    def make_views(self, images, generator=None):
        return [augment(images, self.view, images.shape[-1], generator) for _ in range(2)]

    def _key(self, images: torch.Tensor) -> torch.Tensor:
        return self.key_projection_head(self.key_encoder(images))

    def _direction(self, criterion, query_view: torch.Tensor, key_view: torch.Tensor) -> torch.Tensor:
        query = self.projection_head(self.encoder(to_model_input(query_view)))
        key = shuffle_bn_forward(self._key, to_model_input(key_view), self.hparams.shuffle_bn_splits)
        # query against its key and the queue; the loss enqueues the keys after using the queue
        return criterion(query, key.detach())

    def training_step(self, views):
        # one direction, as the official code, unless symmetric_loss
        loss = self._direction(self.criterion, views[0], views[1])
        if self.hparams.symmetric_loss:
            loss = (loss + self._direction(self.reverse_criterion, views[1], views[0])) / 2
        return loss, {"loss": loss.item()}

    def after_optimizer_step(self, progress):
        update_momentum(self.encoder, self.key_encoder, self.hparams.momentum)
        update_momentum(self.projection_head, self.key_projection_head, self.hparams.momentum)

    def build_optimizer(self, batch_size):
        return moco_optimizer(self, batch_size)
