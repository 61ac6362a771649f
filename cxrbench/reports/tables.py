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

import dataclasses
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from cxrbench.records import comparisons
from cxrbench.records.layout import ResultsFolder
from cxrbench.records.schema import RecordError, choose_baseline, read_record
from cxrbench.reports.reference import PAPER_BASELINE_RANKS
from cxrbench.records.statistics import holm_reject

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
BACKBONE_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}


class ReportError(ValueError):
    pass


def load_records(results_dir: Path) -> pd.DataFrame:
    """One row per valid cell record under ``results_dir/cells``.

    Each record is checked against the schema the runner writes; one that fails (unreadable
    JSON, a missing or wrongly typed field, a score that is not a finite number in [0, 1]) is
    left out and named in ``load_records.skipped`` (one line each, for the report's footnote).
    With no valid record at all, the first problem is the error.
    """
    folder = ResultsFolder(results_dir)
    paths = folder.cell_records()
    if not paths:
        raise ReportError(f"{results_dir}: no run records (expected {folder.cells}/*.json from `bench run`)")
    rows, skipped = [], []
    for path in paths:
        try:
            rows.append(_record_row(path, results_dir))
        except RecordError as error:
            skipped.append(f"{path}: not a valid cell record ({error.reason}); left out")
    if not rows:
        raise ReportError(skipped[0])
    frame = pd.DataFrame(rows)
    # a row of another trunk than the table's own (the baseline rows', else most rows') says so
    # wherever its name appears
    main = main_backbone(frame)
    frame["plain_display_name"] = frame["display_name"]
    frame["display_name"] = [name if backbone == main else f"{name} [{BACKBONE_NAMES.get(backbone, backbone)}]"
                             for name, backbone in zip(frame["display_name"], frame["backbone"])]
    frame.attrs["skipped"] = skipped
    return frame


def main_backbone(records: pd.DataFrame) -> str:
    """The trunk of the baseline rows (else of most rows): the one every other row is compared on."""
    if "backbone" not in records or records.empty:
        return "resnet18"
    baseline = records.loc[records["is_baseline"], "backbone"] if "is_baseline" in records else records["backbone"].iloc[:0]
    return (baseline if len(baseline) else records["backbone"]).value_counts().index[0]


