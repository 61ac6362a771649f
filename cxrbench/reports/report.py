"""``bench report``: every table and figure of a run (and/or of the paper) plus one page linking them.

``write_report(results, out)`` renders from our records; ``write_report(None, out,
reference="optiml-paper")`` regenerates the paper's Tables I-III from the transcribed
numbers alone; with both, our cells and the paper's sit side by side. Each report gets an
``index.md`` and a self-contained ``index.html`` (images inlined) that list every table and
figure and the provenance of every cell (record file, configuration hash, commit).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from cxrbench.records.io import atomic_write_bytes
from cxrbench.records.comparisons import decided_methods, did_not_learn, learning_check, method_pairs
from cxrbench.records.layout import ResultsFolder
from cxrbench.records.schema import PretrainRecord, RecordError, read_record
from cxrbench.reports import figures
from cxrbench.reports.reference import load_reference
from cxrbench.reports.tables import (
    ABLATION_CAPTION,
    ABLATION_CAPTION_PUBLISHED,
    TABLES,
    ReportError,
    build_ablation_table,
    caption_for,
    layout,
    load_records,
    mark_significance,
    profile_note,
    printed_delta_disagreements,
    reference_records,
    render_latex,
    render_html,
    render_html_frame,
    render_markdown,
    side_by_side,
    summarise,
)

PAPER_TABLES = {"finetune": "I", "frozen": "II"}


def _paper_table(paper, protocol: str):
    """The rows of the paper's table for this protocol (Table III repeats OPTiML at 1 and 10 %)."""
    return paper[paper["table"] == PAPER_TABLES[protocol]]


class _Page:
    """What the index page lists, in order: (kind, title, payload)."""

    def __init__(self, title: str):
        self.title = title
        self.items: list[tuple[str, str, object]] = []

    def table(self, title: str, markdown: str, files: list[Path], html_table: str = ""):
        self.items.append(("table", title, (markdown, files, html_table)))

    def figure(self, title: str, files: list[Path], first: bool = False):
        if files:
            self.items.insert(0, ("figure", title, files)) if first else self.items.append(("figure", title, files))

    def note(self, text: str):
        self.items.append(("note", "Note", text))

    def frame(self, title: str, frame: pd.DataFrame, folded: bool = False):
        if not frame.empty:
            self.items.append(("frame", title, (frame, folded)))

    def link(self, title: str, text: str, path: Path):
        self.items.append(("link", title, (text, path)))


def _write_table(out_dir: Path, stem: str, markdown: str, latex: str, csv: pd.DataFrame) -> list[Path]:
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.tex", out_dir / f"{stem}.csv"]
    for path, text in zip(paths, (markdown, latex, csv.to_csv(index=False))):
        atomic_write_bytes(path, text.encode())
    return paths


def write_report(results_dir: Path | None, out_dir: Path, *, reference: str | None = None, baseline: str | None = None,
                 display_names: dict[str, str] | None = None) -> list[Path]:
    """Render into a staging folder beside ``out_dir`` and put it in place whole: a report that
    fails half-way leaves the previous one as it was, and no file of an older report survives
    beside a new one. A results folder inside ``out_dir`` (a report kept with its records) is
    carried over.

    ``display_names`` (method -> name shown) names the paper's rows of methods that have no
    record here; ``bench report`` passes the registry's. Records carry their own names."""
    if results_dir is None and reference is None:
        raise ReportError("give --results DIR, --reference NAME, or both")
    out_dir = Path(out_dir)
    kept = _records_inside(results_dir, out_dir)
    if out_dir.is_dir() and not _is_report(out_dir) and set(out_dir.iterdir()) - {kept}:
        raise ReportError(f"--out {out_dir}: exists and is not a cxrbench report (no {REPORT_MARKER}); "
                          f"choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make every report private
    try:
        written = _render_report(results_dir, staging, reference=reference, baseline=baseline, display_names=display_names or {})
        (staging / REPORT_MARKER).write_text("written by bench report; this folder is replaced whole by the next one\n")
        if kept is not None:
            kept.rename(staging / kept.relative_to(out_dir))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        old = staging.with_name(staging.name.replace("staging", "old"))
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old)
    else:
        staging.rename(out_dir)
    return [out_dir / path.relative_to(staging) for path in written]


