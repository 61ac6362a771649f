"""The ResNet-18 encoder every method trains, and how a radiograph enters it.

Single-channel radiographs are handled in one way everywhere: the grey channel is repeated
to three channels and normalised with the ImageNet statistics. That keeps the encoder a
plain torchvision ResNet-18 (3-channel ``conv1``), so an exported ``encoder.pth`` loads into
``torchvision.models.resnet18()`` with only ``fc.*`` missing and ImageNet weights (Sup.2)
need no surgery. Repeating a channel costs nothing but the first convolution's input.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 512


def resnet18_encoder(weights: str | None = None) -> nn.Module:
    """torchvision ResNet-18 with ``fc`` replaced by identity: images -> (B, 512) features.

    ``weights="imagenet"`` asks torchvision for its ImageNet weights (downloaded on first
    use, so it needs network access or a populated torch hub cache).
    """
    tv_weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1 if weights == "imagenet" else None
    model = torchvision.models.resnet18(weights=tv_weights)
    model.fc = nn.Identity()
    return model


def dense_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unpooled (B, 512, h, w) feature map of a torchvision ResNet encoder."""
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
    x = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))
    return x


def encoder_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A plain torchvision resnet18 state dict (no ``fc``), on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in encoder.state_dict().items() if not key.startswith("fc.")}


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Grey images in [0, 1], shape (B, 1, H, W) -> normalised 3-channel input (B, 3, H, W)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std
