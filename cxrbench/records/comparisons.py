"""Paired tests of every cell against the baseline row, from stored predictions.

A cell is compared with the baseline method's cell of the same dataset, protocol, label
fraction and seed (both predicted the same test images: this is checked, not assumed).
Each row has the difference, its 95 % paired-bootstrap interval, and the p-value of an
exact-resolution paired test: DeLong's test for mean AUROC, a paired t-test for per-image
Dice. (A bootstrap p-value cannot fall below 1 / (resamples + 1): with 1,000 resamples no
cell of a 72-cell table could pass a Holm correction at 5 %; it is kept as
``bootstrap_p_value``.) The result is ``paired-tests.csv`` in the run directory, rewritten
after every run so that it always covers every record present, whichever run wrote the
baseline's cells.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.records.io import atomic_write_bytes
from cxrbench.records.layout import ResultsFolder
from cxrbench.records.schema import CellRecord, RecordError, choose_baseline, read_record
from cxrbench.records.statistics import exact_paired_test, holm_reject, paired_bootstrap_test, statistic_from_predictions

COLUMNS = ["method", "dataset", "protocol", "label_fraction", "seed", "baseline", "statistic",
           "difference", "low", "high", "test", "p_value", "bootstrap_p_value", "resamples", "record_created",
           "baseline_created", "resamples_requested", "backbones"]
NEEDED = ("image_ids", "scores", "targets", "dice")  # the arrays a test reads (not heatmaps or masks)


@dataclass
class _Stored:
    """A cell record and the file it was read from (its predictions lie beside it)."""

    path: Path
    record: CellRecord

    @property
    def key(self) -> tuple:
        cell = self.record.cell
        return cell.dataset, cell.protocol, cell.label_fraction, cell.seed

    def has_predictions(self) -> bool:
        """Whether its predictions file is there (a missing one leaves the cell out of the tests)."""
        name = self.record.predictions_file
        return bool(name) and self.path.with_name(name).is_file()

    def predictions(self) -> dict:
        with np.load(self.path.with_name(self.record.predictions_file)) as stored:
            return {key: stored[key] for key in NEEDED if key in stored.files}


def _tested_records(results_dir: Path) -> list[_Stored]:
    """The valid cell records with their predictions; a file that is not one (damaged, foreign)
    or whose predictions are gone is left out."""
    stored = []
    for path in ResultsFolder(results_dir).cell_records():
        try:
            stored.append(_Stored(path, read_record(path)))
        except RecordError:
            continue
    return [entry for entry in stored if entry.has_predictions()]


def baseline_of(records) -> str | None:
    """The baseline row among ``records`` (CellRecords): the lowest ``method_baseline_rank``."""
    return choose_baseline({r.cell.method: r.method_baseline_rank for r in records if r.method_is_baseline})


def paired_tests(results_dir: Path, *, resamples: int = 1000, seed: int = 0, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (non-baseline cell with a baseline counterpart).

    A row of ``previous`` whose two records have not changed since (same creation times, same
    number of resamples asked for) is kept instead of being recomputed, so re-running a
    finished grid is cheap.
    """
    stored = _tested_records(results_dir)
    baseline = baseline_of(entry.record for entry in stored)
    if baseline is None:
        return pd.DataFrame(columns=COLUMNS)
    reusable = _reusable_rows(previous)
    baseline_cells = {entry.key: entry for entry in stored if entry.record.cell.method == baseline}
    rows = []
    for entry in stored:
        reference = baseline_cells.get(entry.key)
        if reference is None or entry.record.cell.method == baseline:
            continue
        method = entry.record.cell.method
        identity = (method, *entry.key, baseline, str(entry.record.created), str(reference.record.created), int(resamples))
        # "resnet50 vs resnet18" where an encoder row of another trunk meets the baseline: the
        # difference is then the checkpoint's and the backbone's together, and the CSV says so
        backbones = " vs ".join(dict.fromkeys(e.record.method_backbone for e in (entry, reference)))
        if identity in reusable:
            rows.append([reusable[identity][column] for column in COLUMNS[:-1]] + [backbones])
            continue
        row = _tested_row(entry.predictions(), reference.predictions(), resamples, seed)
        if row is not None:  # None: not the same test images (another data version), no paired test
            rows.append([method, *entry.key, baseline, *row, str(entry.record.created), str(reference.record.created),
                         int(resamples), backbones])
    return pd.DataFrame(rows, columns=COLUMNS)


