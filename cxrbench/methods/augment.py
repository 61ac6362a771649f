"""Batched per-sample augmentation of grey radiographs.

Written here rather than taken from torchvision because ``transforms.v2`` draws one set of
random parameters per call: applied to a batch, every image would get the same crop. SSL
needs independent parameters per image, and a per-image Python loop over PIL images is the
bottleneck on a 2-core machine. Here every operation runs once for the whole batch:
crops through ``torchvision.ops.roi_align`` (one box per image), flips and intensity jitter
through broadcasting, blur through one grouped convolution with a kernel per image. The
same code runs on the GPU when the batch lives there.

The recipe follows the SimCLR/BYOL/VICReg family (RandomResizedCrop, flip, colour jitter,
blur, solarisation) reduced to what is meaningful for a single grey channel: brightness and
contrast jitter stay, saturation and hue (no colour) and random greyscale (already grey) are
dropped. Each method's faithfulness record states its view parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ViewRecipe:
    """Parameters of one augmented view (probabilities are per image)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels at 224 px, scaled to the image size
    solarize_probability: float = 0.0
    rotation_degrees: float = 0.0  # uniform in [-d, d], corners filled with black (PCRLv2)


def _on(values: torch.Tensor, device) -> torch.Tensor:
    return values.to(device, non_blocking=True) if values.device != torch.device(device) else values


def draw_rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device and moved to ``device``.

    Views made on a GPU from a batch there then take their random parameters from the same
    CPU generator, in the same order, as views made on the CPU: the two paths give the same
    views (up to floating-point differences), and a run's views depend on its seed alone.
    Without a generator the draws are made on ``device`` from its global generator.
    """
    source = generator.device if generator is not None else device
    return _on(torch.rand(shape, device=source, generator=generator), device)


def draw_uniform(shape, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return _on(torch.empty(shape, device=source).uniform_(low, high, generator=generator), device)


def draw_randint(high: int, shape, generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return _on(torch.randint(0, high, shape, device=source, generator=generator), device)


def random_crop_boxes(batch: int, size: int, scale, ratio, generator, device) -> torch.Tensor:
    """RandomResizedCrop boxes (x0, y0, x1, y1) in pixels, one per image.

    Area and log-aspect are drawn per image; a box that would not fit is shrunk to fit
    (torchvision retries ten times and then falls back to a centre crop; shrinking keeps
    the draw vectorised and only affects extreme aspect ratios).
    """
    area = draw_uniform(batch, scale[0], scale[1], generator, device) * size * size
    log_ratio = draw_uniform(batch, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=size)
    height = torch.sqrt(area / aspect).clamp(max=size)
    x0 = draw_rand(batch, generator, device) * (size - width)
    y0 = draw_rand(batch, generator, device) * (size - height)
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (B, 1, H, W) with its own sigma (B,), separable, reflect padding."""
    batch, _, height, width = images.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    x = images.reshape(1, batch, height, width)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(batch, 1, 1, -1), groups=batch)
    x = F.conv2d(x, kernel.view(batch, 1, -1, 1), groups=batch)
    return x.reshape(batch, 1, height, width)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, 1, H, W) about its centre by its own angle; black corners."""
    radians = torch.deg2rad(degrees)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def geometric(images: torch.Tensor, recipe: ViewRecipe, output_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The spatial part of a view: crop-and-resize, rotation, flip. uint8/float (B, H, W) -> (B, 1, S, S) in [0, 1]."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.unsqueeze(1) if images.dim() == 3 else images
    batch, _, size, _ = images.shape
    device = images.device
    boxes = random_crop_boxes(batch, size, recipe.crop_scale, recipe.crop_ratio, generator, device)
    rois = torch.cat([torch.arange(batch, device=device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    views = roi_align(images, rois, output_size=output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if recipe.rotation_degrees > 0:
        angles = (draw_rand(batch, generator, device) * 2 - 1) * recipe.rotation_degrees
        views = rotate(views, angles)
    flip = (draw_rand(batch, generator, device) < recipe.flip_probability).view(batch, 1, 1, 1)
    return torch.where(flip, views.flip(-1), views)


def appearance(views: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """The photometric part of a view: brightness/contrast jitter, blur, solarisation."""
    batch, _, output_size, _ = views.shape
    device = views.device

    def coin(probability: float) -> torch.Tensor:
        return (draw_rand(batch, generator, device) < probability).view(batch, 1, 1, 1)

    jitter = coin(recipe.jitter_probability)
    brightness = 1 + (draw_rand((batch, 1, 1, 1), generator, device) * 2 - 1) * recipe.brightness
    contrast = 1 + (draw_rand((batch, 1, 1, 1), generator, device) * 2 - 1) * recipe.contrast
    mean = views.mean(dim=(2, 3), keepdim=True)
    jittered = ((views * brightness - mean * brightness) * contrast + mean * brightness).clamp(0, 1)
    views = torch.where(jitter, jittered, views)

    if recipe.blur_probability > 0:
        low, high = recipe.blur_sigma
        sigma = draw_uniform(batch, low, high, generator, device) * output_size / 224
        blurred = gaussian_blur(views, sigma.clamp(min=1e-3))
        views = torch.where(coin(recipe.blur_probability), blurred, views)

    if recipe.solarize_probability > 0:
        solarized = torch.where(views >= 0.5, 1 - views, views)
        views = torch.where(coin(recipe.solarize_probability), solarized, views)
    return views


def augment(images: torch.Tensor, recipe: ViewRecipe, output_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 or float images (B, H, W) -> one augmented view (B, 1, S, S) in [0, 1]."""
    return appearance(geometric(images, recipe, output_size, generator), recipe, generator)
