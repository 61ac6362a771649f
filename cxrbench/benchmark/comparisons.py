"""Paired bootstrap tests of every cell against the baseline row, from stored predictions.

A cell is compared with the baseline method's cell of the same dataset, protocol, label
fraction and seed (both predicted the same test images: this is checked, not assumed).
The result is ``paired-tests.csv`` in the run directory, rewritten after every run so that
it always covers every record present, whichever run wrote the baseline's cells.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.benchmark.records import atomic_write_bytes
from cxrbench.benchmark.statistics import paired_bootstrap_test, statistic_from_predictions

# The paper's baseline row: Sup.2 (ImageNet init), or Sup.1 (random init) without it.
BASELINE_PREFERENCE = ("sup2", "sup1")

COLUMNS = ["method", "dataset", "protocol", "label_fraction", "seed", "baseline", "statistic",
           "difference", "low", "high", "p_value", "resamples", "record_created", "baseline_created", "resamples_requested"]
NEEDED = ("image_ids", "scores", "targets", "dice")  # the arrays a test reads (not heatmaps or masks)


def _cell_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted((Path(results_dir) / "cells").glob("*.json")):
        record = json.loads(path.read_text())
        record["_path"] = path
        records.append(record)
    return records


def _predictions(record: dict) -> dict:
    with np.load(record["_path"].with_name(record["predictions_file"])) as stored:
        return {key: stored[key] for key in NEEDED if key in stored.files}


def paired_tests(results_dir: Path, *, resamples: int = 1000, seed: int = 0, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (non-baseline cell with a baseline counterpart).

    A row of ``previous`` whose two records have not changed since (same creation times, same
    number of resamples asked for) is kept instead of being recomputed, so re-running a
    finished grid is cheap.
    """
    records = _cell_records(results_dir)
    present = {record["cell"]["method"] for record in records}
    baseline = next((name for name in BASELINE_PREFERENCE if name in present), None)
    if baseline is None:
        return pd.DataFrame(columns=COLUMNS)
    reusable = {}
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
        if identity in reusable:
            rows.append([reusable[identity][column] for column in COLUMNS])
            continue
        ours, theirs = _predictions(record), _predictions(reference)
        if not np.array_equal(ours["image_ids"], theirs["image_ids"]):
            continue  # not the same test images (another data version): no paired test
        name, statistic_ours = statistic_from_predictions(ours)
        _, statistic_theirs = statistic_from_predictions(theirs)
        test = paired_bootstrap_test(statistic_ours, statistic_theirs, len(ours["image_ids"]), resamples=resamples, seed=seed)
        rows.append([record["cell"]["method"], dataset, protocol, fraction, cell_seed, baseline, name,
                     test.difference, test.low, test.high, test.p_value, test.resamples,
                     str(record.get("created")), str(reference.get("created")), int(resamples)])
    return pd.DataFrame(rows, columns=COLUMNS)


def write_paired_tests(results_dir: Path, *, resamples: int = 1000) -> Path:
    path = Path(results_dir) / "paired-tests.csv"
    previous = pd.read_csv(path) if path.is_file() else None
    table = paired_tests(results_dir, resamples=resamples, previous=previous)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path
