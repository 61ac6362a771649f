"""Paper-style tables (Table I: fine-tune, Table II: frozen, Table III: OPTiML ablation) from run records.

Layout, as in the OPTiML paper: rows are methods (supervised baselines first), columns are
dataset x label fraction, cells are AUROC x 100 with the delta to the baseline row in
parentheses and an arrow, the best of each column in bold, and ``mean ± std`` where a cell
has several seeds. The baseline row is Sup.2 when present, else Sup.1 (the caption says
which). Reports only read records; they never re-train.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from cxrbench.benchmark.comparisons import BASELINE_PREFERENCE
from cxrbench.benchmark.records import atomic_write_bytes

# protocol -> (file stem, title, metric column, what the cells are)
TABLES = {
    "finetune": ("table1_finetune", "Table I: fine-tuning (encoder and linear head trained)", "mean_auroc", "Mean AUROC x 100"),
    "frozen": ("table2_frozen", "Table II: linear evaluation (frozen encoder)", "mean_auroc", "Mean AUROC x 100"),
    "segmentation": ("segmentation", "Segmentation transfer (Figure 3): ResNet-18 U-Net", "dice_per_image",
                     "Dice x 100 per image (an empty prediction on an empty mask scores 100)"),
}


class ReportError(ValueError):
    pass


def load_records(results_dir: Path) -> pd.DataFrame:
    """One row per cell record found under ``results_dir/cells``."""
    cells_dir = Path(results_dir) / "cells"
    paths = sorted(cells_dir.glob("*.json"))
    if not paths:
        raise ReportError(f"{results_dir}: no run records (expected {cells_dir}/*.json from `bench run`)")
    rows = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
            cell = record["cell"]
            rows.append({
                "method": cell["method"],
                "display_name": record.get("method_display_name", cell["method"]),
                "is_baseline": bool(record.get("method_is_baseline", False)),
                "dataset": cell["dataset"],
                "protocol": cell["protocol"],
                "label_fraction": float(cell["label_fraction"]),
                "seed": int(cell["seed"]),
                "mean_auroc": record["metrics"].get("mean_auroc"),
                "dice_per_image": record["metrics"].get("dice_per_image"),
                "ablation": json.dumps(record.get("method_ablation")) if record.get("method_ablation") else None,
            })
        except (KeyError, json.JSONDecodeError) as error:
            raise ReportError(f"{path}: not a cxrbench cell record ({error})") from error
    return pd.DataFrame(rows)


PAPER_DATASET_ORDER = ("nih", "vindr", "rsna", "siim")  # the column order of the paper's tables


def _column_order(column: tuple[str, float]):
    dataset, fraction = column
    base = dataset.removeprefix("phantom-")
    rank = PAPER_DATASET_ORDER.index(base) if base in PAPER_DATASET_ORDER else len(PAPER_DATASET_ORDER)
    return rank, dataset, fraction


def _fraction_label(fraction: float) -> str:
    return "All" if fraction == 100 else f"{fraction:g}%"


def build_table(records: pd.DataFrame, protocol: str, metric: str = "mean_auroc") -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """(rendered cells, numeric summary, baseline method) for one protocol; values are ``metric`` x 100."""
    # ablation variants (a switch turned off) belong to Table III, not to the method comparison
    is_variant = records["ablation"].map(lambda text: isinstance(text, str) and not all(json.loads(text).values()))
    subset = records[(records["protocol"] == protocol) & ~is_variant].dropna(subset=[metric])
    if subset.empty:
        return pd.DataFrame(), pd.DataFrame(), None
    summary = (
        subset.assign(score=subset[metric] * 100)
        .groupby(["method", "display_name", "is_baseline", "dataset", "label_fraction"])["score"]
        .agg(mean="mean", std="std", seeds="count")
        .reset_index()
    )
    methods = summary.drop_duplicates("method").sort_values(["is_baseline", "method"], ascending=[False, True])
    baseline = next((m for m in BASELINE_PREFERENCE if m in set(methods["method"])), None)
    columns = sorted({(d, f) for d, f in zip(summary["dataset"], summary["label_fraction"])}, key=_column_order)
    lookup = {(r.method, r.dataset, r.label_fraction): r for r in summary.itertuples()}
    best = {col: max(r.mean for key, r in lookup.items() if key[1:] == col) for col in columns}
    rendered = {}
    for method in methods.itertuples():
        row = {}
        for column in columns:
            entry = lookup.get((method.method,) + column)
            if entry is None:
                row[column] = "–"
                continue
            text = f"{entry.mean:.1f}"
            if entry.seeds > 1:
                text += f" ± {entry.std:.1f}"
            reference = lookup.get((baseline,) + column) if baseline else None
            if reference is not None and method.method != baseline:
                delta = entry.mean - reference.mean
                arrow = "↑" if delta > 0 else "↓" if delta < 0 else ""
                text += f" ({delta:+.1f}){arrow}"
            if np.isclose(entry.mean, best[column]) and len(methods) > 1:
                text = f"**{text}**"
            row[column] = text
        label = method.display_name + (" (bs)" if method.method == baseline else "")
        rendered[label] = row
    table = pd.DataFrame.from_dict(rendered, orient="index")
    table.columns = pd.MultiIndex.from_tuples([(d, _fraction_label(f)) for d, f in columns], names=["dataset", "labels"])
    table.index.name = "Method"
    return table, summary, baseline


def render_markdown(table: pd.DataFrame, caption: str) -> str:
    headers = ["Method"] + [f"{dataset} {labels}" for dataset, labels in table.columns]
    rows = [[index] + list(values) for index, values in zip(table.index, table.to_numpy())]
    return f"{caption}\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", stralign="center") + "\n"


ABLATION_DATASETS = ("phantom-nih", "nih")  # Table III is on the NIH(-like) dataset
ABLATION_FRACTIONS = (1.0, 10.0)


def build_ablation_table(records: pd.DataFrame) -> pd.DataFrame:
    """Table III: OPTiML variants x (1 %, 10 %) fine-tune mean AUROC on the NIH-like dataset."""
    subset = records[
        records["ablation"].notna()
        & (records["protocol"] == "finetune")
        & records["dataset"].isin(ABLATION_DATASETS)
        & records["label_fraction"].isin(ABLATION_FRACTIONS)
    ].dropna(subset=["mean_auroc"])
    if subset.empty:
        return pd.DataFrame()
    summary = subset.groupby(["method", "display_name", "ablation", "label_fraction"])["mean_auroc"].agg(["mean", "std", "count"]).reset_index()
    best = summary.groupby("label_fraction")["mean"].max()
    rows = []
    # the paper's order: the full method last
    for (method, display, switches), group in sorted(summary.groupby(["method", "display_name", "ablation"]),
                                                     key=lambda item: (sum(json.loads(item[0][2]).values()), item[0][0])):
        switches = json.loads(switches)
        row = {"Method": display, **{name: "✓" if on else "✗" for name, on in switches.items()}}
        for fraction in ABLATION_FRACTIONS:
            entry = group[group["label_fraction"] == fraction]
            if entry.empty:
                row[_fraction_label(fraction)] = "–"
                continue
            entry = entry.iloc[0]
            text = f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if entry["count"] > 1 else "")
            row[_fraction_label(fraction)] = f"**{text}**" if np.isclose(entry["mean"], best[fraction]) else text
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(results_dir: Path, out_dir: Path) -> list[Path]:
    """Write Table I and Table II (Markdown and CSV) for every protocol that has records."""
    records = load_records(results_dir)
    out_dir = Path(out_dir)
    written = []
    for protocol, (stem, title, metric, what) in TABLES.items():
        table, summary, baseline = build_table(records, protocol, metric)
        if table.empty:
            continue
        baseline_name = {"sup2": "Sup.2 (ImageNet init)", "sup1": "Sup.1 (random init)"}.get(baseline, baseline)
        caption = (
            f"{title}. {what} on the test split; in parentheses the difference to the "
            f"baseline row (bs), {baseline_name}" + ("" if baseline == "sup2" else ", because Sup.2 has no records")
            + "; best per column in bold; mean ± std over seeds where there are several."
            if baseline else f"{title}. {what} on the test split; no supervised baseline row in these records."
        )
        markdown = render_markdown(table, caption)
        atomic_write_bytes(out_dir / f"{stem}.md", markdown.encode())
        atomic_write_bytes(out_dir / f"{stem}.csv", summary.to_csv(index=False).encode())
        written += [out_dir / f"{stem}.md", out_dir / f"{stem}.csv"]
    ablation = build_ablation_table(records)
    if not ablation.empty:
        caption = ("Table III: OPTiML ablation, fine-tuning on the NIH(-like) dataset, mean AUROC on the test split "
                   "(var+cov: the variance/covariance regularisers; CV-SIM: learned marginals instead of uniform); "
                   "best per column in bold.")
        markdown = f"{caption}\n\n" + tabulate(ablation.values.tolist(), headers=list(ablation.columns), tablefmt="pipe", stralign="center") + "\n"
        atomic_write_bytes(out_dir / "table3_ablation.md", markdown.encode())
        atomic_write_bytes(out_dir / "table3_ablation.csv", ablation.to_csv(index=False).encode())
        written += [out_dir / "table3_ablation.md", out_dir / "table3_ablation.csv"]
    if not written:
        raise ReportError(f"{results_dir}: records hold no finetune, frozen or segmentation results with a defined score")
    return written
