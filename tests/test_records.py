"""The record schemas: what the runner writes reads back the same, old records read as new ones,
and a bad field is named."""

from __future__ import annotations

import json
import math

import pytest

from cxrbench.records.layout import ResultsFolder
from cxrbench.records.schema import (SCHEMA_VERSION, Cell, CellRecord, PretrainRecord, RecordError, choose_baseline,
                                     read_record, record_problem)


def _cell_record(**changes) -> CellRecord:
    values = dict(cell=Cell("simclr", "phantom-nih", "frozen", 10.0, 1), metrics={"mean_auroc": 0.61},
                  method_display_name="SimCLR", bootstrap={"low": 0.55, "high": 0.67}, predictions_file="x.predictions.npz",
                  selection={"curve": [[100, 0.5], [200, 0.6]]})
    return CellRecord(**(values | changes))


def test_a_cell_record_reads_back_as_written_with_its_version():
    record = _cell_record(method_baseline_rank=None, timing={"train_s": 1.5})
    data = json.loads(json.dumps(record.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION and data["cell"]["label_fraction"] == 10.0
    assert CellRecord.from_json(data) == record
    assert record.interval_bound("low") == 0.55 and record.validation_curve() == [[100, 0.5], [200, 0.6]]
    assert record.score("mean_auroc") == 0.61 and record.score("dice_per_image") is None


def test_a_version_one_record_reads_with_the_baseline_order_and_random_init_it_implied():
    """Records written before the schema had no version and named baselines by is_baseline alone."""
    old = {key: value for key, value in _cell_record().to_json().items()
           if key not in ("schema_version", "method_baseline_rank", "method_is_random_init")}
    read = {name: CellRecord.from_json(old | {"cell": old["cell"] | {"method": name}, "method_is_baseline": baseline})
            for name, baseline in (("sup2", True), ("sup1", True), ("simclr", False))}
    assert [read[name].method_baseline_rank for name in ("sup2", "sup1", "simclr")] == [0, 1, None]
    assert [read[name].method_is_random_init for name in ("sup2", "sup1", "simclr")] == [False, True, False]
    assert all(record.schema_version == SCHEMA_VERSION for record in read.values())
    assert choose_baseline({name: r.method_baseline_rank for name, r in read.items() if r.method_is_baseline}) == "sup2"
    assert choose_baseline({"sup1": 1}) == "sup1" and choose_baseline({}) is None


@pytest.mark.parametrize("change, named", [
    ({"cell": {"method": "a", "dataset": "b", "protocol": "frozen", "label_fraction": 0, "seed": 0}}, "cell.label_fraction"),
    ({"cell": {"method": "a", "dataset": "b", "protocol": "frozen", "label_fraction": 1, "seed": "0"}}, "cell.seed"),
    ({"metrics": {"mean_auroc": 1.5}}, "metrics.mean_auroc"),
    ({"metrics": {"mean_auroc": math.inf}}, "metrics.mean_auroc"),
    ({"metrics": [0.5]}, "metrics"),
    ({"predictions_file": "../elsewhere.npz"}, "predictions_file"),
    ({"method_baseline_rank": "first"}, "method_baseline_rank"),
    ({"schema_version": 99}, "schema_version"),
])
def test_a_bad_field_is_named_with_its_file(tmp_path, change, named):
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(_cell_record().to_json() | change))
    with pytest.raises(RecordError) as raised:
        read_record(path)
    assert str(raised.value).startswith(f"{path}: {named} ") and raised.value.reason.startswith(named)


def test_the_runner_counts_a_cell_done_even_when_its_score_is_unusable(tmp_path):
    """A record whose score is NaN is complete (the cell is not redone every run); the report
    leaves it out."""
    folder = ResultsFolder(tmp_path)
    record = _cell_record(metrics={"mean_auroc": math.nan})
    path = folder.cell_record(record.cell.record_name)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record.to_json()))
    (path.parent / record.predictions_file).write_bytes(b"")
    assert record_problem(path, record.cell) is None
    assert "holds another cell" in record_problem(path, Cell("simclr", "phantom-nih", "frozen", 10.0, 2))
    with pytest.raises(RecordError, match="metrics.mean_auroc"):
        read_record(path)
    (path.parent / record.predictions_file).unlink()
    assert record_problem(path, record.cell) == "its predictions file x.predictions.npz is missing"


def test_a_pretraining_record_needs_its_method_dataset_and_time(tmp_path):
    record = PretrainRecord(method="vicreg", pretrain_dataset="phantom-nih", seconds=12.5, history=[{"epoch": 1, "loss": 3.0}])
    assert PretrainRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    for missing in ("method", "pretrain_dataset", "seconds"):
        data = record.to_json()
        del data[missing]
        with pytest.raises(RecordError, match=missing):
            PretrainRecord.from_json(data)