REPORT_MARKER = ".cxrbench-report"


def _is_report(folder: Path) -> bool:
    """A folder bench report wrote (its marker; or, from before the marker, its index page's title)."""
    if (folder / REPORT_MARKER).is_file():
        return True
    index = folder / "index.md"
    try:
        return index.is_file() and index.read_text().startswith("# cxrbench report")
    except (OSError, UnicodeDecodeError):
        return False


def _records_inside(results_dir: Path | None, out_dir: Path) -> Path | None:
    """The top folder under ``out_dir`` that holds ``results_dir``, if the records live in the report's folder."""
    if results_dir is None or not out_dir.is_dir():
        return None
    try:
        relative = Path(results_dir).resolve().relative_to(out_dir.resolve())
    except ValueError:
        return None
    return out_dir / relative.parts[0] if relative.parts else None


@dataclasses.dataclass
class _Sources:
    """What a report is rendered from: our records, the paper's published numbers, or both."""

    results_dir: Path | None
    ours: pd.DataFrame | None  # load_records' rows
    reference: str | None
    reference_table: pd.DataFrame | None  # the reference CSV as stored
    paper: pd.DataFrame | None  # its rows in the records' form
    baseline: str | None  # --baseline, or None: the records' own preference
    display_names: dict[str, str]


def _load_sources(results_dir: Path | None, reference: str | None, baseline: str | None, display_names: dict[str, str]) -> _Sources:
    ours = load_records(results_dir) if results_dir is not None else None
    if ours is not None:  # a record's own name wins over the caller's
        display_names = {**display_names, **dict(zip(ours["method"], ours["plain_display_name"]))}
    reference_table = paper = None
    if reference is not None:
        try:
            reference_table = load_reference(reference)
        except FileNotFoundError as error:
            raise ReportError(str(error)) from None
        paper = reference_records(reference_table, display_names)
    if baseline is not None:
        known = set(ours["method"]) if ours is not None else set()
        known |= set(paper["method"]) if paper is not None else set()
        if baseline not in known:
            raise ReportError(f"--baseline {baseline}: no such method in these records (present: {', '.join(sorted(known))})")
    return _Sources(results_dir, ours, reference, reference_table, paper, baseline, display_names)


def _render_report(results_dir: Path | None, out_dir: Path, *, reference: str | None, baseline: str | None,
                   display_names: dict[str, str]) -> list[Path]:
    sources = _load_sources(results_dir, reference, baseline, display_names)
    ours = sources.ours
    tables = dict(TABLES)
    if ours is not None:  # protocols from plugins get a table of their headline metric
        for protocol in sorted(set(ours["protocol"]) - set(TABLES)):
            metric = ours.loc[ours["protocol"] == protocol, "headline_metric"].iloc[0]
            tables[protocol] = (f"protocol_{protocol}", f"Protocol {protocol}", "headline_score", f"{metric} x 100")
    page = _Page(f"cxrbench report: {results_dir or ''}{' + ' if results_dir and reference else ''}{reference or ''}")
    written: list[Path] = []
    boards: dict[str, pd.DataFrame] = {}
    for protocol, spec in tables.items():
        rendered = _protocol_table(sources, protocol, spec)
        if rendered is None:
            continue
        table, caption, stem, footnotes = rendered
        if ours is not None and sources.paper is None:
            boards[spec[1]] = figures.leaderboard_rows(table, len(table.columns))
        markdown = render_markdown(table.frame(), caption, footnotes)
        files = _write_table(out_dir, stem, markdown, render_latex(table, caption, f"tab:{stem}", footnotes), table.summary)
        written += files
        table_html = render_html(table, caption, stem) + "".join(f"<p class='footnote'>{html.escape(line)}</p>" for line in footnotes)
        page.table(spec[1], markdown, files, table_html)
    chart = figures.leaderboard_figure(boards, out_dir / "leaderboard")
    if chart:
        written += chart
        page.figure("Leaderboard: who is ahead, and is it real?", chart, first=True)
    written += _ablation_tables(sources, out_dir, page)
    if ours is not None:
        written += _from_our_records(sources, out_dir, page, tables)
    if not written:
        raise ReportError(f"{results_dir}: records hold no finetune, frozen or segmentation results with a defined score")
    written += _write_pages(page, out_dir)
    return written