def _record_row(path: Path, results_dir: Path) -> dict:
    record = read_record(path)
    cell = record.cell
    try:
        curve = record.validation_curve()
    except RecordError as error:
        raise RecordError(error.reason, path) from None
    return {
        "method": cell.method,
        "display_name": record.method_display_name,  # marked by backbone in load_records
        "backbone": record.method_backbone,
        "is_baseline": record.method_is_baseline,
        "baseline_rank": record.method_baseline_rank if record.method_is_baseline else None,
        "dataset": cell.dataset,
        "protocol": cell.protocol,
        "label_fraction": cell.label_fraction,
        "seed": cell.seed,
        "mean_auroc": record.score("mean_auroc"),
        "dice_per_image": record.score("dice_per_image"),
        "headline_metric": record.headline_metric,
        "protocol_version": record.protocol_version,
        "headline_score": record.score(record.headline_metric),
        # the cell's 95 % bootstrap interval of the headline score (for the page's hover text)
        "interval_low": record.interval_bound("low"),
        "interval_high": record.interval_bound("high"),
        "ablation": json.dumps(record.method_ablation) if record.method_ablation else None,
        # [step, validation score] of each evaluation of a fine-tune or segmentation cell
        "validation_curve": curve,
        "record_file": str(path.relative_to(Path(results_dir))),
        "predictions_file": record.predictions_file,
        "git_commit": (record.environment or {}).get("git_commit"),
        "config_sha1": hashlib.sha1(json.dumps(record.config, sort_keys=True, default=str).encode()).hexdigest()[:12],
        "profile": ((record.config or {}).get("profile") or {}).get("name"),
        "created": record.created,
    }


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
    best: bool = False  # bold: the column's best, or not significantly below it
    significant: bool = False  # the delta passed the paired test (Holm over the table's cells)
    tested: bool = False  # a paired test was possible (predictions of both cells on the same images)
    tested_seeds: int = 0  # the seeds both cells have, which the test against the baseline used
    low: float | None = None  # x 100: the lowest bootstrap bound over the cell's seeds
    high: float | None = None  # x 100: the highest

    def text(self, latex: bool = False, markup: bool = True) -> str:
        if self.mean is None:
            return "–"
        text = f"{self.mean:.1f}"
        if self.seeds > 1 and self.std is not None and np.isfinite(self.std):
            text += (" $\\pm$ " if latex else " ± ") + f"{self.std:.1f}"
        if self.delta is not None:
            shown = round(self.delta, 1) + 0.0  # the arrow follows the printed value (+ 0.0: no "-0.0")
            # an arrow only for a significant difference: a printed delta alone is no result
            arrow = ("↑" if shown > 0 else "↓" if shown < 0 else "") if self.significant else ""
            if latex:
                arrow = {"↑": "$\\uparrow$", "↓": "$\\downarrow$"}.get(arrow, "")
            text += f" ({shown:+.1f}){arrow}"
        if self.best and markup:
            text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
        return text

    def hover(self) -> str:
        """What the page shows on hover: the interval and what the marks mean for this cell."""
        if self.mean is None:
            return "no record"
        parts = [f"{self.mean:.1f}" + (f" ± {self.std:.1f} over {self.seeds} seeds" if self.seeds > 1 and self.std is not None
                                       and np.isfinite(self.std) else "")]
        if self.low is not None and self.high is not None:
            parts.append(f"95 % bootstrap interval [{self.low:.1f}, {self.high:.1f}]" + (" (widest over the seeds)" if self.seeds > 1 else ""))
        if self.delta is not None:
            parts.append(f"{self.delta:+.1f} to the baseline row: " + ("significant (Holm, 5 %)" if self.significant
                                                                       else "not significant" if self.tested else "not tested"))
        if self.best:
            parts.append("bold: the column's best or not significantly below it")
        return "; ".join(parts)


@dataclass
class Table:
    rows: list[str]  # row labels, in order
    columns: list[tuple[str, float]]  # (dataset, fraction)
    cells: dict[tuple[str, tuple[str, float]], Cell]
    baseline: str | None
    summary: pd.DataFrame
    methods: dict[str, str] = None  # row label -> method name
    # how the bold and the arrows were decided, for the caption (None: not tested)
    significance: str | None = None

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
        return pd.DataFrame(columns=["method", "display_name", "is_baseline", "dataset", "label_fraction", "mean", "std", "seeds",
                                     "baseline_rank"])
    keys = ["method", "display_name", "is_baseline", "dataset", "label_fraction"]
    scored = subset.assign(score=subset[metric].astype(float) * 100)
    summary = scored.groupby(keys)["score"].agg(mean="mean", std="std", seeds="count").reset_index()
    ranks = subset.groupby("method")["baseline_rank"].min() if "baseline_rank" in subset else {}
    summary["baseline_rank"] = summary["method"].map(ranks)
    headline = None
    if "interval_low" in subset:
        # the stored interval is of the headline score: used only where that is the table's metric
        headline = scored if metric == "headline_score" else scored[scored["headline_metric"] == metric]
    if headline is not None and not headline.empty:
        bounds = (headline.assign(low=headline["interval_low"].astype(float) * 100, high=headline["interval_high"].astype(float) * 100)
                  .groupby(keys).agg(low=("low", "min"), high=("high", "max")).reset_index())
        summary = summary.merge(bounds, on=keys, how="left")
    return summary


