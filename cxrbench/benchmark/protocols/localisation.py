"""Grad-CAM heatmaps of a fine-tuned classifier on the boxed test images, and how well they localise.

The paper's Figure 2 shows heatmaps of the 1 % fine-tuned models with the ground-truth boxes
drawn, judged by eye. We compute them with the ``grad-cam`` package (Grad-CAM on the last
residual block whose map is at least 7 x 7, target = the box's label) for every boxed test
image, store them with the cell's predictions, and score them with two numbers the paper lacks:

* pointing game: share of (image, box) pairs whose heatmap maximum falls inside the box;
* mass inside: mean share of the heatmap's total mass that lies inside the box;
* empty heatmaps: how many were all zero (no positive evidence at the target block); they
  count as misses.

The target block: Grad-CAM is usually taken at ResNet's last block (``layer4``), whose map is
7 x 7 at the paper's 224 px. At 64 px that map is 2 x 2: four numbers, upsampled, cannot point
at a finding of a few pixels, and with ReLU on a 2 x 2 map most heatmaps came out all zero (25-32
of 32 in the quick report). So the target is the deepest block with at least 7 x 7 positions:
``layer4`` from 224 px, ``layer3`` from 112 px, ``layer2`` at 64 px (8 x 8); the record says which.

A heatmap is computed once per (image, label); an image with two boxes of one label is a hit
when its maximum falls in either.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrbench.datasets.prepared import PreparedDataset


def _box_mask(boxes, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(size, int(np.ceil(x + w))), min(size, int(np.ceil(y + h)))
        mask[y0:y1, x0:x1] = True
    return mask


# each ResNet stage's stride: its map is image_size / stride on a side
STAGE_STRIDES = {"layer4": 32, "layer3": 16, "layer2": 8, "layer1": 4}


def gradcam_layer_name(image_size: int, min_side: int = 7) -> str:
    """The deepest ResNet stage whose map has at least ``min_side`` positions on a side."""
    for name, stride in STAGE_STRIDES.items():
        if image_size // stride >= min_side:
            return name
    return "layer1"


def localisation_scores(cams: np.ndarray, box_masks: np.ndarray) -> dict:
    """Pointing-game hit rate and mean heatmap mass inside the boxes, over (image, label) pairs."""
    if len(cams) == 0:
        return {"pointing_game": None, "mass_inside_box": None, "num_heatmaps": 0, "empty_heatmaps": 0}
    flat = cams.reshape(len(cams), -1)
    # an all-zero heatmap (Grad-CAM's ReLU removed everything) points nowhere: a miss, counted
    empty = flat.max(axis=1) <= 0
    hits = box_masks.reshape(len(cams), -1)[np.arange(len(cams)), flat.argmax(axis=1)] & ~empty
    total = flat.sum(axis=1)
    inside = (flat * box_masks.reshape(len(cams), -1)).sum(axis=1)
    mass = np.where(total > 0, inside / np.maximum(total, 1e-12), 0.0)
    return {"pointing_game": float(hits.mean()), "mass_inside_box": float(mass.mean()), "num_heatmaps": int(len(cams)),
            "empty_heatmaps": int(empty.sum())}


def gradcam_on_boxes(model: nn.Module, target_layer: nn.Module, dataset: PreparedDataset, test: np.ndarray,
                     model_input, device: torch.device, max_heatmaps: int, batch_size: int = 16) -> tuple[dict, dict]:
    """(scores, arrays to store) for up to ``max_heatmaps`` boxed (test image, label) pairs."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if dataset.boxes is None or max_heatmaps <= 0:
        return {"pointing_game": None, "mass_inside_box": None, "num_heatmaps": 0}, {}
    test_ids = dataset.index["image_id"].iloc[test]
    position_of = dict(zip(test_ids, test))
    boxes = dataset.boxes[dataset.boxes["image_id"].isin(position_of)].copy()
    boxes["label"] = boxes["finding"].map(dataset.finding_labels)
    boxes = boxes[boxes["label"].isin(dataset.label_columns)]
    pairs = list(boxes.groupby(["image_id", "label"], sort=True))[:max_heatmaps]
    if not pairs:
        return {"pointing_game": None, "mass_inside_box": None, "num_heatmaps": 0}, {}
    size = dataset.image_size
    was_training = model.training
    model.eval()
    cams = []
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            images = np.stack([dataset.images[position_of[image_id]] for (image_id, _), _ in chunk])
            targets = [ClassifierOutputTarget(dataset.label_columns.index(label)) for (_, label), _ in chunk]
            cams.append(cam(input_tensor=model_input(images, device), targets=targets).astype(np.float32))
    model.train(was_training)
    cams = np.concatenate(cams)
    box_masks = np.stack([_box_mask(group[["x", "y", "w", "h"]].to_numpy(), size) for _, group in pairs])
    arrays = {
        "cam_image_ids": np.array([image_id for (image_id, _), _ in pairs]),
        "cam_labels": np.array([label for (_, label), _ in pairs]),
        "cams": cams.astype(np.float16),
        # every box of the pair (up to 4, NaN-padded), for drawing
        "cam_boxes": np.stack([np.pad(group[["x", "y", "w", "h"]].to_numpy(dtype=np.float32)[:4],
                                      ((0, 4 - min(4, len(group))), (0, 0)), constant_values=np.nan) for _, group in pairs]),
    }
    return localisation_scores(cams, box_masks), arrays
