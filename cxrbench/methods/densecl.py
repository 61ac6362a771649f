"""DenseCL: dense contrastive learning on top of MoCo v2.

Faithfulness record
===================
Paper:          Wang, Zhang, Shen, Kong, Li. "Dense Contrastive Learning for Self-Supervised
                Visual Pre-Training", CVPR 2021.
Official code:  github.com/WXinlong/DenseCL (``openselfsup/models/densecl.py``,
                ``openselfsup/models/necks.py: DenseCLNeck``,
                ``configs/selfsup/densecl/densecl_imagenet_200ep.py``).
Written here, not from lightly's DenseCL example: that example updates a momentum encoder
but computes its keys with the online network, so the key encoder is never used. Built on
lightly's ``MoCoProjectionHead`` (the global branch: Linear-ReLU-Linear, no BN),
``MemoryBankModule`` (both queues) and ``update_momentum``.

What the official model does, and this file does in the same order:
1. query view -> encoder (q) ; key view -> momentum encoder (k), under shuffle-BN;
2. global branch: GAP -> Linear-ReLU-Linear -> 128-d, L2-normalised;
3. dense branch: 1x1 conv-ReLU-1x1 conv on the unpooled grid -> 128 x S^2, L2-normalised per
   position; its spatial average (one 128-d vector per image) is what the dense queue stores;
4. correspondence: cosine similarity between the L2-normalised *backbone* features of query
   and key positions; for each query position the key position with the highest similarity;
5. global loss: InfoNCE of q against k and the global queue; dense loss: InfoNCE of each query
   position against its matched key position and the dense queue; temperature 0.2;
6. loss = (1 - lambda) global + lambda dense, lambda = 0.5 (constant: the repository's
   warm-up hook that sets lambda = 0 at first is enabled by no official config);
7. one direction only (view 1 is always the query), as official; keys enqueued after the loss;
   momentum update of encoder and both heads before the next key forward.

Official against ours: "ours" is the method's default; a profile may override a default
under ``methods: {densecl: ...}`` and sets batch, epochs and image size. ``bench list methods
--details densecl`` prints every hyperparameter under every profile, read from the profile
files (so it cannot drift).

=====================  ====================  ======================
hyperparameter         official              ours (default)
=====================  ====================  ======================
backbone               ResNet-50             ResNet-18
global / dense head    2048-2048-128         512-512-128
head init              global Linears Kaiming-   same
                       normal (fan_in), bias 0;
                       1x1 convs torch default
queue size (both)      65,536                65,536
momentum               0.999                 0.999
temperature            0.2                   0.2
loss lambda            0.5                   0.5
optimiser              SGD, momentum 0.9,    same
                       wd 1e-4 on all params
lr                     0.03 @ 256 (ImageNet) 0.03 (x batch/256)
schedule               cosine to 0 set once per epoch (mmcv's CosineAnnealing hook,
                       by epoch), no warm-up: official and ours
batch size             256                   the profile's
epochs                 200                   the profile's
image size             224 (7x7 grid)        the profile's
=====================  ====================  ======================

Views (official, MoCo v2's, same for both): RandomResizedCrop(scale 0.2-1), ColorJitter(0.4,
0.4, 0.4, 0.1) p 0.8, greyscale p 0.2, GaussianBlur(0.1-2.0) p 0.5, flip.

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the global and
  dense heads are 2048-2048-128, the official ResNet-50 values.
* ``queue_size`` and ``momentum`` (quick, smoke): shortened as in MoCo v2 (small data, few steps).
* 64 px input gives a 2x2 grid: the dense loss then matches 4 positions per image; it is the
  quick profile's price for CPU speed. The paper profile uses 224 px (7x7).
* Grey radiographs: saturation, hue and greyscale dropped; brightness/contrast kept.
* Shuffle-BN: a stand-in in one process; under torchrun the official shuffle across
  processes (see ``momentum.shuffle_bn_forward``). Both queues take every process's keys.
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): as MoCo v2's, ``base_lr`` 0.3,
  ``queue_size`` 1,024 (both queues; shorter than the 3,725 training images, for MoCo v2's reason)
  and ``momentum`` 0.99.
* MoCo v2's investigation knobs (no profile's): ``warmup_epochs`` and ``optimizer: lars`` (with
  ``lars_eta``) apply to DenseCL as to MoCo v2; ``head_batch_norm`` and ``symmetric_loss`` have no
  DenseCL counterpart and are refused when the method is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import nn

from cxrbench.methods.augment import ViewRecipe, augment
from cxrbench.methods.backbone import dense_features, to_model_input
from cxrbench.methods.base import Method
from cxrbench.methods.mocov2 import MoCoV2Hyperparameters, check_moco_optimizer, moco_optimizer
from cxrbench.methods.momentum import momentum_copy, shuffle_bn_forward, update_momentum
from cxrbench.methods.registry import register_method


@dataclass
class DenseCLHyperparameters(MoCoV2Hyperparameters):
    """MoCo v2's hyperparameters (same official values) plus the weight of the dense loss."""

    loss_lambda: float = 0.5


