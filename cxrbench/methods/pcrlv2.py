"""PCRLv2: preservational contrastive representation learning, version 2 (2D chest X-ray code).

Faithfulness record
===================
Paper:          Zhou, Lu, Chen, Yang, Yu. "A Unified Visual Information Preservation Framework
                for Self-supervised Pre-training in Medical Image Analysis", IEEE TPAMI 2023.
Official code:  github.com/RL4M/PCRLv2, 2D part (``models/pcrlv2_model.py``, ``train_2d.py``,
                ``data.py``, ``datasets/chestDataset.py``, ``utils.py``, ``run2d.sh``).
Written here (lightly has no PCRLv2); lightly's ``NegativeCosineSimilarity`` is the cosine term.

What the official 2D model does, and this file does in the same order:
* a ResNet-18 encoder and a decoder of five blocks (upsample x2 -> [conv3x3-BN-ReLU] x 2;
  channels 256, 128, 64, 32, 16) starting from the stride-32 features, **without skip
  connections**; a 3x3 conv head reconstructs the image from the last block;
* at every decoder block: a "projector" (global average pool + BatchNorm1d), a predictor
  (Linear C->2C, BN, ReLU, Linear 2C->C) and, for global views, a deep-supervision head
  (conv3x3-BN-ReLU-conv1x1 -> 3 channels, bilinearly upsampled to full size);
* two global views (crop scale 0.3-1, rotation +-10 deg, flip); the restoration target is a
  view *before* its appearance corruption (grey/blur p 0.5/jitter 0.4 always/Cutout 3 holes);
* six local views (crop scale 0.05-0.3, 96 px at 224, rotation, flip, appearance
  corruption, no Cutout) cut from the whole image;
* ``cos_loss(a, b)``: at one decoder scale drawn uniformly per call, the SimSiam-style
  symmetric -cos between each side's prediction and the other side's detached projection;
* loss = MSE(reconstruction of global view 1, its clean target)
         + cos_loss(global 1, global 2)
         + sum over local crops of [cos_loss(global 1, local) + cos_loss(global 2, local)] / (2 x 6)
         + beta x MSE(deep supervision of global view 1 at the global loss's scale, target),
  beta = 0.5 (1 + cos(pi x epoch / 240)), 240 being the official number of epochs;
* SGD (momentum 0.9, weight decay 1e-4 on all parameters), lr 0.01 at batch 64, cosine to 0
  per epoch, no warm-up. Only the encoder is exported.

Official against ours: "ours" is the method's default; a profile may override a default
under ``methods: {pcrlv2: ...}`` and sets batch, epochs and image size. ``bench list methods
--details pcrlv2`` prints every hyperparameter under every profile, read from the profile
files (so it cannot drift).

=====================  ======================  ======================
hyperparameter         official (2D chest)     ours (default)
=====================  ======================  ======================
encoder init           ImageNet (smp default)  random
decoder init           Kaiming-uniform convs,  same (reconstruction head:
                       Xavier linears, BN 1/0; Xavier, as smp's head)
                       head: smp's Xavier
global / local size    224 / 96                224 / 96
local crops            6                       6
Cutout                 3 holes of 32 px after  3 x 32 px after
                       normalisation (fill 0)  normalisation (fill 0)
lr                     0.01 @ batch 64         0.01
weight decay           1e-4                    1e-4
beta schedule          cosine 1 -> 0 over 240  over training
                       epochs (per epoch)      (per step)
lr schedule            cosine to 0 per epoch   cosine to 0 per epoch
batch size             64 (4 GPUs, BN per GPU) the profile's
epochs                 240                     the profile's
=====================  ======================  ======================

Deviations and why
------------------
* ResNet-50 (``model.backbone: resnet50``, ``bench run --backbone resnet50``): the decoder's first
  block takes the 2,048 stride-32 channels (the official 2D code builds ResNet-18 only).
* Random encoder initialisation: every SSL baseline in the OPTiML protocol starts from
  random weights (the ImageNet start is the Sup.2 row's role); ``encoder_init: imagenet``
  restores the official choice where the weights are available.
* Sizes scale with the profile's image size (local crop = image x 96/224 rounded to a multiple
  of 32, Cutout holes = image x 32/224); smoke uses 2 local crops (``num_local_crops``) to stay within seconds.
* beta follows the pretraining progress per step rather than per epoch (the learning rate
  is set per epoch, as official).
* Grey radiographs: random greyscale is a no-op; jitter keeps brightness/contrast 0.4
  (saturation/hue dropped); the reconstruction target keeps the official 3-channel,
  ImageNet-normalised form of the grey image.
* BatchNorm statistics over the whole batch (official DataParallel: per-GPU batches of 16).
* ``standard`` profile (a 13-epoch schedule on the 64 px phantom): ``base_lr`` 0.05 (five times
  the official 0.01, as the other SGD methods' short-schedule rates are scaled up).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity
from torch import nn

from cxrbench.methods.augment import ViewRecipe, appearance, draw_randint, geometric
from cxrbench.methods.backbone import dense_features, to_model_input
from cxrbench.methods.base import Method
from cxrbench.methods.registry import register_method

DECODER_CHANNELS = (256, 128, 64, 32, 16)


@dataclass
class PCRLv2Hyperparameters:
    num_local_crops: int = 6
    base_lr: float = 0.01  # at batch 64, scaled linearly
    weight_decay: float = 1e-4
    momentum: float = 0.9
    global_crop_scale: tuple[float, float] = (0.3, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.3)
    rotation_degrees: float = 10.0
    cutout_holes: int = 3
    encoder_init: str = "random"  # official: imagenet
    weights_path: str | None = None


class DecoderBlock(nn.Module):
    """Upsample x2, two conv3x3-BN-ReLU; projector, predictor and deep-supervision heads."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )
        self.projector = nn.BatchNorm1d(out_channels)  # applied after global average pooling
        self.predictor = nn.Sequential(
            nn.Linear(out_channels, 2 * out_channels), nn.BatchNorm1d(2 * out_channels), nn.ReLU(inplace=True),
            nn.Linear(2 * out_channels, out_channels),
        )
        self.supervision = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, 3, 1),
        )

    def forward(self, x: torch.Tensor):
        x = self.convs(F.interpolate(x, scale_factor=2, mode="nearest"))
        projection = self.projector(x.mean(dim=(2, 3)))
        return x, projection, self.predictor(projection)


