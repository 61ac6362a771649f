"""Paper-style tables from run records and from the paper's published numbers.

Layout, as in the OPTiML paper: rows are methods (supervised baselines first), columns are
dataset x label fraction, cells are the score x 100 with the delta to the baseline row in
parentheses and an arrow, the best of each column in bold, and ``mean ± std`` where a cell
has several seeds. The baseline row is Sup.2 when present, else Sup.1 (the caption says
which), or the method given with ``--baseline``. Deltas are always recomputed from the
numbers: for the paper's tables, every printed delta that disagrees with the paper's own
numbers is listed in a footnote. Tables are written as Markdown, LaTeX (booktabs) and CSV.
Reports only read records; they never re-train.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from cxrbench.benchmark.comparisons import BASELINE_PREFERENCE

# protocol -> (file stem, title, metric, what the cells are)
TABLES = {
    "finetune": ("table1_finetune", "Table I: fine-tuning (encoder and linear head trained)", "mean_auroc", "Mean AUROC x 100"),
    "frozen": ("table2_frozen", "Table II: linear evaluation (frozen encoder)", "mean_auroc", "Mean AUROC x 100"),
    "segmentation": ("segmentation", "Segmentation transfer (Figure 3): ResNet-18 U-Net", "dice_per_image",
                     "Dice x 100 per image (an empty prediction on an empty mask scores 100)"),
}
PAPER_DATASET_ORDER = ("nih", "vindr", "rsna", "siim")  # the column order of the paper's tables
DATASET_NAMES = {"nih": "NIH", "vindr": "VinDr-CXR", "rsna": "RSNA", "siim": "SIIM-ACR"}
BASELINE_NAMES = {"sup2": "Sup.2 (ImageNet init)", "sup1": "Sup.1 (random init)"}


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
                "headline_metric": record.get("headline_metric", "mean_auroc"),
                "headline_score": record["metrics"].get(record.get("headline_metric", "mean_auroc")),
                "ablation": json.dumps(record.get("method_ablation")) if record.get("method_ablation") else None,
                "record_file": str(path.relative_to(Path(results_dir))),
                "git_commit": (record.get("environment") or {}).get("git_commit"),
                "config_sha1": hashlib.sha1(json.dumps(record.get("config"), sort_keys=True, default=str).encode()).hexdigest()[:12],
                "created": record.get("created"),
            })
        except (KeyError, json.JSONDecodeError, AttributeError) as error:
            raise ReportError(f"{path}: not a cxrbench cell record ({error})") from error
    return pd.DataFrame(rows)


def base_dataset(dataset: str) -> str:
    return dataset.removeprefix("phantom-")


def _column_order(column: tuple[str, float]):
    dataset, fraction = column
    base = base_dataset(dataset)
    rank = PAPER_DATASET_ORDER.index(base) if base in PAPER_DATASET_ORDER else len(PAPER_DATASET_ORDER)
    return rank, dataset, fraction


def _fraction_label(fraction: float) -> str:
    return "All" if fraction == 100 else f"{fraction:g}%"


# --- the table model: summary rows -> cells -> text in each format


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None
    seeds: int = 0
    delta: float | None = None  # to the baseline row; None in the baseline row itself
    best: bool = False

    def text(self, latex: bool = False) -> str:
        if self.mean is None:
            return "–"
        text = f"{self.mean:.1f}"
        if self.seeds > 1 and self.std is not None and np.isfinite(self.std):
            text += (" $\\pm$ " if latex else " ± ") + f"{self.std:.1f}"
        if self.delta is not None:
            shown = round(self.delta, 1) + 0.0  # the arrow follows the printed value (+ 0.0: no "-0.0")
            arrow = "↑" if shown > 0 else "↓" if shown < 0 else ""
            if latex:
                arrow = {"↑": "$\\uparrow$", "↓": "$\\downarrow$"}.get(arrow, "")
            text += f" ({shown:+.1f}){arrow}"
        if self.best:
            text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
        return text


@dataclass
class Table:
    rows: list[str]  # row labels, in order
    columns: list[tuple[str, float]]  # (dataset, fraction)
    cells: dict[tuple[str, tuple[str, float]], Cell]
    baseline: str | None
    summary: pd.DataFrame

    def frame(self, latex: bool = False) -> pd.DataFrame:
        data = {row: [self.cells.get((row, column), Cell()).text(latex) for column in self.columns] for row in self.rows}
        frame = pd.DataFrame.from_dict(data, orient="index")
        frame.columns = pd.MultiIndex.from_tuples([(d, _fraction_label(f)) for d, f in self.columns], names=["dataset", "labels"])
        frame.index.name = "Method"
        return frame

    @property
    def empty(self) -> bool:
        return not self.rows


def summarise(records: pd.DataFrame, protocol: str, metric: str = "mean_auroc") -> pd.DataFrame:
    """Mean, std and count over seeds of ``metric`` x 100 per (method, dataset, fraction)."""
    # ablation variants (a switch turned off) belong to Table III, not to the method comparison
    is_variant = records["ablation"].map(lambda text: isinstance(text, str) and not all(json.loads(text).values()))
    subset = records[(records["protocol"] == protocol) & ~is_variant].dropna(subset=[metric])
    if subset.empty:
        return pd.DataFrame(columns=["method", "display_name", "is_baseline", "dataset", "label_fraction", "mean", "std", "seeds"])
    return (
        subset.assign(score=subset[metric].astype(float) * 100)
        .groupby(["method", "display_name", "is_baseline", "dataset", "label_fraction"])["score"]
        .agg(mean="mean", std="std", seeds="count")
        .reset_index()
    )


def layout(summary: pd.DataFrame, baseline: str | None = None, *, bold: bool = True) -> Table:
    """Rows (baselines first), columns in the paper's order, deltas to the baseline, best in bold."""
    if summary.empty:
        return Table([], [], {}, None, summary)
    methods = summary.drop_duplicates("method").sort_values(["is_baseline", "method"], ascending=[False, True])
    present = list(methods["method"])
    if baseline is None:
        baseline = next((name for name in BASELINE_PREFERENCE if name in present), None)
    elif baseline not in present:
        baseline = None  # the chosen baseline has no cell in this table: no deltas here (the caption says so)
    columns = sorted({(d, f) for d, f in zip(summary["dataset"], summary["label_fraction"])}, key=_column_order)
    lookup = {(r.method, r.dataset, r.label_fraction): r for r in summary.itertuples()}
    best = {column: max(r.mean for key, r in lookup.items() if key[1:] == column) for column in columns}
    rows, cells = [], {}
    for method in methods.itertuples():
        label = method.display_name + (" (bs)" if method.method == baseline else "")
        rows.append(label)
        for column in columns:
            entry = lookup.get((method.method,) + column)
            if entry is None:
                continue
            reference = lookup.get((baseline,) + column) if baseline else None
            delta = round(entry.mean - reference.mean, 6) if reference is not None and method.method != baseline else None
            cells[(label, column)] = Cell(entry.mean, entry.std, int(entry.seeds), delta,
                                          bold and len(methods) > 1 and bool(np.isclose(entry.mean, best[column])))
    return Table(rows, columns, cells, baseline, summary)