def layout(summary: pd.DataFrame, baseline: str | None = None, *, bold: bool = True) -> Table:
    """Rows (baselines first), columns in the paper's order, deltas to the baseline, best in bold."""
    if summary.empty:
        return Table([], [], {}, None, summary, {})
    methods = summary.drop_duplicates("method").sort_values(["is_baseline", "method"], ascending=[False, True])
    present = list(methods["method"])
    if baseline is None:
        baseline = choose_baseline({r.method: int(r.baseline_rank) for r in methods.itertuples() if r.is_baseline and pd.notna(r.baseline_rank)})
    elif baseline not in present:
        baseline = None  # the chosen baseline has no cell in this table: no deltas here (the caption says so)
    columns = sorted({(d, f) for d, f in zip(summary["dataset"], summary["label_fraction"])}, key=_column_order)
    lookup = {(r.method, r.dataset, r.label_fraction): r for r in summary.itertuples()}
    best = {column: max(r.mean for key, r in lookup.items() if key[1:] == column) for column in columns}
    rows, cells, labels = [], {}, {}
    for method in methods.itertuples():
        label = method.display_name + (" (bs)" if method.method == baseline else "")
        rows.append(label)
        labels[label] = method.method
        for column in columns:
            entry = lookup.get((method.method,) + column)
            if entry is None:
                continue
            reference = lookup.get((baseline,) + column) if baseline else None
            delta = round(entry.mean - reference.mean, 6) if reference is not None and method.method != baseline else None
            bound = lambda name: float(getattr(entry, name)) if pd.notna(getattr(entry, name, None)) else None  # noqa: E731
            cells[(label, column)] = Cell(entry.mean, entry.std, int(entry.seeds), delta,
                                          bold and len(methods) > 1 and bool(np.isclose(entry.mean, best[column])),
                                          low=bound("low"), high=bound("high"))
    return Table(rows, columns, cells, baseline, summary, labels)


# --- significance: arrows and bold from paired tests on the stored predictions


def _combine_seeds(differences: list[float], p_values: list[float]) -> float:
    """One p-value for a cell of several seeds: the intersection-union test.

    The seeds share their test images, so their tests are not independent and cannot be
    pooled as if they were; a cell counts as different only when every seed's test says so
    in the same direction, i.e. its p-value is the largest of the seeds'.
    """
    if not p_values or any(p != p for p in p_values):
        return float("nan")
    if len({np.sign(d) for d in differences}) > 1:
        return 1.0
    return max(p_values)


def mark_significance(table: Table, records: pd.DataFrame, results_dir: Path, protocol: str, alpha: float = 0.05) -> Table:
    """Arrows where a delta to the baseline is significant (Holm over the table's cells), bold for
    the best of each column and every row not significantly below it (Holm within the column).

    Tests are the exact-resolution paired tests of ``paired-tests.csv`` (DeLong for AUROC,
    paired t for Dice), and the same tests between each row and the column's best, computed
    here from the stored predictions.
    """
    if table.empty:
        return table
    subset = records[records["protocol"] == protocol]
    files = {(r.method, r.dataset, r.label_fraction, r.seed): r.record_file for r in subset.itertuples()}

    def cell_test(method_a: str, method_b: str, column) -> tuple[float, float, int]:
        """(p-value over the seeds, sign of the tested difference a - b, the seeds both have)."""
        seeds = sorted(seed for (m, d, f, seed) in files if m == method_a and (d, f) == column
                       and (method_b, d, f, seed) in files)
        differences, p_values = [], []
        for seed in seeds:
            test = comparisons.exact_test_between(results_dir, files[(method_a,) + column + (seed,)], files[(method_b,) + column + (seed,)])
            if test is None:
                return float("nan"), 0.0, 0
            differences.append(test.difference)
            p_values.append(test.p_value)
        return _combine_seeds(differences, p_values), float(np.sign(np.mean(differences))) if differences else 0.0, len(seeds)

    testable = False
    # deltas to the baseline: one family, the table's cells
    if table.baseline is not None:
        tested = [(label, column) for (label, column), cell in table.cells.items() if cell.delta is not None]
        results = [cell_test(table.methods[label], table.baseline, column) for label, column in tested]
        p_values = [p for p, _, _ in results]
        testable |= any(p == p for p in p_values)
        for (label, column), (p_value, sign, seeds), reject in zip(tested, results, holm_reject(p_values, alpha)):
            cell = table.cells[(label, column)]
            cell.tested, cell.tested_seeds = p_value == p_value, seeds
            # the arrow follows the printed delta: only where the test's difference points the same way
            # (the test leaves out classes with a single positive, which the printed mean keeps)
            cell.significant = reject and sign == np.sign(round(cell.delta, 1))
    # bold: every row not significantly below the column's best; one family per column
    for column in table.columns:
        present = [(label, table.cells[(label, column)]) for label in table.rows if (label, column) in table.cells]
        if len(present) < 2:
            continue
        best_label, best_cell = max(present, key=lambda item: item[1].mean)
        others = [(label, cell) for label, cell in present if label != best_label]
        results = [cell_test(table.methods[best_label], table.methods[label], column) for label, _ in others]
        p_values = [p for p, _, _ in results]
        testable |= any(p == p for p in p_values)
        for (_, cell), (p_value, sign, _), reject in zip(others, results, holm_reject(p_values, alpha)):
            # bold unless significantly below the best; untestable: not claimed tied
            cell.best = not np.isnan(p_value) and not (reject and sign > 0)
        best_cell.best = True
    table.significance = "tested" if testable else None
    return table


