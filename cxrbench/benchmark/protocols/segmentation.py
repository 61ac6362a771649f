"""Segmentation transfer: a ResNet U-Net whose encoder is the method's pretrained encoder.

The paper (Fig. 3) fine-tunes "a ResNet based U-Net" on SIIM-ACR with the encoder
initialised from pretraining and the decoder at random, and reports Dice; it gives no other
setting. We use segmentation_models_pytorch's ``Unet("resnet18")``: its encoder *is*
torchvision's ResNet-18, so the exported ``encoder.pth`` loads key for key (every key must
match: a mismatch fails the cell rather than silently training a partly random encoder). An
encoder row holding a ResNet-50 trunk gets ``Unet("resnet50")`` the same way.
The rest is ours and the same for every method: BCE + soft Dice loss, Adam, a fixed step
budget, the spatial part of the fine-tuning augmentation applied jointly to image and mask,
the checkpoint with the best validation per-image Dice evaluated once on test at a 0.5
threshold.
"""

from __future__ import annotations

import time

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from cxrbench.benchmark.protocols.metrics import dice_iou_per_image, segmentation_metrics
from cxrbench.benchmark.protocols.base import ProtocolResult, as_input, train_with_validation
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.augment import ViewRecipe, geometric
from cxrbench.methods.backbone import backbone_of_state, to_model_input


def build_unet(encoder_state: dict):
    """smp U-Net (one output channel) whose ResNet encoder (18 or 50, as the weights' keys say) is
    loaded key for key from the given encoder weights."""
    unet = smp.Unet(backbone_of_state(encoder_state), encoder_weights=None, in_channels=3, classes=1)
    expected = set(unet.encoder.state_dict())
    given = {key for key in encoder_state if not key.startswith("fc.")}
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"encoder state dict does not fit the U-Net encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # smp's ResNet encoder has no fc; ``load_state_dict`` there drops fc.* itself
    unet.encoder.load_state_dict({key: encoder_state[key] for key in given})
    return unet


@torch.no_grad()
def predict_masks(model, images: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Foreground probabilities (N, H, W) for uint8 images, eval mode."""
    was_training = model.training
    model.eval()
    chunks = [torch.sigmoid(model(as_input(images[start : start + batch_size], device)))[:, 0].float().cpu()
              for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(chunks).numpy()


class SegmentationProtocol:
    name = "segmentation"
    tasks = ("segmentation",)
    description = "ResNet U-Net (smp; the encoder's backbone) with the pretrained encoder, Dice/IoU/HD95 (SIIM-ACR)"

    def prepare_shared(self, encoder_state, dataset, device):
        return None  # every cell trains its own U-Net

    def run(self, encoder_state: dict, dataset: PreparedDataset, label_fraction: float, seed: int,
            config: dict, device: torch.device, shared=None) -> ProtocolResult:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: the segmentation protocol needs masks (masks.npy)")
        started = time.perf_counter()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        train = dataset.label_fraction_positions(label_fraction, seed)
        val, test = dataset.split_positions("val"), dataset.split_positions("test")
        model = build_unet(encoder_state).to(device)
        # soft Dice over the batch; smp's loss gives an all-empty batch zero Dice loss (BCE still applies)
        dice_loss = smp.losses.DiceLoss("binary", from_logits=True)
        recipe = ViewRecipe(crop_scale=tuple(config["crop_scale"]), flip_probability=0.0)
        # image and mask stacked as two channels so that one crop is drawn for both
        pairs = torch.from_numpy(np.stack([dataset.images[train], dataset.masks[train] * 255], axis=1))
        val_masks = np.asarray(dataset.masks[val], dtype=bool)

        def training_loss(chunk: torch.Tensor) -> torch.Tensor:
            views = geometric(pairs[chunk].to(device), recipe, dataset.image_size, generator)  # drawn on the CPU: the same views on any device
            images, masks = views[:, :1], (views[:, 1:] > 0.5).float()
            logits = model(to_model_input(images))
            return F.binary_cross_entropy_with_logits(logits, masks) + dice_loss(logits, masks)

        def validation_score() -> float:
            predicted = predict_masks(model, dataset.images[val], device) > 0.5
            return float(dice_iou_per_image(predicted, val_masks)[0].mean())

        selection = train_with_validation(model, training_loss, validation_score, "dice_per_image", len(train), config,
                                          generator, "segmentation")
        trained = time.perf_counter()
        predicted = predict_masks(model, dataset.images[test], device) > 0.5
        truth = np.asarray(dataset.masks[test], dtype=bool)
        metrics, per_image = segmentation_metrics(predicted, truth)
        # a few positive test images with their true masks, so that reports can draw Figure 3's overlays
        shown = np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1))[: int(config.get("overlay_images", 6))]
        return ProtocolResult(
            metrics=metrics,
            headline="dice_per_image",
            selection=selection,
            num_train_images=len(train),
            predictions={
                **per_image,
                "masks_packed": np.packbits(predicted.reshape(len(predicted), -1), axis=1),
                "mask_shape": np.array(predicted.shape[1:]),
                "image_ids": np.array(dataset.index["image_id"].iloc[test].tolist()),
                "overlay_positions": shown,
                "overlay_images": np.asarray(dataset.images[test[shown]]),
                "overlay_truth": truth[shown].astype(np.uint8),
            },
            timing={"train_s": trained - started, "test_s": time.perf_counter() - trained},
        )