def build_table(records: pd.DataFrame, protocol: str, metric: str = "mean_auroc", baseline: str | None = None):
    """(rendered Markdown cells, numeric summary, baseline method) for one protocol."""
    table = layout(summarise(records, protocol, metric), baseline)
    if table.empty:
        return pd.DataFrame(), table.summary, None
    return table.frame(), table.summary, table.baseline


# --- rendering


def render_markdown(table: pd.DataFrame, caption: str, footnotes: list[str] = ()) -> str:
    headers = ["Method"] + [f"{dataset} {labels}" for dataset, labels in table.columns]
    rows = [[index] + list(values) for index, values in zip(table.index, table.to_numpy())]
    text = f"{caption}\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", stralign="center") + "\n"
    if footnotes:
        text += "\n" + "\n".join(f"[{i}] {note}" for i, note in enumerate(footnotes, 1)) + "\n"
    return text


def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", "\\textbackslash{}"), ("%", "\\%"), ("&", "\\&"), ("_", "\\_"), ("#", "\\#"),
                         ("↑", "$\\uparrow$"), ("↓", "$\\downarrow$"), ("±", "$\\pm$"), ("✓", "\\checkmark{}"), ("✗", "$\\times$")):
        text = text.replace(raw, escaped)
    return text


def render_latex(table: Table | pd.DataFrame, caption: str, label: str, footnotes: list[str] = ()) -> str:
    """A booktabs table (pandas Styler), ready to ``\\input``; cells already in LaTeX."""
    frame = table.frame(latex=True) if isinstance(table, Table) else table.map(lambda v: _latex_escape(str(v)))
    frame = frame.rename(index=_latex_escape).rename_axis(None)
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(str(part)) for part in column) for column in frame.columns])
    else:
        frame.columns = [_latex_escape(str(column)) for column in frame.columns]
    body = frame.style.to_latex(hrules=True, multicol_align="c", column_format="l" + "c" * frame.shape[1])
    notes = "".join(f"\\\\[2pt]\\footnotesize [{i}] {_latex_escape(note)}\n" for i, note in enumerate(footnotes, 1))
    return ("\\begin{table}[t]\n\\centering\n\\small\n" + f"\\caption{{{_latex_escape(caption)}}}\n\\label{{{label}}}\n"
            + "\\resizebox{\\textwidth}{!}{%\n" + body + "}\n" + notes + "\\end{table}\n")


