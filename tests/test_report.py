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


def test_table_three_lists_the_ablation_switches_with_the_full_method_last(tmp_path):
    variants = {"optiml-ot-only": (False, False, 0.60), "optiml-no-cvsim": (True, False, 0.62),
                "optiml-no-varcov": (False, True, 0.61), "optiml": (True, True, 0.65)}
    for name, (varcov, cvsim, auroc) in variants.items():
        for fraction in (1.0, 10.0):
            write_record(tmp_path, name, auroc + fraction / 100, fraction=fraction, display=name)
            path = tmp_path / "cells" / f"{name}__finetune__{fraction}__0.json"
            record = json.loads(path.read_text())
            record["method_ablation"] = {"var+cov": varcov, "CV-SIM": cvsim}
            path.write_text(json.dumps(record))
    write_report(tmp_path, tmp_path / "out")
    lines = (tmp_path / "out" / "table3_ablation.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("|") and "optiml" in line]
    assert rows[-1].split("|")[1].strip() == "optiml"
    assert "✓" in rows[-1] and "**0.660**" in rows[-1] and "**0.750**" in rows[-1]
    ot_only = next(row for row in rows if "optiml-ot-only" in row)
    assert ot_only.count("✗") == 2 and "0.610" in ot_only


def test_columns_follow_the_paper_and_ablation_variants_stay_out_of_table_one(tmp_path):
    for dataset in ("phantom-rsna", "phantom-nih", "phantom-vindr"):
        write_record(tmp_path, "sup1", 0.6, baseline=True, display="Sup.1")
        path = tmp_path / "cells" / "sup1__finetune__1.0__0.json"
        record = json.loads(path.read_text())
        record["cell"]["dataset"] = dataset
        path.rename(path.with_name(f"sup1__{dataset}.json"))
        path.with_name(f"sup1__{dataset}.json").write_text(json.dumps(record))
    write_record(tmp_path, "optiml-ot-only", 0.5, display="OPTiML OT only")
    variant = tmp_path / "cells" / "optiml-ot-only__finetune__1.0__0.json"
    record = json.loads(variant.read_text())
    record["method_ablation"] = {"var+cov": False, "CV-SIM": False}
    variant.write_text(json.dumps(record))
    table, _, _ = build_table(load_records(tmp_path), "finetune")
    assert [dataset for dataset, _ in table.columns] == ["phantom-nih", "phantom-vindr", "phantom-rsna"]
    assert "OPTiML OT only" not in table.index
