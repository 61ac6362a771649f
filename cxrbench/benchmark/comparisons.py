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
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.benchmark.records import atomic_write_bytes
from cxrbench.benchmark.statistics import exact_paired_test, holm_reject, paired_bootstrap_test, statistic_from_predictions

# The paper's baseline row: Sup.2 (ImageNet init), or Sup.1 (random init) without it.
BASELINE_PREFERENCE = ("sup2", "sup1")

COLUMNS = ["method", "dataset", "protocol", "label_fraction", "seed", "baseline", "statistic",
           "difference", "low", "high", "test", "p_value", "bootstrap_p_value", "resamples", "record_created",
           "baseline_created", "resamples_requested", "backbones"]
NEEDED = ("image_ids", "scores", "targets", "dice")  # the arrays a test reads (not heatmaps or masks)


def _cell_records(results_dir: Path) -> list[dict]:
    """The readable cell records; a file that is not one (damaged, foreign) is left out."""
    records = []
    for path in sorted((Path(results_dir) / "cells").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get("cell"), dict):
            continue
        record["_path"] = path
        records.append(record)
    return records


def _has_predictions(record: dict) -> bool:
    """A record whose predictions file is there (a missing one leaves the cell out of the tests)."""
    name = record.get("predictions_file")
    return isinstance(name, str) and bool(name) and Path(name).name == name and record["_path"].with_name(name).is_file()


def _predictions(record: dict) -> dict:
    with np.load(record["_path"].with_name(record["predictions_file"])) as stored:
        return {key: stored[key] for key in NEEDED if key in stored.files}