def _protocol_table(sources: _Sources, protocol: str, spec: tuple) -> tuple | None:
    """(table, caption, file stem, footnotes) of one protocol: ours tested, ours beside the paper's,
    or the paper's alone; None when it has no cell."""
    stem, title, metric, what = spec
    ours, paper, baseline = sources.ours, sources.paper, sources.baseline
    if ours is not None and paper is not None and protocol in PAPER_TABLES:
        ours_tested = mark_significance(layout(summarise(ours, protocol, metric), baseline), ours, sources.results_dir, protocol)
        table = side_by_side(ours_tested, summarise(_paper_table(paper, protocol), protocol, metric), baseline)
        caption = (f"{title}: our cells [ours] and the paper's Table {PAPER_TABLES[protocol]} [paper]. {what}; deltas to "
                   f"each source's own baseline row (bs). Our phantom-X datasets are shown under X: phantom numbers "
                   f"are not chest X-ray results. Arrows mark our deltas that are significant "
                   f"({sum(c.significant for c in ours_tested.cells.values())} of "
                   f"{sum(c.delta is not None for c in ours_tested.cells.values())}: paired DeLong / t tests, Holm over "
                   f"our cells at 5 %); the paper publishes no intervals, so none of its deltas is marked; no bold "
                   f"across the two sources.") + profile_note(ours)
        return (table, caption, f"{stem}_vs_paper", []) if not table.empty else None
    if ours is not None:
        table = mark_significance(layout(summarise(ours, protocol, metric), baseline), ours, sources.results_dir, protocol)
        caption = caption_for(title, what, table.baseline, baseline is not None, table) + profile_note(ours)
        if ours.attrs.get("skipped"):
            caption += f" {len(ours.attrs['skipped'])} invalid record(s) left out: see the notes in index.md."
        return (table, caption, stem, []) if not table.empty else None
    if protocol not in PAPER_TABLES:
        return None
    table = layout(summarise(_paper_table(paper, protocol), protocol, metric), baseline)
    if table.empty:
        return None
    caption = caption_for(f"{title}, from the paper's published numbers ({sources.reference})", what, table.baseline, True,
                          published=True)
    footnotes = printed_delta_disagreements(sources.reference_table, table, PAPER_TABLES[protocol], sources.display_names)
    if footnotes:
        caption += f" Deltas recomputed from the numbers; {len(footnotes)} printed delta(s) disagree, listed below."
    return table, caption, f"{stem}_paper", footnotes


def _ablation_tables(sources: _Sources, out_dir: Path, page: _Page) -> list[Path]:
    """Table III from our records (tested) and from the paper's numbers, where there are rows."""
    ours, paper, written = sources.ours, sources.paper, []
    ablation_sources = [(ours, "table3_ablation", ABLATION_CAPTION + profile_note(ours), sources.results_dir)] if ours is not None else []
    if paper is not None:
        ablation_sources.append((paper[paper["table"] == "III"], "table3_ablation_paper",
                                 ABLATION_CAPTION_PUBLISHED.format(reference=sources.reference), None))
    for records, stem, caption, tested_in in ablation_sources:
        ablation = build_ablation_table(records, tested_in)
        if ablation.empty:
            continue
        markdown = f"{caption}\n\n" + tabulate(ablation.values.tolist(), headers=list(ablation.columns), tablefmt="pipe", stralign="center") + "\n"
        latex = render_latex(ablation.set_index("Method").replace(r"\*\*", "", regex=True), caption, f"tab:{stem}")
        files = _write_table(out_dir, stem, markdown, latex, ablation)
        written += files
        page.table("Table III: OPTiML ablation", markdown, files, render_html_frame(ablation, caption, stem))
    return written