def significance_sentence(table: Table) -> str:
    """The caption's account of the arrows and the bold."""
    if table.significance is None:
        return ("No paired predictions to test: no difference is marked significant (no arrows); bold marks the "
                "highest value only.")
    deltas = [cell for cell in table.cells.values() if cell.delta is not None]
    significant = sum(cell.significant for cell in deltas)
    tested = sum(cell.tested for cell in deltas)
    if not deltas:
        return ("Bold: each column's best and every row not significantly below it (paired DeLong test of mean "
                "AUROC, or paired t-test of per-image Dice; Holm within the column at 5 %).")
    untested = f" ({len(deltas) - tested} could not be tested: no stored predictions)" if tested < len(deltas) else ""
    return (f"{significant} of {len(deltas)} cells {'differs' if significant == 1 else 'differ'} significantly from the baseline row (arrows; paired DeLong "
            f"test of mean AUROC, or paired t-test of per-image Dice, on the same test images; Holm-corrected over "
            f"the {tested} tested cells at 5 %{untested}; with several seeds a cell counts only when every seed's test "
            f"does). Other deltas are printed without an arrow. Bold: each column's best and every row not "
            f"significantly below it (the same tests against the best, Holm within the column).{_one_seed_note(deltas)}")


def _one_seed_note(deltas: list[Cell]) -> str:
    # a test on the test images sees how the two trained networks differ, not how far training
    # again moves them: in the standard profile's segmentation, 12 of 24 cells were significant
    # with seed 0 alone and none of the 21 with seeds 0-2 in all three (README, "one seed against three")
    arrows = sum(cell.significant for cell in deltas)
    single = sum(cell.significant and cell.tested_seeds == 1 for cell in deltas)
    if not single:
        return ""
    which = ("The arrow rests" if arrows == 1 else f"All {arrows} arrows rest" if single == arrows
             else f"{single} of the {arrows} arrows rest")
    return (f" {which} on one seed: a test on the test images compares two trained networks and cannot see how far "
            f"training again with another seed moves a cell, which can be larger than the differences; read such an "
            f"arrow as these networks' difference, not the methods', until more seeds agree.")


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


