"""Figures (matplotlib/seaborn): phantom samples, and the report's figures from run records.

Report figures read only the records and the predictions stored beside them (heatmaps,
overlay images and masks are stored by the protocols), never the datasets or the models.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrbench.records.io import atomic_write_bytes  # noqa: E402
from cxrbench.records.layout import ResultsFolder  # noqa: E402
from cxrbench.records.schema import PretrainRecord, RecordError, read_record  # noqa: E402
from cxrbench.datasets import DATASETS  # noqa: E402


def phantom_samples_figure(data_config: dict, out_path: Path, per_dataset: int = 6) -> Path:
    """A grid: one row per phantom dataset, its first images with labels and boxes drawn."""
    names = [name for name in sorted(DATASETS) if name.startswith("phantom-")]
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


# --- report figures, from run records and their stored predictions (PNG and PDF each)


def _save(figure, stem: Path) -> list[Path]:
    written = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, dpi=120, bbox_inches="tight")
        atomic_write_bytes(stem.with_suffix(f".{suffix}"), buffer.getvalue())
        written.append(stem.with_suffix(f".{suffix}"))
    plt.close(figure)
    return written


def efficiency_rows(records: pd.DataFrame, protocol: str, metric: str) -> pd.DataFrame:
    """The cells a label-efficiency curve plots: ablation variants (a switch off) belong to
    Table III; the full OPTiML (all switches on) stays."""
    is_variant = records["ablation"].map(lambda text: isinstance(text, str) and not all(json.loads(text).values()))
    return records[(records["protocol"] == protocol) & ~is_variant].dropna(subset=[metric])


def leaderboard_rows(table, cells_per_method: int) -> pd.DataFrame:
    """Per row of a rendered table: the mean of its cells (x 100) and the mean of their 95 % interval
    bounds, over the rows that have every column. Averaging the bounds is the interval of the mean if
    the cells were perfectly correlated: wider than the true one (cells on other datasets are
    independent), so a gap between two bands is a real difference and an overlap proves nothing."""
    rows = []
    for label in table.rows:
        cells = [table.cells.get((label, column)) for column in table.columns]
        if any(cell is None or cell.mean is None for cell in cells) or len(cells) != cells_per_method:
            continue
        lows = [cell.low for cell in cells]
        highs = [cell.high for cell in cells]
        rows.append({"label": label, "method": (table.methods or {}).get(label, label),
                     "mean": float(np.mean([cell.mean for cell in cells])),
                     "low": float(np.mean(lows)) if None not in lows else None,
                     "high": float(np.mean(highs)) if None not in highs else None,
                     "significant_cells": sum(cell.significant for cell in cells), "cells": len(cells),
                     "baseline": (table.methods or {}).get(label) == table.baseline})
    return pd.DataFrame(rows).sort_values("mean", ascending=False) if rows else pd.DataFrame()


def leaderboard_figure(boards: dict[str, pd.DataFrame], stem: Path) -> list[Path]:
    """One panel per protocol: each method's mean over the table's cells with its band, best on top,
    the baseline row in grey with a dashed line through its mean."""
    boards = {title: board for title, board in boards.items() if not board.empty}
    if not boards:
        return []
    height = max(len(board) for board in boards.values()) * 0.32 + 1.2
    figure, axes = plt.subplots(1, len(boards), figsize=(5.2 * len(boards), height), squeeze=False)
    for axis, (title, board) in zip(axes[0], boards.items()):
        board = board.iloc[::-1]  # best at the top
        positions = np.arange(len(board))
        colours = ["#888888" if baseline else "#2166ac" for baseline in board["baseline"]]
        has_band = board["low"].notna() & board["high"].notna()
        axis.hlines(positions[has_band.to_numpy()], board["low"][has_band], board["high"][has_band],
                    color=[c for c, b in zip(colours, has_band) if b], linewidth=4, alpha=0.35)
        axis.scatter(board["mean"], positions, color=colours, zorder=3, s=22)
        for value in board.loc[board["baseline"], "mean"]:
            axis.axvline(value, color="#888888", linestyle="--", linewidth=0.8)
        axis.set_yticks(positions, [f"{label}  ({int(sig)}/{int(n)} ↑↓)" for label, sig, n
                                    in zip(board["label"], board["significant_cells"], board["cells"])], fontsize=8)
        axis.set_xlabel("mean over the table's cells (x 100)", fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
        axis.set_title(title, fontsize=9, loc="left")
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle("Who is ahead? Mean of each method's cells; band: mean of the cells' 95 % intervals (conservative); "
                    "(k/n ↑↓): cells significantly different from the baseline (grey, dashed)", fontsize=8, y=1.0)
    figure.tight_layout()
    return _save(figure, stem)


def label_efficiency_figure(records: pd.DataFrame, protocol: str, metric: str, what: str, stem: Path) -> list[Path]:
    """Score against label fraction per method, one panel per dataset, all panels on one y-range.

    Point: the mean over seeds. Band: the 95 % interval; the mean of the cells' bootstrap bounds
    (the interval of one test split) where the records carry them, else seaborn's 95 % interval
    over seeds. A band, not error bars: with nine methods on three fractions, bars hide each other.
    """
    import seaborn as sns

    subset = efficiency_rows(records, protocol, metric)
    if subset.empty or subset["label_fraction"].nunique() < 2:
        return []
    subset = subset.assign(score=subset[metric].astype(float) * 100)
    has_intervals = {"interval_low", "interval_high"} <= set(subset.columns) and subset["interval_low"].notna().all()
    order = ("nih", "vindr", "rsna", "siim")  # the paper's column order
    datasets = sorted(subset["dataset"].unique(), key=lambda d: (order.index(d.removeprefix("phantom-")) if d.removeprefix("phantom-") in order else 9, d))
    methods = list(dict.fromkeys(subset.sort_values("method")["display_name"]))
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False, sharey=True,
                                layout="constrained")
    for axis, dataset in zip(axes[0], datasets):
        rows = subset[subset["dataset"] == dataset]
        if has_intervals:
            means = rows.groupby(["display_name", "label_fraction"])[["score", "interval_low", "interval_high"]].mean().reset_index()
            for name, curve in means.groupby("display_name"):
                axis.plot(curve["label_fraction"], curve["score"], marker="o", markersize=4, color=palette[name], label=name)
                axis.fill_between(curve["label_fraction"], 100 * curve["interval_low"], 100 * curve["interval_high"],
                                  color=palette[name], alpha=0.12, linewidth=0)
        else:
            sns.lineplot(data=rows, x="label_fraction", y="score", hue="display_name", palette=palette, marker="o",
                         errorbar=("ci", 95), err_style="band", ax=axis)
        axis.set_xscale("log")
        fractions = sorted(subset["label_fraction"].unique())
        axis.set_xticks(fractions, [f"{f:g}%" for f in fractions])
        axis.minorticks_off()
        axis.set_title(dataset, fontsize=9)
        axis.set_xlabel("labels used")
        axis.set_ylabel(what)
        axis.grid(alpha=0.3)
        if axis.get_legend() is not None:
            axis.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    band = "mean of the cells' 95 % bootstrap intervals" if has_intervals else "95 % interval over seeds"
    figure.suptitle(f"Label efficiency, {protocol} (points: mean over seeds; bands: {band})", fontsize=9)
    return _save(figure, stem)


def validation_curves_figure(records: pd.DataFrame, protocol: str, what: str, stem: Path) -> list[Path]:
    """Validation score per evaluation step of every fine-tune or segmentation cell, seed 0 (or the
    lowest seed run), one panel per (dataset, label fraction), one line per method."""
    subset = efficiency_rows(records, protocol, "headline_score")
    subset = subset[subset["validation_curve"].notna()] if "validation_curve" in subset else subset.iloc[0:0]
    if subset.empty:
        return []
    subset = subset[subset["seed"] == subset["seed"].min()]
    panels = sorted({(row.dataset, row.label_fraction) for row in subset.itertuples()})
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 2.8 * rows), squeeze=False, sharey=True,
                                layout="constrained")
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    colours = dict(zip(sorted(subset["display_name"].unique()), plt.get_cmap("tab10").colors))
    for axis, (dataset, fraction) in zip(axes.flat, panels):
        for row in subset[(subset["dataset"] == dataset) & (subset["label_fraction"] == fraction)].itertuples():
            curve = np.asarray(row.validation_curve, dtype=float)
            axis.plot(curve[:, 0], 100 * curve[:, 1], marker="o", markersize=2.5, color=colours[row.display_name],
                      label=row.display_name)
        axis.set_title(f"{dataset}, {_fraction_text(fraction)} labels", fontsize=8)
        axis.set_xlabel("step", fontsize=7)
        axis.set_ylabel(f"validation {what}", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    figure.suptitle(f"Validation curves, {protocol} (seed {int(subset['seed'].min())}; the selected step is the best)", fontsize=9)
    return _save(figure, stem)


def _predictions(results_dir: Path, record_file: str) -> dict:
    from cxrbench.reports.tables import ReportError

    path = Path(results_dir) / record_file
    record = read_record(path)
    stored_at = path.with_name(record.predictions_file or f"{path.stem}.predictions.npz")
    if not stored_at.is_file():
        raise ReportError(f"{path}: its predictions file {stored_at.name} is missing")
    with np.load(stored_at) as stored:
        return {key: stored[key] for key in stored.files}


def gradcam_figure(results_dir: Path, records: pd.DataFrame, stem: Path, max_images: int = 6) -> tuple[list[Path], pd.DataFrame]:
    """Figure 2: Grad-CAM of the fine-tuned models on boxed test images, methods x images; and the scores."""
    candidates = []
    for row in records[records["protocol"] == "finetune"].itertuples():
        scores = read_record(Path(results_dir) / row.record_file).metrics.get("localisation")
        if scores and scores.get("num_heatmaps"):
            candidates.append((row, scores))
    if not candidates:
        return [], pd.DataFrame()
    table = pd.DataFrame([{"method": row.display_name, "dataset": row.dataset, "labels": _fraction_text(row.label_fraction),
                           "seed": row.seed, "pointing game": scores["pointing_game"],
                           "heatmap mass inside box": scores["mass_inside_box"], "heatmaps": scores["num_heatmaps"],
                           "empty heatmaps": scores.get("empty_heatmaps"),
                           # records made before the target followed the resolution used layer4
                           "target layer": scores.get("target_layer", "layer4")}
                          for row, scores in candidates])
    # the figure: one dataset and fraction (the smallest fraction, as the paper's 1 %), seed 0 cells
    first = min(candidates, key=lambda c: (c[0].label_fraction, c[0].dataset, c[0].seed))[0]
    chosen = [row for row, _ in candidates if (row.dataset, row.label_fraction, row.seed) == (first.dataset, first.label_fraction, first.seed)]
    chosen.sort(key=lambda row: (not row.is_baseline, row.method))
    stored = {row.method: _predictions(results_dir, row.record_file) for row in chosen}
    common = None
    for arrays in stored.values():
        keys = list(zip(arrays["cam_image_ids"], arrays["cam_labels"]))
        common = keys if common is None else [key for key in common if key in set(keys)]
    common = (common or [])[:max_images]
    if not common:
        return [], table
    figure, axes = plt.subplots(len(chosen), len(common), figsize=(1.9 * len(common), 2.0 * len(chosen)), squeeze=False)
    for axes_row, row in zip(axes, chosen):
        arrays = stored[row.method]
        keys = list(zip(arrays["cam_image_ids"], arrays["cam_labels"]))
        for axis, key in zip(axes_row, common):
            k = keys.index(key)
            _draw_heatmap(axis, arrays["cam_images"][k], arrays["cams"][k], arrays["cam_boxes"][k])
            if axis is axes_row[0]:
                axis.set_ylabel(row.display_name, fontsize=8)
            if row is chosen[0]:
                axis.set_title(f"{key[0]}\n{key[1]}", fontsize=6)
    figure.suptitle(f"Grad-CAM, fine-tuned at {_fraction_text(first.label_fraction)} on {first.dataset} (boxes: ground truth)", fontsize=9)
    return _save(figure, stem), table


def _draw_heatmap(axis, image: np.ndarray, heatmap: np.ndarray, boxes: np.ndarray) -> None:
    """A radiograph with its Grad-CAM heatmap over it and the ground-truth boxes (NaN rows: none)."""
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    axis.imshow(heatmap.astype(np.float32), cmap="jet", alpha=0.4, vmin=0, vmax=1)
    for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
        if np.isfinite(x):
            axis.add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", linewidth=1.0))
    axis.set_xticks([]), axis.set_yticks([])


def _fraction_text(fraction: float) -> str:
    return "All" if fraction == 100 else f"{fraction:g}%"


def segmentation_figures(results_dir: Path, records: pd.DataFrame, stem: Path, max_images: int = 5) -> list[Path]:
    """Figure 3: overlays (truth green, prediction red) per method, and Dice bars per method and fraction."""
    import seaborn as sns

    subset = records[(records["protocol"] == "segmentation")].dropna(subset=["dice_per_image"])
    if subset.empty:
        return []
    written = []
    figure, axis = plt.subplots(figsize=(max(4.0, 0.9 * subset["method"].nunique() + 2), 3.2))
    order = [_fraction_text(f) for f in sorted(subset["label_fraction"].unique())]
    sns.barplot(data=subset.assign(dice=subset["dice_per_image"] * 100, labels=subset["label_fraction"].map(_fraction_text)),
                x="display_name", y="dice", hue="labels", hue_order=order, errorbar="sd", ax=axis)
    axis.set_xlabel("")
    axis.set_ylabel("Dice x 100 (per image)")
    axis.tick_params(axis="x", rotation=30)
    axis.legend(title="labels", fontsize=7)
    written += _save(figure, stem.with_name(stem.name + "_dice"))
    largest = subset[(subset["label_fraction"] == subset["label_fraction"].max()) & (subset["seed"] == subset["seed"].min())]
    largest = largest.sort_values(["is_baseline", "method"], ascending=[False, True])
    stored = [(row, _predictions(results_dir, row.record_file)) for row in largest.itertuples()]
    stored = [(row, arrays) for row, arrays in stored if "overlay_images" in arrays and len(arrays["overlay_images"])]
    if not stored:
        return written
    count = min(max_images, min(len(arrays["overlay_images"]) for _, arrays in stored))
    figure, axes = plt.subplots(len(stored), count, figsize=(1.9 * count, 2.0 * len(stored)), squeeze=False)
    for axes_row, (row, arrays) in zip(axes, stored):
        shape = tuple(arrays["mask_shape"])
        predicted = np.unpackbits(arrays["masks_packed"], axis=1)[:, : shape[0] * shape[1]].reshape(-1, *shape)
        for axis, k in zip(axes_row, range(count)):
            position = int(arrays["overlay_positions"][k])
            axis.imshow(arrays["overlay_images"][k], cmap="gray", vmin=0, vmax=255)
            axis.imshow(np.ma.masked_where(predicted[position] == 0, predicted[position]), cmap="autumn", alpha=0.45)
            axis.contour(arrays["overlay_truth"][k], levels=[0.5], colors="lime", linewidths=0.8)
            axis.set_title(f"Dice {arrays['dice'][position]:.2f}", fontsize=7)
            axis.set_xticks([]), axis.set_yticks([])
            if k == 0:
                axis.set_ylabel(row.display_name, fontsize=8)
    figure.suptitle(f"Segmentation at {_fraction_text(largest['label_fraction'].iloc[0])} labels: truth (green contour), prediction (red)", fontsize=9)
    return written + _save(figure, stem.with_name(stem.name + "_overlays"))


def _curve(record: PretrainRecord) -> tuple[pd.DataFrame, str]:
    """A pretraining record's curve: per step where stored (``step_history``), else per epoch."""
    if record.step_history:
        return pd.DataFrame(record.step_history), "step"
    return pd.DataFrame(record.history), "epoch"