class DenseHead(nn.Module):
    """The dense branch of DenseCLNeck: 1x1 conv - ReLU - 1x1 conv on the feature grid."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, out_channels, 1)
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.layers(grid).flatten(2)  # (B, out, S^2)


def kaiming_init_linears(module: nn.Module) -> None:
    """Official ``DenseCLNeck.init_weights(init_linear="kaiming")``: every Linear Kaiming-normal
    (fan_in, ReLU) with zero bias. Its 1x1 convolutions are not re-initialised there (they
    keep PyTorch's default), and neither are they here."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def match_positions(query_backbone: torch.Tensor, key_backbone: torch.Tensor) -> torch.Tensor:
    """For each query position, the key position whose backbone feature is most similar.

    Inputs are (B, C, S^2) backbone features; returns (B, S^2) indices into the key grid.
    """
    query = F.normalize(query_backbone, dim=1)
    key = F.normalize(key_backbone, dim=1)
    similarity = torch.einsum("bcq,bck->bqk", query, key)
    return similarity.argmax(dim=2)


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross entropy with the positive first: query (N, D), positive (N, D), negatives (D, K)."""
    positive_logits = (query * positive).sum(dim=1, keepdim=True)
    negative_logits = query @ negatives
    logits = torch.cat([positive_logits, negative_logits], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


@register_method("densecl")
class DenseCL(Method):
    display_name = "DenseCL"
    description = "Dense contrastive learning: MoCo v2 + dense head and matched-position loss (Wang et al. 2021)"
    Hyperparameters = DenseCLHyperparameters
    lr_schedule_unit = "epoch"  # official: mmcv's CosineAnnealing lr hook, by epoch

    def __init__(self, hyperparameters: DenseCLHyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        check_moco_optimizer(self.name, hp)
        for knob in ("head_batch_norm", "symmetric_loss"):  # MoCo v2's investigation knobs: no DenseCL head or loss has them
            if getattr(hp, knob):
                raise ValueError(f"densecl: {knob} true: expected false (MoCo v2's setting only: DenseCL's global head "
                                 f"has no BatchNorm and its loss is one-directional)")
        self.global_head = MoCoProjectionHead(self.feature_dim, self.feature_dim, hp.projection_dim)
        kaiming_init_linears(self.global_head)
        self.dense_head = DenseHead(self.feature_dim, self.feature_dim, hp.projection_dim)
        self.key_encoder = momentum_copy(self.encoder)
        self.key_global_head = momentum_copy(self.global_head)
        self.key_dense_head = momentum_copy(self.dense_head)
        # feature_dim_first: the banks are (D, K), ready for query @ bank
        self.global_queue = MemoryBankModule((hp.queue_size, hp.projection_dim), gather_distributed=True)
        self.dense_queue = MemoryBankModule((hp.queue_size, hp.projection_dim), gather_distributed=True)
        self.view = ViewRecipe(crop_scale=hp.crop_scale, blur_probability=0.5)

    def make_views(self, images, generator=None):
        return [augment(images, self.view, images.shape[-1], generator) for _ in range(2)]

    @staticmethod
    def _branches(encoder, global_head, dense_head, images):
        grid = dense_features(encoder, images)  # (B, C, h, w)
        global_embedding = F.normalize(global_head(grid.mean(dim=(2, 3))), dim=1)
        dense = dense_head(grid)  # (B, D, S^2)
        pooled_dense = F.normalize(dense.mean(dim=2), dim=1)
        return global_embedding, F.normalize(dense, dim=1), pooled_dense, grid.flatten(2)

    def _key_branches(self, images):
        return self._branches(self.key_encoder, self.key_global_head, self.key_dense_head, images)

    def training_step(self, views):
        hp = self.hparams
        q, q_grid, _, q_backbone = self._branches(self.encoder, self.global_head, self.dense_head, to_model_input(views[0]))
        k, k_grid, k_pooled, k_backbone = shuffle_bn_forward(self._key_branches, to_model_input(views[1]), hp.shuffle_bn_splits)
        _, global_negatives = self.global_queue(k, update=False)
        _, dense_negatives = self.dense_queue(k_pooled, update=False)
        global_loss = info_nce(q, k, global_negatives.to(q.device), hp.temperature)

        matches = match_positions(q_backbone, k_backbone)  # (B, S^2)
        matched_keys = torch.gather(k_grid, 2, matches.unsqueeze(1).expand(-1, k_grid.shape[1], -1))
        query_positions = q_grid.permute(0, 2, 1).reshape(-1, q_grid.shape[1])  # (B*S^2, D)
        key_positions = matched_keys.permute(0, 2, 1).reshape(-1, q_grid.shape[1])
        dense_loss = info_nce(query_positions, key_positions, dense_negatives.to(q.device), hp.temperature)

        loss = (1 - hp.loss_lambda) * global_loss + hp.loss_lambda * dense_loss
        # enqueue after the loss: this batch's keys are negatives only from the next step on
        self.global_queue(k, update=True)
        self.dense_queue(k_pooled, update=True)
        return loss, {"loss": loss.item(), "global_loss": global_loss.item(), "dense_loss": dense_loss.item()}

    def after_optimizer_step(self, progress):
        m = self.hparams.momentum
        update_momentum(self.encoder, self.key_encoder, m)
        update_momentum(self.global_head, self.key_global_head, m)
        update_momentum(self.dense_head, self.key_dense_head, m)

    def build_optimizer(self, batch_size):
        return moco_optimizer(self, batch_size)