def caption_for(title: str, what: str, baseline: str | None, forced: bool) -> str:
    if baseline is None:
        return f"{title}. {what} on the test split; no baseline row in these records, so no deltas."
    name = BASELINE_NAMES.get(baseline, baseline)
    reason = "" if baseline == "sup2" or forced else ", because Sup.2 has no records"
    return (f"{title}. {what} on the test split; in parentheses the difference to the baseline row (bs), "
            f"{name}{reason}; best per column in bold; mean ± std over seeds where there are several.")


# --- Table III


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


ABLATION_CAPTION = ("Table III: OPTiML ablation, fine-tuning on the NIH(-like) dataset, mean AUROC on the test split "
                    "(var+cov: the variance/covariance regularisers; CV-SIM: learned marginals instead of uniform); "
                    "best per column in bold.")


# --- the paper's published numbers


def reference_records(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference CSV as the record rows the tables are built from (one seed per cell)."""
    from cxrbench.methods import available_methods, get_method

    known = set(available_methods())
    rows = []
    for entry in reference.itertuples():
        method = entry.method
        display = get_method(method).display_name if method in known else method
        ablation = None
        if entry.table == "III":
            switches = dict(part.split("=") for part in entry.ablation.split(";"))
            ablation = json.dumps({name: state == "on" for name, state in switches.items()})
        rows.append({"method": method, "display_name": display, "is_baseline": method in BASELINE_PREFERENCE,
                     "dataset": entry.dataset, "protocol": entry.protocol, "label_fraction": float(entry.fraction),
                     "seed": 0, "mean_auroc": float(entry.value) / 100, "dice_per_image": None, "ablation": ablation,
                     "headline_metric": "mean_auroc", "headline_score": float(entry.value) / 100,
                     "table": entry.table, "record_file": f"reference:{entry.table}", "git_commit": None,
                     "config_sha1": None, "created": None})
    return pd.DataFrame(rows)


def printed_delta_disagreements(reference: pd.DataFrame, table: Table, paper_table: str) -> list[str]:
    """Footnotes: every printed delta (or arrow) that its own table's numbers contradict."""
    notes = []
    rows = reference[(reference["table"] == paper_table) & reference["printed_delta"].notna()]
    by_label = {label.removesuffix(" (bs)"): label for label in table.rows}
    from cxrbench.methods import available_methods, get_method

    known = set(available_methods())
    for entry in rows.itertuples():
        display = get_method(entry.method).display_name if entry.method in known else entry.method
        cell = table.cells.get((by_label.get(display, display), (entry.dataset, float(entry.fraction))))
        recomputed = 0.0 if cell is None or cell.delta is None else cell.delta
        printed_arrow = entry.printed_arrow if isinstance(entry.printed_arrow, str) else ""
        expected_arrow = "↑" if round(recomputed, 1) > 0 else "↓" if round(recomputed, 1) < 0 else ""
        if abs(round(recomputed, 1) - float(entry.printed_delta)) > 0.05 or printed_arrow != expected_arrow:
            where = f"{display}, {DATASET_NAMES.get(entry.dataset, entry.dataset)} {_fraction_label(float(entry.fraction))}"
            notes.append(f"{where}: printed ({float(entry.printed_delta):.1f}){printed_arrow}, "
                         f"recomputed from the table's numbers ({recomputed:+.1f}){expected_arrow}")
    return notes


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, baseline: str | None) -> Table:
    """Our rows and the paper's interleaved, on the paper's datasets (phantom-X shown under X)."""
    ours = ours.assign(dataset=ours["dataset"].map(base_dataset))
    our_table, paper_table = layout(ours, baseline, bold=False), layout(paper, baseline, bold=False)
    columns = sorted(set(our_table.columns) | set(paper_table.columns), key=_column_order)
    rows, cells = [], {}
    names = list(dict.fromkeys([r.removesuffix(" (bs)") for r in our_table.rows] + [r.removesuffix(" (bs)") for r in paper_table.rows]))
    for name in names:
        for source, table in (("ours", our_table), ("paper", paper_table)):
            label = next((row for row in table.rows if row.removesuffix(" (bs)") == name), None)
            if label is None:
                continue
            row = f"{label} [{source}]"
            rows.append(row)
            for column in columns:
                if (label, column) in table.cells:
                    cells[(row, column)] = table.cells[(label, column)]
    return Table(rows, columns, cells, our_table.baseline or paper_table.baseline, pd.concat([our_table.summary, paper_table.summary]))