def _from_our_records(sources: _Sources, out_dir: Path, page: _Page, tables: dict) -> list[Path]:
    """What only our records give: notes on invalid records, the learning check, run times,
    figures, the paired tests and the provenance of every cell."""
    ours, results_dir = sources.ours, Path(sources.results_dir)
    for line in ours.attrs.get("skipped", []):
        page.note(line)
        print(f"bench report: {line}", file=sys.stderr)
    missing = [row.record_file for row in ours.itertuples() if row.predictions_file
               and not (results_dir / row.record_file).parent.joinpath(row.predictions_file).is_file()]
    if missing:
        note = (f"{len(missing)} record(s) without their predictions file, left out of every paired test and "
                f"figure: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        page.note(note)
        print(f"bench report: {note}", file=sys.stderr)
    written = _learning_check(results_dir, out_dir, page)
    written += _method_pairs(results_dir, out_dir, page)
    written += _run_times(results_dir, out_dir, page)
    written += _figures(results_dir, ours, out_dir, page, tables)
    tests_path = ResultsFolder(results_dir).paired_tests
    if tests_path.is_file():
        # linked, not printed: each table above shows its tests (arrows, bold, hover text)
        copied = out_dir / "paired-tests.csv"
        atomic_write_bytes(copied, tests_path.read_bytes())
        written.append(copied)
        page.link("Paired tests", "Every paired test against the baseline row (difference, 95 % interval, exact and "
                  "bootstrap p-values), one row per cell: ", copied)
    provenance = ours[["record_file", "method", "dataset", "protocol", "label_fraction", "seed", "config_sha1", "git_commit", "created"]]
    page.frame("Provenance of every cell", provenance, folded=True)
    return written


LEARNING_CAPTION = (
    "Learning check: each method's cells minus the random-initialisation row (Sup.1), x 100, with the 95 % interval "
    "of the paired test (DeLong for mean AUROC, paired t for Dice; the union over seeds). ✓: significantly above "
    "random initialisation (Holm over the protocol's cells at 5 %; with several seeds, every seed). The verdict is "
    "decided by the frozen cells (else the fine-tune ones): a method with no ✓ there did not learn here, on these "
    "data and this budget it is not distinguishable from a random network.")
# what the frozen records say of their BatchNorm statistics (``protocol_version`` in each record)
BATCHNORM_NOTES = {
    "bn-train": "The frozen probe re-estimated every encoder's BatchNorm statistics on the dataset's training images "
                "first, Sup.1's included (a random network's own are mean 0 / variance 1, which pass the raw intensity "
                "through; README: Protocols).",
    None: "These frozen records were made before the probe re-estimated BatchNorm statistics: each encoder, Sup.1 "
          "included, was probed with the statistics it had (a random network's initial ones pass the raw intensity "
          "through, which flatters the random-initialisation row; README: Protocols).",
}


def run_times(results_dir: Path) -> pd.DataFrame:
    """Wall time of each stage per method, from the records: its pretraining (the pretraining
    record) and the sum of its cells' own times per protocol (feature extraction, training,
    testing; the pretraining each cell refers to is not counted again), with the machine."""
    rows: dict[str, dict] = {}
    folder = ResultsFolder(results_dir)
    for path in folder.cell_records():
        try:
            record = read_record(path)
        except RecordError:
            continue  # load_records has said which records are invalid
        method, protocol = record.cell.method, record.cell.protocol
        seconds = sum(float(record.timing.get(key) or 0.0) for key in ("shared_s", "train_s", "test_s"))
        environment = record.environment or {}
        row = rows.setdefault(method, {"method": record.method_display_name, "pretraining_s": None,
                                       "machine": f"{environment.get('device_name', '?')}, {environment.get('torch_threads', '?')} "
                                                  f"threads, torch {(environment.get('packages') or {}).get('torch', '?')}"})
        row[f"{protocol}_s"] = row.get(f"{protocol}_s", 0.0) + seconds
        row[f"{protocol}_cells"] = row.get(f"{protocol}_cells", 0) + 1
    for path in folder.pretrain_records():
        try:
            pretraining = read_record(path, PretrainRecord)
        except RecordError:
            continue
        if pretraining.method in rows:
            rows[pretraining.method]["pretraining_s"] = float(pretraining.seconds)
    frame = pd.DataFrame(list(rows.values()))
    if frame.empty:
        return frame
    columns = ["method", "pretraining_s"] + [f"{protocol}_{what}" for protocol in ("frozen", "finetune", "segmentation")
                                               for what in ("cells", "s") if f"{protocol}_{what}" in frame] + ["machine"]
    frame = frame[columns]
    seconds = [column for column in columns if column.endswith("_s")]
    frame[seconds] = frame[seconds].round(0)
    return frame


def _run_times(results_dir: Path, out_dir: Path, page: _Page) -> list[Path]:
    frame = run_times(results_dir)
    if frame.empty:
        return []
    path = out_dir / "run_times.csv"
    atomic_write_bytes(path, frame.to_csv(index=False).encode())
    page.frame("Run time of each stage (seconds, from the records; machine as recorded)", frame)
    return [path]


def _difference_texts(rows: pd.DataFrame) -> list[str]:
    """Each row's difference with its interval, ✓ where significant: '+5.8 [+0.2, +10.9] ✓'."""
    return [f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + (" ✓" if significant else "")
            for d, lo, hi, significant in zip(rows["difference"], rows["low"], rows["high"], rows["significant"])]


def _learning_check(results_dir: Path, out_dir: Path, page: _Page) -> list[Path]:
    check = learning_check(results_dir)
    if check.empty:
        return []
    verdicts, decided = did_not_learn(check), decided_methods(check)
    check = check.assign(column=[f"{d} {_fraction_label_short(f)}" for d, f in zip(check["dataset"], check["label_fraction"])],
                         text=_difference_texts(check))
    names = dict(zip(check["display_name"], check["method"]))
    written = []
    for protocol in [name for name in ("frozen", "finetune", "segmentation") if name in set(check["protocol"])] + \
            sorted(set(check["protocol"]) - {"frozen", "finetune", "segmentation"}):
        part = check[check["protocol"] == protocol]
        frame = part.pivot_table(index="display_name", columns="column", values="text", aggfunc="first", sort=False).fillna("–")
        frame.insert(0, "verdict", ["did not learn here" if names[name] in verdicts else "learned" if names[name] in decided
                                    else "no verdict (no frozen or fine-tune cells)" for name in frame.index])
        frame = frame.reset_index().rename(columns={"display_name": "Method"})
        caption = f"{LEARNING_CAPTION} {_batchnorm_note(results_dir)} This table: {protocol}."
        markdown = f"{caption}\n\n" + tabulate(frame.values.tolist(), headers=list(frame.columns), tablefmt="pipe",
                                                stralign="center") + "\n"
        files = _write_table(out_dir, f"learning_check_{protocol}", markdown,
                             render_latex(frame.set_index("Method"), caption, f"tab:learning_check_{protocol}"),
                             part.drop(columns=["column", "text"]))
        page.table(f"Learning check ({protocol}): does each method beat a random network?", markdown, files,
                   render_html_frame(frame, caption, f"learning_check_{protocol}"))
        written += files
    return written


PAIRS_CAPTION = (
    "Method pairs: each pair of the suite's self-supervised methods (not Sup.1, random initialisation or --encoder "
    "rows) compared with each other on the same test images, frozen probe at 100 % labels; the first method minus the "
    "second, x 100, mean over the seeds both have, with the 95 % interval of the paired DeLong test (the union over "
    "those seeds). ✓: significant after Holm over every pair and dataset of this table at 5 % (with several seeds, "
    "every one of those seeds' tests in the same direction). A benchmark that tells methods apart has some ✓ here; "
    "a pair of a method that learned and one that did not says less than a pair of two that learned.")


def _method_pairs(results_dir: Path, out_dir: Path, page: _Page) -> list[Path]:
    """Which self-supervised methods differ from each other (frozen probe, 100 % labels)."""
    pairs = method_pairs(results_dir, protocol="frozen", label_fraction=100.0)
    if pairs.empty:
        return []
    pairs = pairs.assign(pair=[f"{a} – {b}" for a, b in zip(pairs["display_a"], pairs["display_b"])],
                         text=_difference_texts(pairs))
    frame = pairs.pivot_table(index="pair", columns="dataset", values="text", aggfunc="first", sort=False).fillna("–")
    frame = frame.reset_index().rename(columns={"pair": "Pair"})
    caption = f"{PAIRS_CAPTION} {int(pairs['significant'].sum())} of {len(pairs)} comparisons are significant."
    markdown = f"{caption}\n\n" + tabulate(frame.values.tolist(), headers=list(frame.columns), tablefmt="pipe", stralign="center") + "\n"
    files = _write_table(out_dir, "method_pairs_frozen", markdown, render_latex(frame.set_index("Pair"), caption, "tab:method_pairs_frozen"),
                         pairs.drop(columns=["pair", "text"]))
    page.table("Method pairs (frozen, 100 %): which methods does the benchmark tell apart?", markdown, files,
               render_html_frame(frame, caption, "method_pairs_frozen"))
    return files


def _batchnorm_note(results_dir: Path) -> str:
    records = load_records(results_dir)
    versions = set(records.loc[records["protocol"] == "frozen", "protocol_version"])
    if len(versions) > 1:
        return "The frozen records were made with different probes (BatchNorm statistics re-estimated in some, not in others)."
    return BATCHNORM_NOTES.get(next(iter(versions), "bn-train"), "")


def _fraction_label_short(fraction: float) -> str:
    return f"{fraction:g}%"


def _figures(results_dir: Path, records: pd.DataFrame, out_dir: Path, page: _Page, tables: dict) -> list[Path]:
    """Every figure; one that cannot be drawn (a predictions file missing) is skipped with a note."""
    written = []
    for draw in (_label_efficiency, _validation_curves, _gradcam, _segmentation, _pretraining):
        try:
            written += draw(results_dir, records, out_dir, page, tables)
        except ReportError as error:
            page.note(f"{draw.__doc__.strip()} skipped: {error}")
            print(f"bench report: skipped a figure: {error}", file=sys.stderr)
    return written


def _label_efficiency(results_dir, records, out_dir, page, tables) -> list[Path]:
    """Label-efficiency figure"""
    written = []
    for protocol, (_, title, metric, what) in tables.items():
        files = figures.label_efficiency_figure(records, protocol, metric, what, out_dir / f"label_efficiency_{protocol}")
        page.figure(f"Label efficiency: {title}", files)
        written += files
    return written


def _validation_curves(results_dir, records, out_dir, page, tables) -> list[Path]:
    """Validation curves"""
    written = []
    for protocol, (_, title, _, what) in tables.items():
        files = figures.validation_curves_figure(records, protocol, what, out_dir / f"validation_curves_{protocol}")
        page.figure(f"Validation curves: {title}", files)
        written += files
    return written


def _gradcam(results_dir, records, out_dir, page, tables) -> list[Path]:
    """Figure 2 (Grad-CAM)"""
    written = []
    files, localisation = figures.gradcam_figure(results_dir, records, out_dir / "gradcam")
    page.figure("Figure 2: Grad-CAM heatmaps of the fine-tuned models with the ground-truth boxes", files)
    written += files
    if not localisation.empty:
        markdown = ("Localisation of the Grad-CAM heatmaps on the boxed test images (pointing game: share of heatmaps whose "
                    "maximum lies in the box; mass: mean share of the heatmap inside the box; empty: heatmaps with no "
                    "positive evidence, counted as misses). Target layer: the deepest ResNet stage whose map is at least "
                    "7 x 7 (layer4 at 224 px; layer2 at 64 px, where layer4 is 2 x 2 and most of its heatmaps were empty).\n\n"
                    + tabulate(localisation.values.tolist(), headers=list(localisation.columns), tablefmt="pipe", floatfmt=".3f") + "\n")
        files = _write_table(out_dir, "localisation", markdown, render_latex(localisation.set_index("method"), "Grad-CAM localisation", "tab:localisation"), localisation)
        page.table("Grad-CAM localisation scores", markdown, files, render_html_frame(localisation.round(3), "Grad-CAM localisation", "localisation"))
        written += files
    return written


def _segmentation(results_dir, records, out_dir, page, tables) -> list[Path]:
    """Figure 3 (segmentation)"""
    files = figures.segmentation_figures(results_dir, records, out_dir / "segmentation")
    page.figure("Figure 3: segmentation Dice per method and overlays", files)
    return files


def _pretraining(results_dir, records, out_dir, page, tables) -> list[Path]:
    """Pretraining curves"""
    files = figures.pretraining_figures(results_dir, out_dir / "pretraining")
    page.figure("Pretraining: loss curves, and what each method logs beyond its loss", files)
    return files


PAGE_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1400px;margin:auto;padding:0 16px;color:#222}
nav{columns:2;font-size:14px;background:#f6f6f6;padding:8px 16px;border-radius:4px}
nav a{display:block;padding:1px 0}
.scroll{overflow-x:auto;margin-bottom:6px}
table.results,table.dataframe{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
table.results caption{caption-side:top;text-align:left;font-size:13px;color:#444;padding:4px 0 8px;max-width:1300px;min-width:min(70em,92vw)}
table.results th,table.results td,table.dataframe th,table.dataframe td{border-bottom:1px solid #ddd;padding:3px 8px;white-space:nowrap}
table.results thead th,table.dataframe thead th{position:sticky;top:0;background:#fff;z-index:1}
table.results td{text-align:center}
img{max-width:100%;height:auto}
.footnote{font-size:12px;color:#555}
details{margin:8px 0}
"""


def _anchor(index: int, title: str) -> str:
    return f"s{index}-" + "".join(ch if ch.isalnum() else "-" for ch in title.lower())[:40]


def _write_pages(page: _Page, out_dir: Path) -> list[Path]:
    markdown = [f"# {page.title}\n"]
    anchors = [_anchor(index, title) for index, (_, title, _) in enumerate(page.items)]
    contents = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, (kind, title, _) in zip(anchors, page.items)
                       if kind != "note")
    body = [f"<h1>{html.escape(page.title)}</h1>", f"<nav>{contents}</nav>"]
    for anchor, (kind, title, payload) in zip(anchors, page.items):
        markdown.append(f"\n## {title}\n")
        heading = f'<h2 id="{anchor}">{html.escape(title)}</h2>'
        if kind == "table":
            text, files, table_html = payload
            markdown.append(text + "\nFiles: " + ", ".join(f"[{p.name}]({p.name})" for p in files) + "\n")
            shown = f'<div class="scroll">{table_html}</div>' if table_html else f"<pre>{html.escape(text)}</pre>"
            body.append(heading + shown + "<p>Files: " + ", ".join(f'<a href="{p.name}">{p.name}</a>' for p in files) + "</p>")
        elif kind == "figure":
            pngs = [p for p in payload if p.suffix == ".png"]
            markdown.append("".join(f"![{title}]({png.name})\n\n" for png in pngs)
                            + ", ".join(f"[{p.name}]({p.name})" for p in payload) + "\n")
            body.append(heading)
            for png in pngs:
                data = base64.b64encode(png.read_bytes()).decode()
                body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
            body.append("<p>Files: " + ", ".join(f'<a href="{p.name}">{p.name}</a>' for p in payload) + "</p>")
        elif kind == "note":
            markdown.append(payload + "\n")
            body.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "link":
            text, path = payload
            markdown.append(f"{text}[{path.name}]({path.name})\n")
            body.append(heading + f'<p>{html.escape(text)}<a href="{path.name}">{path.name}</a></p>')
        else:
            frame, folded = payload
            markdown.append(tabulate(frame.values.tolist(), headers=list(frame.columns), tablefmt="pipe") + "\n")
            table_html = f'<div class="scroll">{frame.to_html(index=False, border=0, escape=True)}</div>'
            body.append(heading + (f"<details><summary>{len(frame)} rows</summary>{table_html}</details>" if folded else table_html))
    index_md, index_html = out_dir / "index.md", out_dir / "index.html"
    atomic_write_bytes(index_md, "\n".join(markdown).encode())
    atomic_write_bytes(index_html, (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                                    f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                                    f"<title>{html.escape(page.title)}</title><style>{PAGE_STYLE}</style></head><body>"
                                    + "\n".join(body) + "</body></html>").encode())
    return [index_md, index_html]