def paired_tests(results_dir: Path, *, resamples: int = 1000, seed: int = 0, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (non-baseline cell with a baseline counterpart).

    A row of ``previous`` whose two records have not changed since (same creation times, same
    number of resamples asked for) is kept instead of being recomputed, so re-running a
    finished grid is cheap.
    """
    records = [record for record in _cell_records(results_dir) if _has_predictions(record)]
    present = {record["cell"]["method"] for record in records}
    baseline = next((name for name in BASELINE_PREFERENCE if name in present), None)
    if baseline is None:
        return pd.DataFrame(columns=COLUMNS)
    reusable = {}
    if previous is not None and "backbones" not in previous.columns:  # written before ResNet-50 rows existed
        previous = previous.assign(backbones="resnet18")
    if previous is not None and set(COLUMNS) <= set(previous.columns):
        for row in previous.to_dict("records"):
            reusable[(row["method"], row["dataset"], row["protocol"], float(row["label_fraction"]), int(row["seed"]),
                      row["baseline"], str(row["record_created"]), str(row["baseline_created"]), int(row["resamples_requested"]))] = row

    def key(record):
        cell = record["cell"]
        return cell["dataset"], cell["protocol"], float(cell["label_fraction"]), int(cell["seed"])

    baseline_cells = {key(record): record for record in records if record["cell"]["method"] == baseline}
    rows = []
    for record in records:
        reference = baseline_cells.get(key(record))
        if reference is None or record["cell"]["method"] == baseline:
            continue
        dataset, protocol, fraction, cell_seed = key(record)
        identity = (record["cell"]["method"], dataset, protocol, fraction, cell_seed, baseline,
                    str(record.get("created")), str(reference.get("created")), int(resamples))
        # "resnet50 vs resnet18" where an encoder row of another trunk meets the baseline: the
        # difference is then the checkpoint's and the backbone's together, and the CSV says so
        backbones = " vs ".join(dict.fromkeys(r.get("method_backbone", "resnet18") for r in (record, reference)))
        if identity in reusable:
            rows.append([reusable[identity][column] for column in COLUMNS[:-1]] + [backbones])
            continue
        ours, theirs = _predictions(record), _predictions(reference)
        if not np.array_equal(ours["image_ids"], theirs["image_ids"]):
            continue  # not the same test images (another data version): no paired test
        name, statistic_ours = statistic_from_predictions(ours)
        _, statistic_theirs = statistic_from_predictions(theirs)
        test = paired_bootstrap_test(statistic_ours, statistic_theirs, len(ours["image_ids"]), resamples=resamples, seed=seed)
        exact = exact_paired_test(ours, theirs)
        rows.append([record["cell"]["method"], dataset, protocol, fraction, cell_seed, baseline, name,
                     test.difference, test.low, test.high, exact.test, exact.p_value, test.p_value, test.resamples,
                     str(record.get("created")), str(reference.get("created")), int(resamples), backbones])
    return pd.DataFrame(rows, columns=COLUMNS)


def exact_test_between(results_dir: Path, record_file_a: str, record_file_b: str):
    """The exact paired test (DeLong / paired t) of two records' headline scores, or None when
    they did not predict the same test images or a record has no stored predictions."""
    results_dir = Path(results_dir)
    records = []
    for name in (record_file_a, record_file_b):
        record = json.loads((results_dir / name).read_text())
        record["_path"] = results_dir / name
        if not record.get("predictions_file") or not (record["_path"].with_name(record["predictions_file"])).is_file():
            return None
        records.append(_predictions(record))
    first, second = records
    if not np.array_equal(first["image_ids"], second["image_ids"]):
        return None
    return exact_paired_test(first, second)


def write_paired_tests(results_dir: Path, *, resamples: int = 1000) -> Path:
    path = Path(results_dir) / "paired-tests.csv"
    previous = pd.read_csv(path) if path.is_file() else None
    table = paired_tests(results_dir, resamples=resamples, previous=previous)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


RANDOM_INIT = "sup1"  # the row a method must beat to have learned anything: a random network
LEARNING_COLUMNS = ["method", "display_name", "protocol", "dataset", "label_fraction", "seeds", "difference", "low", "high",
                    "p_value", "significant"]


def learning_check(results_dir: Path, alpha: float = 0.05) -> pd.DataFrame:
    """Every non-baseline method's cells against the random-initialisation row (Sup.1).

    One row per (method, protocol, dataset, fraction): the difference of the headline score
    (x 100, mean over seeds), its 95 % interval from the paired test (DeLong / paired t; the
    union over seeds), and whether it is significantly above Sup.1 after Holm over all rows
    of its protocol (several seeds: only when every seed's test is). ``did_not_learn`` reads it.
    """
    records = [record for record in _cell_records(results_dir) if _has_predictions(record)]
    random_init = {(r["cell"]["protocol"], r["cell"]["dataset"], float(r["cell"]["label_fraction"]), int(r["cell"]["seed"])): r
                   for r in records if r["cell"]["method"] == RANDOM_INIT}
    groups: dict[tuple, list] = {}
    for record in records:
        cell = record["cell"]
        if record.get("method_is_baseline") or cell["method"] == RANDOM_INIT:
            continue
        key = (cell["protocol"], cell["dataset"], float(cell["label_fraction"]), int(cell["seed"]))
        reference = random_init.get(key)
        if reference is None:
            continue
        ours, theirs = _predictions(record), _predictions(reference)
        if not np.array_equal(ours["image_ids"], theirs["image_ids"]):
            continue
        test = exact_paired_test(ours, theirs)
        groups.setdefault((cell["method"], record.get("method_display_name", cell["method"])) + key[:3], []).append(test)
    rows = []
    for (method, display, protocol, dataset, fraction), tests in sorted(groups.items()):
        differences = [t.difference for t in tests]
        same_sign = len({np.sign(d) for d in differences}) == 1
        p_value = max(t.p_value for t in tests) if same_sign and all(t.p_value == t.p_value for t in tests) else 1.0
        rows.append([method, display, protocol, dataset, fraction, len(tests), 100 * float(np.mean(differences)),
                     100 * min(t.difference - 1.96 * t.standard_error for t in tests),
                     100 * max(t.difference + 1.96 * t.standard_error for t in tests), p_value, False])
    table = pd.DataFrame(rows, columns=LEARNING_COLUMNS)
    for protocol, part in table.groupby("protocol"):
        rejected = holm_reject(list(part["p_value"]), alpha)
        table.loc[part.index, "significant"] = [r and d > 0 for r, d in zip(rejected, part["difference"])]
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