def render_html(table: Table, caption: str, table_id: str) -> str:
    """The table as an HTML ``<table>`` (pandas' Styler): the caption above, bold for the column's
    best and its ties, the significance arrows, the delta to the baseline as a colour (blue above,
    red below, strongest at the table's largest |delta|), and each cell's interval on hover."""
    frame = pd.DataFrame({row: [table.cells.get((row, column), Cell()).text(markup=False) for column in table.columns]
                          for row in table.rows}).T
    frame.columns = pd.MultiIndex.from_tuples([(d, _fraction_label(f)) for d, f in table.columns], names=["dataset", "labels"])
    frame.index.name = "Method"
    cell = lambda row, position: table.cells.get((row, table.columns[position]), Cell())  # noqa: E731
    deltas = [abs(c.delta) for c in table.cells.values() if c.delta is not None]
    scale = max(deltas) if deltas else 1.0

    def colour(delta: float | None) -> str:
        if delta is None or scale == 0:
            return ""
        strength = min(1.0, abs(delta) / scale)
        hue = (33, 102, 172) if delta > 0 else (178, 24, 43)  # RdBu's ends, readable with dark text at 45 %
        return f"background-color: rgba({hue[0]}, {hue[1]}, {hue[2]}, {0.45 * strength:.2f});"

    styles = pd.DataFrame([[colour(cell(row, i).delta) + ("font-weight: bold;" if cell(row, i).best else "")
                            for i in range(len(table.columns))] for row in table.rows], index=frame.index, columns=frame.columns)
    hovers = pd.DataFrame([[cell(row, i).hover() for i in range(len(table.columns))] for row in table.rows],
                          index=frame.index, columns=frame.columns)
    styler = (frame.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
              .apply(lambda _: styles, axis=None).set_tooltips(hovers, props="visibility: hidden; position: absolute; "
                                                                         "z-index: 2; background: #333; color: #fff; padding: 4px 6px; "
                                                                         "border-radius: 3px; font-size: 11px; white-space: nowrap;")
              .set_caption(html.escape(caption)).set_table_attributes('class="results"'))
    return styler.to_html(table_uuid=table_id)


def render_html_frame(frame: pd.DataFrame, caption: str, table_id: str) -> str:
    """A plain frame (Table III, the learning check) as an HTML table: ``**x**`` becomes bold."""
    bold = frame.map(lambda value: isinstance(value, str) and value.startswith("**") and value.endswith("**"))
    shown = frame.map(lambda value: value[2:-2] if isinstance(value, str) and value.startswith("**") and value.endswith("**") else value)
    styler = (shown.style.format(escape="html").format_index(escape="html", axis=1).apply(lambda _: bold.map(lambda b: "font-weight: bold;" if b else ""), axis=None)
              .set_caption(html.escape(caption)).set_table_attributes('class="results"').hide(axis="index"))
    return styler.to_html(table_uuid=table_id)


