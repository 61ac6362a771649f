"""Test metrics: AUROC per class and their mean; Dice, IoU and HD95 for segmentation."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc_per_class(targets: np.ndarray, scores: np.ndarray, label_columns: list[str]) -> dict:
    """AUROC of every label; a label whose split has only one class gets ``None``.

    The mean is over the labels where AUROC is defined (the same rule NIH benchmarks use
    for rare labels absent from a small test split); the undefined ones are listed.
    """
    per_class: dict[str, float | None] = {}
    for column, name in enumerate(label_columns):
        y = targets[:, column]
        if y.min() == y.max():
            per_class[name] = None
        else:
            per_class[name] = float(roc_auc_score(y, scores[:, column]))
    defined = [value for value in per_class.values() if value is not None]
    return {
        "mean_auroc": float(np.mean(defined)) if defined else None,
        "per_class_auroc": per_class,
        "undefined_classes": [name for name, value in per_class.items() if value is None],
    }


def dice_iou_per_image(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks (N, H, W); both empty scores 1, one empty 0."""
    predicted = np.asarray(predicted, dtype=bool).reshape(len(predicted), -1)
    truth = np.asarray(truth, dtype=bool).reshape(len(truth), -1)
    intersection = (predicted & truth).sum(axis=1).astype(np.float64)
    total = predicted.sum(axis=1) + truth.sum(axis=1).astype(np.float64)
    union = total - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * intersection / total, 1.0)
        iou = np.where(union > 0, intersection / union, 1.0)
    return dice, iou


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, surface_distance: bool = False,
                         chunk: int = 64) -> tuple[dict, dict[str, np.ndarray]]:
    """Dice, IoU and 95 % Hausdorff distance of binary masks (N, H, W); (summary, per-image values).

    * ``dice_per_image`` / ``iou_per_image``: mean over images; an image whose mask and
      prediction are both empty scores 1 (the SIIM-ACR challenge rule), one of the two
      empty scores 0.
    * ``dice_global`` / ``iou_global``: every pixel of the split pooled (dominated by large
      pneumothoraces; no empty-image rule needed).
    * ``dice_positive_images``: per-image Dice over the images whose mask is not empty.
    * ``hd95``: in pixels, mean over images where both masks are non-empty (undefined
      otherwise); how many images that was is recorded.
    * ``assd`` (with ``surface_distance=True``): average symmetric surface distance in pixels,
      over the same images as HD95.

    Surface distances come from MONAI (the field's reference code for them), a chunk of
    images at a time so that memory stays bounded on a whole SIIM test split.
    """
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    dice, iou = dice_iou_per_image(predicted, truth)
    predicted_any = predicted.reshape(len(predicted), -1).any(axis=1)
    positive = truth.reshape(len(truth), -1).any(axis=1)
    both = np.flatnonzero(predicted_any & positive)
    hd95, assd = np.full(len(predicted), np.nan), np.full(len(predicted), np.nan)
    with warnings.catch_warnings():  # MONAI warns about empty masks, which are excluded anyway
        warnings.simplefilter("ignore")
        for start in range(0, len(both), chunk):
            rows = both[start : start + chunk]
            pred = torch.from_numpy(predicted[rows]).unsqueeze(1).float()
            true = torch.from_numpy(truth[rows]).unsqueeze(1).float()
            hd95[rows] = compute_hausdorff_distance(pred, true, include_background=True, percentile=95)[:, 0].numpy()
            if surface_distance:
                assd[rows] = compute_average_surface_distance(pred, true, include_background=True, symmetric=True)[:, 0].numpy()
    intersection = float((predicted & truth).sum())
    total = float(predicted.sum()) + float(truth.sum())
    union = total - intersection
    defined_hd = np.isfinite(hd95)
    summary = {
        "dice_per_image": float(dice.mean()),
        "dice_global": 2 * intersection / total if total > 0 else 1.0,
        "dice_positive_images": float(dice[positive].mean()) if positive.any() else None,
        "iou_per_image": float(iou.mean()),
        "iou_global": intersection / union if union > 0 else 1.0,
        "hd95": float(hd95[defined_hd].mean()) if defined_hd.any() else None,
        "hd95_images": int(defined_hd.sum()),
        "num_images": int(len(predicted)),
        "num_positive_images": int(positive.sum()),
    }
    per_image = {"dice": dice, "iou": iou, "hd95": hd95}
    if surface_distance:
        summary["assd"] = float(assd[defined_hd].mean()) if defined_hd.any() else None
        per_image["assd"] = assd
    return summary, per_image
