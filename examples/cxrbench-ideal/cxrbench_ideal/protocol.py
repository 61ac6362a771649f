"""IDEAL's fine-tuning: one pretrained encoder, two differently perturbed decoders, cross-consistency.

Faithfulness record (poster only; choices it leaves open are marked *open*)
---------------------------------------------------------------------------
* shared encoder E (the method's exported ResNet-18, every key loaded) and two U-Net
  decoders that differ in how they upsample: transposed convolutions in one, bilinear
  interpolation in the other (poster). The bilinear one is segmentation_models_pytorch's
  ``UnetDecoder``; the transposed one is written here because smp has no such decoder.
* loss (poster): labelled images CE(p1, m) + CE(p2, m); unlabelled images CE(p1, y2) +
  CE(p2, y1) with y the other branch's thresholded prediction and no gradient through it.
  CE is binary cross-entropy here (one foreground class); to CE we add soft Dice on
  labelled images, as the issue asks (*open* in the poster).
* unlabelled images: the training split minus the labelled subset; at 100 % labels there are
  none and the loss is the supervised part only. Unlabelled weight 1.0, no ramp-up (*open*).
* threshold 0.5 (*open*); the prediction at test time is the mean of both branches'
  probabilities (*open*); Adam (poster), learning rate per profile (poster: 1e-5).
* metrics: Dice, average symmetric surface distance and Hausdorff distance (poster); here
  per image, with HD as the 95th percentile (MONAI), as cxrbench's segmentation protocol.
"""

from __future__ import annotations

import time

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn
from tqdm.auto import tqdm

from cxrbench.benchmark.protocols.metrics import dice_iou_per_image, segmentation_metrics
from cxrbench.benchmark.protocols.base import BestOnValidation, ProtocolResult, as_input
from cxrbench.methods.augment import ViewRecipe, geometric
from cxrbench.methods.backbone import to_model_input

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class TransposedConvDecoder(nn.Module):
    """U-Net decoder whose every upsampling is a learned 2x2 transposed convolution."""

    def __init__(self, encoder_channels, decoder_channels=DECODER_CHANNELS):
        super().__init__()
        skips = list(encoder_channels[1:][::-1])  # deepest first: 512, 256, 128, 64, 64
        inputs = [skips[0]] + list(decoder_channels[:-1])
        skip_channels = skips[1:] + [0]
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c, kernel_size=2, stride=2) for c in inputs)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + s, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                          nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
            for c, s, o in zip(inputs, skip_channels, decoder_channels))

    def forward(self, features):
        skips = features[1:][::-1]
        x = skips[0]
        for i, (up, block) in enumerate(zip(self.up, self.blocks)):
            x = up(x)
            if i + 1 < len(skips):
                x = torch.cat([x, skips[i + 1]], dim=1)
            x = block(x)
        return x


class TwoBranchUnet(nn.Module):
    def __init__(self, encoder_state: dict):
        super().__init__()
        self.encoder = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5, weights=None)
        expected, given = set(self.encoder.state_dict()), {k for k in encoder_state if not k.startswith("fc.")}
        if expected != given:
            raise ValueError(f"encoder state dict does not fit: missing {sorted(expected - given)[:5]}, unexpected {sorted(given - expected)[:5]}")
        self.encoder.load_state_dict({key: encoder_state[key] for key in given})
        self.bilinear = UnetDecoder(self.encoder.out_channels, DECODER_CHANNELS, n_blocks=5, interpolation_mode="bilinear")
        self.transposed = TransposedConvDecoder(self.encoder.out_channels)
        self.head_bilinear = nn.Conv2d(DECODER_CHANNELS[-1], 1, 3, padding=1)
        self.head_transposed = nn.Conv2d(DECODER_CHANNELS[-1], 1, 3, padding=1)

    def forward(self, x):
        features = self.encoder(x)
        return self.head_transposed(self.transposed(features)), self.head_bilinear(self.bilinear(features))


