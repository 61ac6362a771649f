import json

import pytest

from cxrbench.reports.tables import build_table, load_records, write_report


def write_record(directory, method, auroc, fraction=1.0, seed=0, protocol="finetune", baseline=False, display=None):
    cell = {"method": method, "dataset": "phantom-nih", "protocol": protocol, "label_fraction": fraction, "seed": seed}
    record = {"cell": cell, "method_display_name": display or method, "method_is_baseline": baseline,
              "metrics": {"mean_auroc": auroc}}
    path = directory / "cells" / f"{method}__{protocol}__{fraction}__{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_deltas_bold_and_seed_spread(tmp_path):
    write_record(tmp_path, "sup1", 0.60, baseline=True, display="Sup.1")
    write_record(tmp_path, "sup2", 0.70, baseline=True, display="Sup.2")
    write_record(tmp_path, "vicreg", 0.72, seed=0, display="VICReg")
    write_record(tmp_path, "vicreg", 0.76, seed=1, display="VICReg")
    table, summary, baseline = build_table(load_records(tmp_path), "finetune")
    assert baseline == "sup2"
    cells = dict(zip(table.index, table.iloc[:, 0]))
    assert list(table.index) == ["Sup.1", "Sup.2 (bs)", "VICReg"]  # baselines first
    assert cells["Sup.1"] == "60.0 (-10.0)↓"
    assert cells["Sup.2 (bs)"] == "70.0"
    assert cells["VICReg"] == "**74.0 ± 2.8 (+4.0)↑**"  # mean of 72 and 76, sample std 2.83
    assert summary.loc[summary["method"] == "vicreg", "seeds"].item() == 2


def test_baseline_falls_back_to_sup1_and_caption_says_so(tmp_path):
    write_record(tmp_path, "sup1", 0.6, baseline=True, display="Sup.1")
    write_record(tmp_path, "vicreg", 0.5, display="VICReg")
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "table1_finetune.md").read_text()
    assert "Sup.1 (random init), because Sup.2 has no records" in text
    assert "50.0 (-10.0)↓" in text and "**60.0**" in text
    assert not (tmp_path / "out" / "table2_frozen.md").exists()


def test_a_broken_record_is_named(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_records(tmp_path)