def initialise_decoder_blocks(module: nn.Module) -> None:
    """Official ``initialize_decoder`` (models/pcrlv2_model.py): Kaiming-uniform convolutions
    (fan_in, ReLU), Xavier-uniform linears, zero biases, BatchNorm2d at 1 / 0 (BatchNorm1d keeps
    torch's default, which is the same 1 / 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class Decoder(nn.Module):
    def __init__(self, in_channels: int = 512):
        super().__init__()
        channels = (in_channels,) + DECODER_CHANNELS
        self.blocks = nn.ModuleList(DecoderBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.reconstruction_head = nn.Conv2d(DECODER_CHANNELS[-1], 3, 3, padding=1)
        initialise_decoder_blocks(self.blocks)
        # the official reconstruction head is smp's segmentation head: Xavier-uniform, bias 0
        nn.init.xavier_uniform_(self.reconstruction_head.weight)
        nn.init.zeros_(self.reconstruction_head.bias)

    def forward(self, features: torch.Tensor, reconstruct: bool):
        """Per-scale (projection, prediction), and for global views the reconstruction and
        the deep-supervision outputs (all at full resolution)."""
        pairs, supervision = [], []
        x = features
        for block in self.blocks:
            x, projection, prediction = block(x)
            pairs.append((projection, prediction))
            if reconstruct:
                supervision.append(block.supervision(x))
        if not reconstruct:
            return pairs, None, None
        size = x.shape[-2:]
        supervision = [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in supervision]
        return pairs, self.reconstruction_head(x), supervision


def cutout_keep_mask(images: torch.Tensor, holes: int, length: int, generator=None) -> torch.Tensor:
    """1 outside and 0 inside ``holes`` squares of side ``length`` per image (centres uniform, clipped at borders)."""
    batch, _, height, width = images.shape
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, width)
    keep = torch.ones(batch, 1, height, width, dtype=torch.bool, device=images.device)
    for _ in range(holes):
        cy = draw_randint(height, (batch, 1, 1, 1), generator, images.device)
        cx = draw_randint(width, (batch, 1, 1, 1), generator, images.device)
        inside = ((rows - cy).abs() * 2 < length) & ((cols - cx).abs() * 2 < length)
        keep &= ~inside
    return keep.to(images.dtype)


def cutout(images: torch.Tensor, holes: int, length: int, generator=None) -> torch.Tensor:
    """Official Cutout: multiply by the keep mask. Applied to the *normalised* model input, as
    the official transform list puts Cutout after Normalize: a hole is 0 there, the mean grey."""
    return images * cutout_keep_mask(images, holes, length, generator)


@register_method("pcrlv2")
class PCRLv2(Method):
    display_name = "PCRLv2"
    leaves_parameters_unused = True  # one decoder scale drawn per step
    description = "Preservational contrastive learning v2: multi-scale restoration + SimSiam-style global/local (Zhou et al. 2023)"
    Hyperparameters = PCRLv2Hyperparameters
    lr_schedule_unit = "epoch"  # official train_2d.py: cosine over epochs
    checkpoint_attributes = ("beta", "scale_rng")

    def __init__(self, hyperparameters: PCRLv2Hyperparameters | None = None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        hp = self.hparams
        self.decoder = Decoder(self.feature_dim)  # from the stride-32 features: 512 (R18) or 2048 (R50)
        self.criterion = NegativeCosineSimilarity()
        self.beta = 1.0
        self.global_view = ViewRecipe(crop_scale=hp.global_crop_scale, rotation_degrees=hp.rotation_degrees,
                                      jitter_probability=1.0, blur_probability=0.5)
        self.local_view = ViewRecipe(crop_scale=hp.local_crop_scale, rotation_degrees=hp.rotation_degrees,
                                     jitter_probability=1.0, blur_probability=0.5)
        # the scale draws of the official code use Python's random module; seeded per method
        self.scale_rng = random.Random(0)

    def make_views(self, images, generator=None):
        """[global 1, global 2, clean target of global 1, Cutout keep masks of globals 1 and 2,
        local crops ...]; images in [0, 1]. The masks are applied after normalisation, in
        ``training_step``, where the official transform applies Cutout."""
        hp = self.hparams
        size = images.shape[-1]
        local_size = max(32, round(size * 96 / 224 / 32) * 32)
        hole = max(1, round(size * 32 / 224))
        clean = [geometric(images, self.global_view, size, generator) for _ in range(2)]
        corrupted, keep = [], []
        for view in clean:
            corrupted.append(appearance(view, self.global_view, generator))
            keep.append(cutout_keep_mask(corrupted[-1], hp.cutout_holes, hole, generator))
        local = [appearance(geometric(images, self.local_view, local_size, generator), self.local_view, generator)
                 for _ in range(hp.num_local_crops)]
        return corrupted + [clean[0]] + keep + local

    def _cos_loss(self, first, second, scale: int) -> torch.Tensor:
        (projection_a, prediction_a), (projection_b, prediction_b) = first[scale], second[scale]
        return 0.5 * (self.criterion(prediction_a, projection_b.detach()) + self.criterion(prediction_b, projection_a.detach()))

    def training_step(self, views):
        global_1, global_2, target, keep_1, keep_2, *local_views = views
        target = to_model_input(target)
        input_1, input_2 = to_model_input(global_1) * keep_1, to_model_input(global_2) * keep_2  # Cutout after Normalize
        pairs_1, reconstruction, supervision = self.decoder(dense_features(self.encoder, input_1), True)
        pairs_2, _, _ = self.decoder(dense_features(self.encoder, input_2), False)
        scales = len(DECODER_CHANNELS)
        global_scale = self.scale_rng.randrange(scales)
        global_loss = self._cos_loss(pairs_1, pairs_2, global_scale)
        local_loss = torch.zeros((), device=target.device)
        if local_views:
            local_batch = torch.cat(local_views)
            local_pairs, _, _ = self.decoder(dense_features(self.encoder, to_model_input(local_batch)), False)
            batch = global_1.shape[0]
            for index in range(len(local_views)):
                crop = [(p[index * batch:(index + 1) * batch], q[index * batch:(index + 1) * batch]) for p, q in local_pairs]
                local_loss = local_loss + self._cos_loss(pairs_1, crop, self.scale_rng.randrange(scales))
                local_loss = local_loss + self._cos_loss(pairs_2, crop, self.scale_rng.randrange(scales))
            local_loss = local_loss / (2 * len(local_views))
        restoration = F.mse_loss(reconstruction, target)
        deep_supervision = F.mse_loss(supervision[global_scale], target)
        loss = restoration + global_loss + local_loss + self.beta * deep_supervision
        return loss, {"loss": loss.item(), "restoration": restoration.item(), "global": global_loss.item(),
                      "local": local_loss.item(), "deep_supervision": deep_supervision.item(), "beta": self.beta}

    def after_optimizer_step(self, progress):
        # official: beta = 0.5 (1 + cos(pi epoch / 240)) with 240 = the number of epochs
        self.beta = 0.5 * (1 + math.cos(math.pi * progress))

    def build_optimizer(self, batch_size):
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.base_lr * batch_size / 64, momentum=hp.momentum,
                               weight_decay=hp.weight_decay)
