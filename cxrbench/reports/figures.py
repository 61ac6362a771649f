"""Figures (matplotlib): sample phantom images with their labels and finding boxes."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cxrbench.benchmark.records import atomic_write_bytes  # noqa: E402
from cxrbench.datasets import DATASETS  # noqa: E402


def phantom_samples_figure(data_config: dict, out_path: Path, per_dataset: int = 6) -> Path:
    """A grid: one row per phantom dataset, its first images with labels and boxes drawn."""
    names = [name for name in sorted(DATASETS.module_dict) if name.startswith("phantom-")]
    figure, axes = plt.subplots(len(names), per_dataset, figsize=(2.1 * per_dataset, 2.35 * len(names)))
    for row, name in zip(axes, names):
        dataset = DATASETS.get(name)().load(data_config)
        boxes = pd.read_csv(dataset.root / "boxes.csv")
        index = dataset.index
        # prefer images with findings so the figure shows what the labels look like
        with_findings = index[index["findings"] != "No Finding"].index.tolist()
        chosen = (with_findings[: per_dataset - 1] + index[index["findings"] == "No Finding"].index.tolist()[:1])[:per_dataset]
        for axis, position in zip(row, chosen):
            image_id = index.at[position, "image_id"]
            axis.imshow(dataset.images[position], cmap="gray", vmin=0, vmax=255)
            if dataset.masks is not None and dataset.masks[position].any():
                axis.contour(dataset.masks[position], levels=[0.5], colors="cyan", linewidths=0.8)
            for box in boxes[boxes["image_id"] == image_id].itertuples():
                axis.add_patch(patches.Rectangle((box.x - 0.5, box.y - 0.5), box.w, box.h, fill=False, edgecolor="red", linewidth=0.9))
            positives = [column for column in dataset.label_columns if index.at[position, column]]
            axis.set_title(f"{image_id}\n{', '.join(positives) or 'no finding'}", fontsize=7)
            axis.axis("off")
        row[0].text(-0.08, 0.5, name, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    figure.suptitle("cxrbench phantom (procedural, NOT chest X-ray data): labels, finding boxes (red), pneumothorax masks (cyan)", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(out_path).suffix.lstrip(".") or "png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(Path(out_path), buffer.getvalue())
    return Path(out_path)
