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


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, surface_distance: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
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

    MONAI's metric functions compute the per-image values (the field's reference code for
    surface distances).
    """
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

    pred = torch.from_numpy(np.asarray(predicted, dtype=bool)).unsqueeze(1).float()
    true = torch.from_numpy(np.asarray(truth, dtype=bool)).unsqueeze(1).float()
    dice = compute_dice(pred, true, ignore_empty=False)[:, 0].numpy().astype(np.float64)
    iou = compute_iou(pred, true, ignore_empty=False)[:, 0].numpy().astype(np.float64)
    both = (pred.flatten(1).sum(1) > 0) & (true.flatten(1).sum(1) > 0)
    hd95, assd = np.full(len(pred), np.nan), np.full(len(pred), np.nan)
    if both.any():
        with warnings.catch_warnings():  # MONAI warns about the empty masks we excluded anyway
            warnings.simplefilter("ignore")
            hd95[both.numpy()] = compute_hausdorff_distance(pred[both], true[both], include_background=True, percentile=95)[:, 0].numpy()
            if surface_distance:
                assd[both.numpy()] = compute_average_surface_distance(pred[both], true[both], include_background=True, symmetric=True)[:, 0].numpy()
    intersection = float((pred * true).sum())
    total = float(pred.sum() + true.sum())
    union = total - intersection
    positive = true.flatten(1).sum(1).numpy() > 0
    defined_hd = np.isfinite(hd95)
    summary = {
        "dice_per_image": float(dice.mean()),
        "dice_global": 2 * intersection / total if total > 0 else 1.0,
        "dice_positive_images": float(dice[positive].mean()) if positive.any() else None,
        "iou_per_image": float(iou.mean()),
        "iou_global": intersection / union if union > 0 else 1.0,
        "hd95": float(hd95[defined_hd].mean()) if defined_hd.any() else None,
        "hd95_images": int(defined_hd.sum()),
        "num_images": int(len(pred)),
        "num_positive_images": int(positive.sum()),
    }
    per_image = {"dice": dice, "iou": iou, "hd95": hd95}
    if surface_distance:
        summary["assd"] = float(assd[defined_hd].mean()) if defined_hd.any() else None
        per_image["assd"] = assd
    return summary, per_image