@torch.no_grad()
def predict(model, images, device, batch_size=64) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        first, second = model(as_input(images[start : start + batch_size], device))
        out.append(((torch.sigmoid(first) + torch.sigmoid(second)) / 2)[:, 0].cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


class CrossConsistencySegmentation:
    name = "segmentation-semi"
    tasks = ("segmentation",)
    description = "IDEAL: shared encoder, transposed-conv and bilinear decoders, cross-consistency on unlabelled images (plugin)"
    # used when a profile has no ``evaluation.segmentation-semi`` section
    default_config = {
        "smoke": {"datasets": ["phantom-siim"], "batch_size": 8, "max_steps": 4, "eval_every": 2, "learning_rate": 1e-3,
                  "weight_decay": 0.0, "crop_scale": [0.7, 1.0], "unlabelled_weight": 1.0, "threshold": 0.5},
        "quick": {"datasets": ["phantom-siim"], "batch_size": 16, "max_steps": 120, "eval_every": 40, "learning_rate": 1e-3,
                  "weight_decay": 0.0, "crop_scale": [0.7, 1.0], "unlabelled_weight": 1.0, "threshold": 0.5},
        "paper": {"datasets": ["siim"], "batch_size": 16, "max_steps": 10000, "eval_every": 500, "learning_rate": 1e-5,
                  "weight_decay": 0.0, "crop_scale": [0.7, 1.0], "unlabelled_weight": 1.0, "threshold": 0.5},
    }

    def prepare_shared(self, encoder_state, dataset, device):
        return None

    def run(self, encoder_state, dataset, label_fraction, seed, config, device, shared=None) -> ProtocolResult:
        if dataset.masks is None:
            raise ValueError(f"{dataset.name}: segmentation-semi needs masks (masks.npy)")
        started = time.perf_counter()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        labelled = dataset.label_fraction_positions(label_fraction, seed)
        unlabelled = np.setdiff1d(dataset.split_positions("train"), labelled)
        val, test = dataset.split_positions("val"), dataset.split_positions("test")
        model = TwoBranchUnet(encoder_state).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
        dice = smp.losses.DiceLoss("binary", from_logits=True)
        recipe = ViewRecipe(crop_scale=tuple(config["crop_scale"]), flip_probability=0.0)
        size, threshold = dataset.image_size, float(config["threshold"])
        pairs = torch.from_numpy(np.stack([dataset.images[labelled], dataset.masks[labelled] * 255], axis=1))
        plain = torch.from_numpy(np.asarray(dataset.images[unlabelled])) if len(unlabelled) else None
        batch = min(int(config["batch_size"]), len(labelled))
        val_masks = np.asarray(dataset.masks[val], dtype=bool)
        best = BestOnValidation("dice_per_image", config.get("patience"))
        model.train()
        for step in tqdm(range(1, int(config["max_steps"]) + 1), desc="segmentation-semi", unit="step", leave=False, disable=None):
            chosen = torch.randint(len(labelled), (batch,), generator=generator)
            views = geometric(pairs[chosen].to(device), recipe, size, generator if device.type == "cpu" else None)
            images, masks = views[:, :1], (views[:, 1:] > 0.5).float()
            first, second = model(to_model_input(images))
            loss = sum(F.binary_cross_entropy_with_logits(p, masks) + dice(p, masks) for p in (first, second))
            consistency = torch.zeros((), device=device)
            if plain is not None:
                chosen = torch.randint(len(plain), (int(config["batch_size"]),), generator=generator)
                images = geometric(plain[chosen].to(device), recipe, size, generator if device.type == "cpu" else None)
                first, second = model(to_model_input(images))
                # each branch is taught by the other's thresholded prediction; no gradient into the teacher
                target_first = (torch.sigmoid(second) > threshold).float().detach()
                target_second = (torch.sigmoid(first) > threshold).float().detach()
                consistency = F.binary_cross_entropy_with_logits(first, target_first) + F.binary_cross_entropy_with_logits(second, target_second)
                loss = loss + float(config["unlabelled_weight"]) * consistency
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % int(config["eval_every"]) == 0 or step == int(config["max_steps"]):
                score = float(dice_iou_per_image(predict(model, dataset.images[val], device) > threshold, val_masks)[0].mean())
                if best.update(score, step, model):
                    break
        trained = time.perf_counter()
        selection = best.restore(model, int(config["max_steps"]), step)
        predicted = predict(model, dataset.images[test], device) > threshold
        metrics, per_image = segmentation_metrics(predicted, np.asarray(dataset.masks[test], dtype=bool), surface_distance=True)
        metrics["num_unlabelled_images"] = int(len(unlabelled))
        return ProtocolResult(
            metrics=metrics, headline="dice_per_image", selection=selection, num_train_images=len(labelled),
            predictions={**per_image, "masks_packed": np.packbits(predicted.reshape(len(predicted), -1), axis=1),
                         "mask_shape": np.array(predicted.shape[1:]),
                         "image_ids": np.array(dataset.index["image_id"].iloc[test].tolist())},
            timing={"train_s": trained - started, "test_s": time.perf_counter() - trained},
        )