def _latex_escape(text: str) -> str:
    # the backslash first (the others add backslashes), then LaTeX's other special characters
    for raw, escaped in (("\\", "\\textbackslash{}"), ("{", "\\{"), ("}", "\\}"), ("\\textbackslash\\{\\}", "\\textbackslash{}"),
                         ("$", "\\$"), ("^", "\\^{}"), ("~", "\\textasciitilde{}"),
                         ("%", "\\%"), ("&", "\\&"), ("_", "\\_"), ("#", "\\#"),
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


# profiles whose runs only show that the pipeline works end to end (too short for methods to learn)
DEMONSTRATION_PROFILES = {"smoke": "smoke", "quick": "quick"}


def profile_note(records: pd.DataFrame) -> str:
    """Sentences for the captions of tables built from these records: a demonstration profile's,
    and rows whose trunk is not the paper's ResNet-18."""
    return _backbone_note(records) + _demonstration_note(records)


def _backbone_note(records: pd.DataFrame) -> str:
    main = main_backbone(records)
    others = sorted(set(records["backbone"]) - {main}) if "backbone" in records else []
    own = "" if main == "resnet18" else f" Every row without a mark has a {BACKBONE_NAMES.get(main, main)} trunk (the paper's is ResNet-18)."
    if not others:
        return own
    names = ", ".join(f"[{BACKBONE_NAMES.get(name, name)}]" for name in others)
    return (f"{own} Rows marked {names} have another trunk than the {BACKBONE_NAMES.get(main, main)} of the baseline row: "
            f"their deltas and tests against it measure the model and the backbone together "
            f"(paired-tests.csv, column backbones).")


def _demonstration_note(records: pd.DataFrame) -> str:
    profiles = set(records["profile"].dropna()) if "profile" in records else set()
    if not profiles or not profiles <= set(DEMONSTRATION_PROFILES):
        return ""
    names = " and ".join(sorted(profiles))
    return (f" Profile {names}: this run demonstrates the pipeline (pretraining of a few dozen steps on 64 px "
            f"phantom images); it is too short for the methods to learn, and its differences are not expected to be "
            f"significant: the arrows and the learning check say which are. For methods that learn, see the "
            f"`standard` profile's report (reports/standard/ in the repository).")


def caption_for(title: str, what: str, baseline: str | None, forced: bool, table: Table | None = None,
                published: bool = False) -> str:
    if published:
        marks = ("The paper publishes no intervals: no difference can be tested, so none is marked significant "
                 "(no arrows); bold marks the highest published value.")
    else:
        marks = significance_sentence(table) if table is not None else ""
    if baseline is None:
        return f"{title}. {what} on the test split; no baseline row in these records, so no deltas. {marks}".strip()
    name = BASELINE_NAMES.get(baseline, baseline)
    reason = "" if baseline == "sup2" or forced else ", because Sup.2 has no records"
    return (f"{title}. {what} on the test split; in parentheses the difference to the baseline row (bs), "
            f"{name}{reason}; mean ± std over seeds where there are several. {marks}").strip()


# --- Table III


ABLATION_DATASETS = ("phantom-nih", "nih")  # Table III is on the NIH(-like) dataset
ABLATION_FRACTIONS = (1.0, 10.0)


def build_ablation_table(records: pd.DataFrame, results_dir: Path | None = None) -> pd.DataFrame:
    """Table III: OPTiML variants x (1 %, 10 %) fine-tune mean AUROC on the NIH-like dataset.

    Bold: each column's best and, with ``results_dir`` (our records), every variant not
    significantly below it (paired DeLong tests on the stored predictions, Holm within the
    column); without it (published numbers), the highest value only.
    """
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
    tied = _ablation_ties(subset, summary, results_dir) if results_dir is not None else None
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
            # x 100, the unit of Tables I and II
            text = f"{100 * entry['mean']:.1f}" + (f" ± {100 * entry['std']:.1f}" if entry["count"] > 1 else "")
            bold = np.isclose(entry["mean"], best[fraction]) or (tied is not None and (method, fraction) in tied)
            row[_fraction_label(fraction)] = f"**{text}**" if bold else text
        rows.append(row)
    return pd.DataFrame(rows)


def _ablation_ties(subset: pd.DataFrame, summary: pd.DataFrame, results_dir: Path, alpha: float = 0.05) -> set:
    """(method, fraction) of the variants not significantly below their column's best."""
    tied = set()
    files = {(r.method, r.label_fraction, r.seed): r.record_file for r in subset.itertuples()}
    for fraction, column in summary.groupby("label_fraction"):
        leader = column.loc[column["mean"].idxmax(), "method"]
        others = [method for method in column["method"] if method != leader]
        p_values = []
        for method in others:
            seeds = sorted(s for (m, f, s) in files if m == method and f == fraction and (leader, f, s) in files)
            tests = [comparisons.exact_test_between(results_dir, files[(leader, fraction, s)], files[(method, fraction, s)]) for s in seeds]
            usable = [test for test in tests if test is not None]
            p_values.append(_combine_seeds([t.difference for t in usable], [t.p_value for t in usable])
                            if usable and len(usable) == len(tests) else float("nan"))
        tied |= {(method, fraction) for method, p, reject in zip(others, p_values, holm_reject(p_values, alpha))
                 if not reject and p == p}
    return tied


ABLATION_CAPTION = ("Table III: OPTiML ablation, fine-tuning on the NIH(-like) dataset, mean AUROC x 100 on the test split "
                    "(var+cov: the variance/covariance regularisers; CV-SIM: learned marginals instead of uniform); "
                    "bold: each column's best and every variant not significantly below it (paired DeLong tests, Holm "
                    "within the column).")
ABLATION_CAPTION_PUBLISHED = ("Table III: OPTiML ablation, fine-tuning on NIH, mean AUROC x 100 on the test split, from the "
                              "paper's published numbers ({reference}) (var+cov: the variance/covariance regularisers; "
                              "CV-SIM: learned marginals instead of uniform). The paper publishes no intervals: no "
                              "difference can be tested; bold marks the highest published value.")


# --- the paper's published numbers


def reference_records(reference: pd.DataFrame, display_names: dict[str, str]) -> pd.DataFrame:
    """The reference CSV as the record rows the tables are built from (one seed per cell); a
    method's name as ``display_names`` gives it (its key where it gives none)."""
    rows = []
    for entry in reference.itertuples():
        method = entry.method
        display = display_names.get(method, method)
        ablation = None
        if entry.table == "III":
            switches = dict(part.split("=") for part in entry.ablation.split(";"))
            ablation = json.dumps({name: state == "on" for name, state in switches.items()})
        rows.append({"method": method, "display_name": display, "is_baseline": method in PAPER_BASELINE_RANKS,
                     "baseline_rank": PAPER_BASELINE_RANKS.get(method),
                     "dataset": entry.dataset, "protocol": entry.protocol, "label_fraction": float(entry.fraction),
                     "seed": 0, "mean_auroc": float(entry.value) / 100, "dice_per_image": None, "ablation": ablation,
                     "headline_metric": "mean_auroc", "headline_score": float(entry.value) / 100,
                     "table": entry.table, "record_file": f"reference:{entry.table}", "git_commit": None,
                     "config_sha1": None, "created": None})
    return pd.DataFrame(rows)


def printed_delta_disagreements(reference: pd.DataFrame, table: Table, paper_table: str, display_names: dict[str, str]) -> list[str]:
    """Footnotes: every printed delta (or arrow) that its own table's numbers contradict."""
    notes = []
    rows = reference[(reference["table"] == paper_table) & reference["printed_delta"].notna()]
    by_label = {label.removesuffix(" (bs)"): label for label in table.rows}
    for entry in rows.itertuples():
        display = display_names.get(entry.method, entry.method)
        cell = table.cells.get((by_label.get(display, display), (entry.dataset, float(entry.fraction))))
        recomputed = 0.0 if cell is None or cell.delta is None else cell.delta
        printed_arrow = entry.printed_arrow if isinstance(entry.printed_arrow, str) else ""
        expected_arrow = "↑" if round(recomputed, 1) > 0 else "↓" if round(recomputed, 1) < 0 else ""
        if abs(round(recomputed, 1) - float(entry.printed_delta)) > 0.05 or printed_arrow != expected_arrow:
            where = f"{display}, {DATASET_NAMES.get(entry.dataset, entry.dataset)} {_fraction_label(float(entry.fraction))}"
            notes.append(f"{where}: printed ({float(entry.printed_delta):.1f}){printed_arrow}, "
                         f"recomputed from the table's numbers ({recomputed:+.1f}){expected_arrow}")
    return notes


def side_by_side(our_table: Table, paper: pd.DataFrame, baseline: str | None) -> Table:
    """Our rows (laid out and tested) and the paper's interleaved, on the paper's datasets
    (phantom-X shown under X). No bold here: a best across two sources means nothing; our
    arrows keep their significance, the paper's cells have none (it publishes no intervals)."""
    our_table = Table(our_table.rows, [(base_dataset(d), f) for d, f in our_table.columns],
                      {(label, (base_dataset(d), f)): dataclasses.replace(cell, best=False)
                       for (label, (d, f)), cell in our_table.cells.items()},
                      our_table.baseline, our_table.summary, our_table.methods, our_table.significance)
    paper_table = layout(paper, baseline, bold=False)
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
            cells.update({(row, column): table.cells[(label, column)] for column in columns if (label, column) in table.cells})
    return Table(rows, columns, cells, our_table.baseline or paper_table.baseline, pd.concat([our_table.summary, paper_table.summary]),
                 {}, our_table.significance)