def _pretrain_records(results_dir: Path) -> list[PretrainRecord]:
    """The readable pretraining records (an unreadable one draws no curve)."""
    records = []
    for path in ResultsFolder(results_dir).pretrain_records():
        try:
            records.append(read_record(path, PretrainRecord))
        except RecordError:
            continue
    return records


def _plot_smoothed(axis, x: pd.Series, y: pd.Series, colour=None, label=None) -> None:
    """The raw values faint, an exponential moving average over them solid (a span of a tenth of
    the points): per-step losses are noisy enough to hide their trend."""
    if len(y) > 12:
        axis.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
        axis.plot(x, y.ewm(span=max(3, len(y) // 10)).mean(), color=colour, linewidth=1.4, label=label)
    else:
        axis.plot(x, y, color=colour, marker="o", markersize=3, label=label)


def pretraining_figures(results_dir: Path, stem: Path) -> list[Path]:
    """Pretraining loss for every method (per step where recorded, smoothed, raw values faint),
    and every other value the methods log."""
    records = [record for record in _pretrain_records(results_dir) if record.history]
    if not records:
        return []
    return _loss_figure(records, stem.with_name(stem.name + "_loss")) + _logs_figure(records, stem.with_name(stem.name + "_logs"))


def _loss_figure(records: list[PretrainRecord], stem: Path) -> list[Path]:
    columns = min(4, len(records))
    rows = int(np.ceil(len(records) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.5 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(records):]:
        axis.axis("off")
    for axis, record in zip(axes.flat, records):
        history, unit = _curve(record)
        _plot_smoothed(axis, history[unit], history["loss"])
        axis.set_title(f"{record.method} ({record.pretrain_dataset})", fontsize=8)
        axis.set_xlabel(unit, fontsize=7)
        axis.set_ylabel("loss", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    figure.suptitle("Pretraining loss (faint: as recorded; solid: moving average)", fontsize=9)
    return _save(figure, stem)


def _logs_figure(records: list[PretrainRecord], stem: Path) -> list[Path]:
    """Every value a method logs beyond its loss (OPTiML's transport diagnostics, BYOL's target
    momentum, a plugin's accuracy ...): one panel per value, a line per method that logs it."""
    keys = sorted({key for record in records for key in _curve(record)[0].columns} - _NOT_METHOD_LOGS)
    if not keys:
        return []
    columns = min(5, len(keys))
    rows = int(np.ceil(len(keys) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.6 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(keys):]:
        axis.axis("off")
    colours = dict(zip([r.method for r in records], plt.get_cmap("tab10").colors))
    for axis, key in zip(axes.flat, keys):
        for record in records:
            history, unit = _curve(record)
            if key in history:
                _plot_smoothed(axis, history[unit], history[key], colours[record.method], record.method)
        axis.set_title(key, fontsize=8)
        axis.set_xlabel(unit, fontsize=7)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    legend = {}  # every method once, whichever panels it appears in
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=7, frameon=False)
    figure.suptitle("What the methods log beyond their loss (OPTiML: transport cost, plan and marginal entropies, "
                    "Sinkhorn iterations, feature std)", fontsize=9)
    return _save(figure, stem)


_NOT_METHOD_LOGS = {"step", "epoch", "loss", "lr", "images_per_second"}  # the loop's own columns
