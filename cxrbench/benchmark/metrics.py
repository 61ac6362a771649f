"""Classification metrics: AUROC per class and their mean."""

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