def _reusable_rows(previous: pd.DataFrame | None) -> dict:
    """The rows of an earlier ``paired-tests.csv`` by what identifies their computation."""
    if previous is None:
        return {}
    if "backbones" not in previous.columns:  # written before ResNet-50 rows existed
        previous = previous.assign(backbones="resnet18")
    if not set(COLUMNS) <= set(previous.columns):
        return {}
    return {(row["method"], row["dataset"], row["protocol"], float(row["label_fraction"]), int(row["seed"]), row["baseline"],
             str(row["record_created"]), str(row["baseline_created"]), int(row["resamples_requested"])): row
            for row in previous.to_dict("records")}


def _tested_row(ours: dict, theirs: dict, resamples: int, seed: int) -> list | None:
    """[statistic, difference, low, high, test, p_value, bootstrap_p_value, resamples] of two
    cells' predictions, or None when they did not predict the same test images."""
    if not np.array_equal(ours["image_ids"], theirs["image_ids"]):
        return None
    name, statistic_ours = statistic_from_predictions(ours)
    _, statistic_theirs = statistic_from_predictions(theirs)
    test = paired_bootstrap_test(statistic_ours, statistic_theirs, len(ours["image_ids"]), resamples=resamples, seed=seed)
    exact = exact_paired_test(ours, theirs)
    return [name, test.difference, test.low, test.high, exact.test, exact.p_value, test.p_value, test.resamples]


def exact_test_between(results_dir: Path, record_file_a: str, record_file_b: str):
    """The exact paired test (DeLong / paired t) of two records' headline scores, or None when
    they did not predict the same test images or a record has no stored predictions."""
    entries = [_Stored(Path(results_dir) / name, read_record(Path(results_dir) / name)) for name in (record_file_a, record_file_b)]
    if not all(entry.has_predictions() for entry in entries):
        return None
    first, second = (entry.predictions() for entry in entries)
    if not np.array_equal(first["image_ids"], second["image_ids"]):
        return None
    return exact_paired_test(first, second)


def write_paired_tests(results_dir: Path, *, resamples: int = 1000) -> Path:
    path = ResultsFolder(results_dir).paired_tests
    previous = pd.read_csv(path) if path.is_file() else None
    table = paired_tests(results_dir, resamples=resamples, previous=previous)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


LEARNING_COLUMNS = ["method", "display_name", "protocol", "dataset", "label_fraction", "seeds", "difference", "low", "high",
                    "p_value", "significant"]


def learning_check(results_dir: Path, alpha: float = 0.05) -> pd.DataFrame:
    """Every non-baseline method's cells against the random-initialisation row (Sup.1).

    One row per (method, protocol, dataset, fraction): the difference of the headline score
    (x 100, mean over seeds), its 95 % interval from the paired test (DeLong / paired t; the
    union over seeds), and whether it is significantly above Sup.1 after Holm over all rows
    of its protocol (several seeds: only when every seed's test is). ``did_not_learn`` reads it.
    """
    stored = _tested_records(results_dir)
    random_init = {(e.record.cell.protocol, e.record.cell.dataset, e.record.cell.label_fraction, e.record.cell.seed): e
                   for e in stored if e.record.method_is_random_init}
    groups: dict[tuple, list] = {}
    for entry in stored:
        record = entry.record
        if record.method_is_baseline or record.method_is_random_init:
            continue
        key = (record.cell.protocol, record.cell.dataset, record.cell.label_fraction, record.cell.seed)
        reference = random_init.get(key)
        if reference is None:
            continue
        ours, theirs = entry.predictions(), reference.predictions()
        if np.array_equal(ours["image_ids"], theirs["image_ids"]):
            groups.setdefault((record.cell.method, record.method_display_name) + key[:3], []).append(exact_paired_test(ours, theirs))
    table = pd.DataFrame([_row_over_seeds(key, tests) for key, tests in sorted(groups.items())], columns=LEARNING_COLUMNS)
    for protocol, part in table.groupby("protocol"):
        rejected = holm_reject(list(part["p_value"]), alpha)
        table.loc[part.index, "significant"] = [r and d > 0 for r, d in zip(rejected, part["difference"])]
    return table


