"""The ResNet encoder every method trains (ResNet-18, the paper's, or ResNet-50), and how a radiograph enters it.

Single-channel radiographs are handled in one way everywhere: the grey channel is repeated
to three channels and normalised with the ImageNet statistics. That keeps the encoder a
plain torchvision ResNet-18 (3-channel ``conv1``), so an exported ``encoder.pth`` loads into
``torchvision.models.resnet18()`` with only ``fc.*`` missing and ImageNet weights (Sup.2)
need no surgery. Repeating a channel costs nothing but the first convolution's input.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ResNet-18's pooled width, the paper's backbone; a method that follows the run's backbone
# (``model.backbone``) builds its heads from ``self.feature_dim`` instead
FEATURE_DIM = 512
# the trunks the suite can hold: torchvision constructor and pooled feature width
BACKBONES = {"resnet18": (torchvision.models.resnet18, 512), "resnet50": (torchvision.models.resnet50, 2048)}
BACKBONE_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be loaded on this machine (offline, no cached file)."""


# torchvision's ImageNet weights of each trunk (V1: the weights the SSL literature compares against)
IMAGENET_WEIGHTS = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1}


def imagenet_weights_file(backbone: str = "resnet18") -> Path:
    """Where torchvision keeps (or would download) a backbone's ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS[backbone].url).name


def imagenet_weights_missing(weights_path: str | None, backbone: str = "resnet18") -> str | None:
    """Why the ImageNet weights cannot be loaded here, or None if they can."""
    if weights_path:
        return None if Path(weights_path).is_file() else f"ImageNet weights file {weights_path} does not exist"
    if imagenet_weights_file(backbone).is_file():
        return None
    return (f"{BACKBONE_NAMES[backbone]} ImageNet weights are not in the torch hub cache ({imagenet_weights_file(backbone)}) and no "
            f"weights_path is set; download them once where there is network access "
            f"(python -c 'import torchvision; torchvision.models.{backbone}(weights=\"IMAGENET1K_V1\")') "
            f"or set --set methods.<name>.weights_path=FILE")


def backbone_of_state(state_dict: dict) -> str:
    """Which torchvision ResNet a trunk state dict belongs to: ResNet-50's bottleneck blocks have
    a third convolution (``layer1.0.conv3``), ResNet-18's basic blocks do not."""
    return "resnet50" if "layer1.0.conv3.weight" in state_dict else "resnet18"


def feature_dim(backbone: str) -> int:
    """The pooled feature width of a backbone (512 for ResNet-18, 2048 for ResNet-50)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[backbone][1]


def resnet_encoder(backbone: str = "resnet18", state_dict: dict | None = None, init: str = "random",
                   weights_path: str | None = None, zero_init_residual: bool = False) -> nn.Module:
    """A torchvision ResNet (``backbone``) with ``fc`` replaced by identity: images -> (B, 512 or
    2048) features.

    ``state_dict``: a trunk to load key for key (every trunk key, no other; ``fc.*`` is never used
    here). ``init="imagenet"`` loads torchvision's ImageNet weights, from ``weights_path`` if given,
    else through torchvision's weights API, which reads its hub cache and only downloads when the
    file is not there. ``zero_init_residual`` starts the last BatchNorm of every residual block at
    zero scale, so each block begins as the identity (official SimSiam and VICReg build their
    ResNets so); loaded weights overwrite it.
    """
    feature_dim(backbone)  # an unknown name is an error here
    model = BACKBONES[backbone][0](weights=None, zero_init_residual=zero_init_residual)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(f"encoder state dict does not match {backbone}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    elif init == "imagenet":
        reason = imagenet_weights_missing(weights_path, backbone)
        if reason:
            raise WeightsUnavailable(reason)
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        else:
            state = IMAGENET_WEIGHTS[backbone].get_state_dict(progress=False, check_hash=True)
        # an exported encoder.pth has no fc.*: the classifier head is never used here
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a tensor of another shape
            missing, unexpected = [(str(error).strip().splitlines() or ["shape mismatch"])[-1].strip()], []
        wrong = [key for key in missing if not key.startswith("fc.")] + list(unexpected)
        if wrong:
            raise WeightsUnavailable(f"{weights_path or IMAGENET_WEIGHTS[backbone].url}: not a {BACKBONE_NAMES[backbone]} state dict "
                                     f"({len(wrong)} missing or unexpected key(s), first {wrong[:3]})")
    elif init != "random":
        raise ValueError(f"unknown encoder initialisation {init!r}; expected 'random' or 'imagenet'")
    model.fc = nn.Identity()
    return model


def dense_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unpooled (B, C, h, w) feature map of a torchvision ResNet encoder (C = 512 for ResNet-18)."""
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
    x = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))
    return x


def encoder_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A plain torchvision ResNet state dict (no ``fc``), on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in encoder.state_dict().items() if not key.startswith("fc.")}


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Grey images in [0, 1], shape (B, 1, H, W) -> normalised 3-channel input (B, 3, H, W)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std