def _row_over_seeds(key: tuple, tests: list) -> list:
    """One row from a cell's paired tests, one per seed (against random initialisation, or between two
    methods): mean difference x 100, the union of the seeds' intervals, and the largest p-value when
    every seed's difference points the same way (else 1)."""
    differences = [t.difference for t in tests]
    same_sign = len({np.sign(d) for d in differences}) == 1
    p_value = max(t.p_value for t in tests) if same_sign and all(t.p_value == t.p_value for t in tests) else 1.0
    return [*key, len(tests), 100 * float(np.mean(differences)), 100 * min(t.difference - 1.96 * t.standard_error for t in tests),
            100 * max(t.difference + 1.96 * t.standard_error for t in tests), p_value, False]


PAIR_COLUMNS = ["method_a", "method_b", "protocol", "dataset", "label_fraction", "seeds", "difference", "low", "high",
                "p_value", "significant", "display_a", "display_b"]


def method_pairs(results_dir: Path, protocol: str, label_fraction: float, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of the suite's self-supervised methods (built-in or plugin; not the baseline,
    random initialisation or an ``--encoder`` row, whose trunk and training may differ) compared
    with each other on each dataset at one label fraction: does the benchmark tell them apart?

    One row per (pair, dataset): the difference a - b of the headline score (x 100, mean over the
    seeds both methods have), its 95 % interval (the union over those seeds) and the p-value of the
    paired test (DeLong / paired t on the same test images; with several seeds a pair counts only
    when every one of those seeds' tests does, in the same direction). ``significant`` is Holm over
    all the rows, one family.
    """
    entries = {}
    for entry in _tested_records(results_dir):
        record, cell = entry.record, entry.record.cell
        suite_method = not (record.method_is_baseline or record.method_is_random_init or record.method_provenance)
        if suite_method and cell.protocol == protocol and cell.label_fraction == label_fraction:
            entries[(cell.method, cell.dataset, cell.seed)] = entry
    names = {method: entry.record.method_display_name for (method, _, _), entry in entries.items()}
    loaded: dict[tuple, dict] = {}

    def predictions(key: tuple) -> dict:
        # each cell's predictions are read once, not once per pair it is in
        if key not in loaded:
            loaded[key] = entries[key].predictions()
        return loaded[key]

    groups: dict[tuple, list] = {}
    for method_a, method_b in itertools.combinations(sorted(names), 2):
        shared = sorted((dataset, seed) for (method, dataset, seed) in entries if method == method_a and (method_b, dataset, seed) in entries)
        for dataset, seed in shared:
            first, second = predictions((method_a, dataset, seed)), predictions((method_b, dataset, seed))
            if np.array_equal(first["image_ids"], second["image_ids"]):
                groups.setdefault((method_a, method_b, protocol, dataset, label_fraction), []).append(exact_paired_test(first, second))
    rows = [_row_over_seeds(key, tests) + [names[key[0]], names[key[1]]] for key, tests in sorted(groups.items())]
    table = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    table["significant"] = holm_reject(list(table["p_value"]), alpha) if len(table) else []
    return table


# the protocol whose cells decide whether a method learned: the frozen probe measures the
# representation itself; fine-tuning trains the encoder further, and per-image Dice swings with
# whether a U-Net predicts empty masks, so those are shown but do not decide
VERDICT_PROTOCOLS = ("frozen", "finetune")


def decided_methods(check: pd.DataFrame) -> set[str]:
    """Methods with cells of a deciding protocol (frozen or fine-tune): only these get a verdict."""
    return set(check.loc[check["protocol"].isin(VERDICT_PROTOCOLS), "method"])


def did_not_learn(check: pd.DataFrame) -> dict[str, str]:
    """Methods not significantly above random initialisation in any cell of the deciding protocol
    (frozen where the method has frozen cells, else fine-tune): method -> the reason."""
    verdicts = {}
    for (method, display), part in check.groupby(["method", "display_name"]):
        protocol = next((name for name in VERDICT_PROTOCOLS if name in set(part["protocol"])), None)
        if protocol is None:
            continue
        deciding = part[part["protocol"] == protocol]
        if not deciding["significant"].any():
            verdicts[method] = (f"{display}: not significantly above random initialisation (Sup.1) in any of its "
                                f"{len(deciding)} {protocol} cell(s)")
    return verdicts
