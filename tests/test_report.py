import json
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.benchmark.cli import registered_display_names
from cxrbench.reports.report import write_report
from cxrbench.reports.tables import build_table, load_records


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
    # no predictions stored with these records, so nothing is tested: no arrow, the highest in bold
    assert cells["Sup.1"] == "60.0 (-10.0)"
    assert cells["Sup.2 (bs)"] == "70.0"
    assert cells["VICReg"] == "**74.0 ± 2.8 (+4.0)**"  # mean of 72 and 76, sample std 2.83
    assert summary.loc[summary["method"] == "vicreg", "seeds"].item() == 2


def test_baseline_falls_back_to_sup1_and_caption_says_so(tmp_path):
    write_record(tmp_path, "sup1", 0.6, baseline=True, display="Sup.1")
    write_record(tmp_path, "vicreg", 0.5, display="VICReg")
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "table1_finetune.md").read_text()
    assert "Sup.1 (random init), because Sup.2 has no records" in text
    assert "50.0 (-10.0)" in text and "↓" not in text and "**60.0**" in text
    assert "No paired predictions to test" in text
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
    assert "✓" in rows[-1] and "**66.0**" in rows[-1] and "**75.0**" in rows[-1]  # x 100, as Tables I and II
    ot_only = next(row for row in rows if "optiml-ot-only" in row)
    assert ot_only.count("✗") == 2 and "61.0" in ot_only


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


# the paper's table rows as printed (no prose): see tests/fixtures/README.md
PAPER = Path(__file__).resolve().parent / "fixtures" / "optiml-paper-tables.tsv"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "optiml-paper.csv"


def test_the_reference_file_is_the_papers_tables_transcribed():
    from cxrbench.methods import available_methods, get_method
    from cxrbench.reports.reference import transcribe

    # Table III's rows are named by the switches the ablation variants declare (one place: optiml.py)
    variants = {frozenset(get_method(name).ablation.items()): name
                for name in available_methods() if get_method(name).ablation is not None}
    assert len(variants) == 4
    stored = pd.read_csv(REFERENCE, keep_default_na=False, na_values={"printed_delta": [""]})
    pd.testing.assert_frame_equal(stored, transcribe(PAPER, variants), check_dtype=False)
    assert len(stored) == 2 * 10 * 9 + 4 * 2  # Tables I and II: 10 rows x 9 cells; Table III: 4 rows x 2
    # spot checks against the paper's text
    value = stored.set_index(["table", "method", "dataset", "fraction"])["value"]
    assert value[("I", "optiml", "nih", 1.0)] == 68.8 and value[("II", "sup2", "rsna", 1.0)] == 85.7
    assert value[("III", "optiml-ot-only", "nih", 10.0)] == 76.2


def test_paper_tables_recompute_deltas_bold_the_best_and_footnote_every_disagreement(tmp_path):
    written = write_report(None, tmp_path, reference=str(REFERENCE), display_names=registered_display_names())
    table = (tmp_path / "table1_finetune_paper.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines() if line.startswith("|")}
    assert rows["SimCLR"][1] == "74.8 (+0.2)"  # printed (1.3)↑: 74.8 - 74.6 is 0.2; no arrow: nothing to test
    assert "↑" not in "".join(sum(rows.values(), [])) and "publishes no intervals" in table
    assert all(cell.startswith("**") for cell in rows["OPTiML"])  # OPTiML is best in every column of Table I
    assert rows["Sup.2 (bs)"][0] == "67.8"
    # every printed delta that its own numbers contradict, and only those, is footnoted
    reference = pd.read_csv(REFERENCE, keep_default_na=False, na_values={"printed_delta": [""]})
    for paper_table, stem in (("I", "table1_finetune_paper"), ("II", "table2_frozen_paper")):
        part = reference[reference["table"] == paper_table]
        base = part[part["method"] == "sup2"].set_index(["dataset", "fraction"])["value"]
        expected = 0
        for row in part[part["method"] != "sup2"].itertuples():
            delta = round(row.value - base[(row.dataset, row.fraction)], 1)
            arrow = "↑" if delta > 0 else "↓" if delta < 0 else ""
            expected += abs(delta - row.printed_delta) > 0.05 or row.printed_arrow != arrow
        footnotes = [line for line in (tmp_path / f"{stem}.md").read_text().splitlines() if line.startswith("[")]
        assert len(footnotes) == expected > 0
    assert "[1] SimCLR, NIH 10%: printed (1.3)↑, recomputed from the table's numbers (+0.2)↑" in table
    latex = (tmp_path / "table1_finetune_paper.tex").read_text()
    assert "\\toprule" in latex and "\\textbf{68.8 (+1.0)}" in latex and "1\\%" in latex
    ablation = (tmp_path / "table3_ablation_paper.md").read_text()
    assert "**68.5**" in ablation and "**77.6**" in ablation  # x 100, as Tables I and II
    assert {p.name for p in written} >= {"index.md", "index.html", "table2_frozen_paper.csv", "table3_ablation_paper.tex"}


def test_ours_and_the_papers_side_by_side(tmp_path):
    write_record(tmp_path, "sup2", 0.70, baseline=True, display="Sup.2")
    write_record(tmp_path, "optiml", 0.75, display="OPTiML")
    write_report(tmp_path, tmp_path / "out", reference=str(REFERENCE))
    text = (tmp_path / "out" / "table1_finetune_vs_paper.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines() if line.startswith("|")}
    # neither source's delta is tested here (no stored predictions; the paper has no intervals)
    assert rows["OPTiML [ours]"][0] == "75.0 (+5.0)"  # phantom-nih 1 % shown under nih 1 %
    assert rows["OPTiML [paper]"][0] == "68.8 (+1.0)"
    assert list(rows).index("OPTiML [ours]") + 1 == list(rows).index("OPTiML [paper]")


def test_report_without_results_or_reference_is_a_one_line_error(capsys):
    from cxrbench.benchmark.cli import main

    assert main(["report"]) == 2
    assert "give --results DIR" in capsys.readouterr().err
    assert main(["report", "--reference", "no-such-paper"]) == 2
    assert "no-such-paper" in capsys.readouterr().err


def test_label_efficiency_curves_keep_optiml_and_leave_out_its_ablation_variants(tmp_path):
    from cxrbench.reports.figures import efficiency_rows

    write_record(tmp_path, "sup1", 0.6, baseline=True, display="Sup.1")
    for name, switches in (("optiml", {"var+cov": True, "CV-SIM": True}), ("optiml-ot-only", {"var+cov": False, "CV-SIM": False})):
        write_record(tmp_path, name, 0.7, display=name)
        path = tmp_path / "cells" / f"{name}__finetune__1.0__0.json"
        record = json.loads(path.read_text())
        record["method_ablation"] = switches
        path.write_text(json.dumps(record))
    rows = efficiency_rows(load_records(tmp_path), "finetune", "mean_auroc")
    assert set(rows["method"]) == {"sup1", "optiml"}


def test_latex_escapes_every_special_character_of_a_display_name():
    from cxrbench.reports.tables import _latex_escape

    assert _latex_escape("a$b{c}^d~e%f_g#h&i\\j") == "a\\$b\\{c\\}\\^{}d\\textasciitilde{}e\\%f\\_g\\#h\\&i\\textbackslash{}j"


def test_a_reference_that_is_no_csv_is_one_line(capsys):
    from cxrbench.benchmark.cli import main

    assert main(["report", "--reference", "/etc/passwd", "--out", "/tmp/never-written-report"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "/etc/passwd" in lines[0]


def test_curves_are_drawn_per_step_and_per_evaluation_from_the_records(tmp_path):
    """The pretraining figure reads each step's loss (not one point per epoch), the validation-curve
    figure every evaluation of a fine-tune cell; both come from the records alone."""
    from matplotlib.axes import Axes

    from cxrbench.reports.figures import pretraining_figures, validation_curves_figure

    for method, auroc in (("sup1", 0.6), ("vicreg", 0.7)):
        for fraction in (1.0, 100.0):
            write_record(tmp_path, method, auroc, fraction=fraction)
            path = tmp_path / "cells" / f"{method}__finetune__{fraction}__0.json"
            record = json.loads(path.read_text())
            record["selection"] = {"curve": [[100, 0.55], [200, 0.61], [300, auroc]]}
            path.write_text(json.dumps(record))
    pretrain = tmp_path / "pretrain" / "vicreg__phantom-nih"
    pretrain.mkdir(parents=True)
    steps = [{"step": step, "loss": 22.0 - 0.01 * step} for step in range(1, 201)]
    pretrain.joinpath("record.json").write_text(json.dumps(
        {"method": "vicreg", "pretrain_dataset": "phantom-nih", "seconds": 60.0,
         "history": [{"epoch": 1, "loss": 21.5}, {"epoch": 2, "loss": 20.5}], "step_history": steps}))
    drawn = []
    original = Axes.plot

    def recording_plot(axis, x, y, *args, **kwargs):
        drawn.append((list(x), list(y)))
        return original(axis, x, y, *args, **kwargs)

    Axes.plot = recording_plot
    try:
        written = pretraining_figures(tmp_path, tmp_path / "pretraining")
        assert any(len(x) == 200 and y[0] == pytest.approx(21.99) for x, y in drawn)  # raw per-step loss
        drawn.clear()
        written += validation_curves_figure(load_records(tmp_path), "finetune", "mean AUROC", tmp_path / "curves")
    finally:
        Axes.plot = original
    assert ([100, 200, 300], [55.0, 61.0, 70.0]) in [(list(map(int, x)), [round(v, 6) for v in y]) for x, y in drawn]
    assert len(drawn) == 4  # two methods x two label fractions
    assert all(path.stat().st_size > 0 for path in written) and len(written) == 4


def test_every_value_a_method_logs_beyond_its_loss_reaches_a_figure(tmp_path):
    """Each logged value gets a panel with a line per method that logs it; the loop's own columns
    (lr, images/s) and the loss (its own figure) do not."""
    from matplotlib.axes import Axes

    from cxrbench.reports.figures import pretraining_figures

    logged = {"byol": {"target_momentum": lambda step: 0.99 + step / 1e4}, "rotnet": {"rotation_accuracy": lambda step: step / 100}}
    for method, values in logged.items():
        directory = tmp_path / "pretrain" / f"{method}__phantom-nih"
        directory.mkdir(parents=True)
        steps = [{"step": step, "loss": 5.0 - step / 100, "lr": 0.1, "images_per_second": 30.0}
                 | {key: value(step) for key, value in values.items()} for step in range(1, 51)]
        directory.joinpath("record.json").write_text(json.dumps(
            {"method": method, "pretrain_dataset": "phantom-nih", "seconds": 10.0, "history": [{"epoch": 1, "loss": 4.8}],
             "step_history": steps}))
    panels = []
    original = Axes.plot

    def recording_plot(axis, x, y, *args, **kwargs):
        panels.append((axis, kwargs.get("label"), list(y)))
        return original(axis, x, y, *args, **kwargs)

    Axes.plot = recording_plot
    try:
        written = pretraining_figures(tmp_path, tmp_path / "pretraining")
    finally:
        Axes.plot = original
    assert {path.name for path in written} == {"pretraining_loss.png", "pretraining_loss.pdf", "pretraining_logs.png", "pretraining_logs.pdf"}
    titles = {axis.get_title() for axis, label, _ in panels if label is not None}
    assert titles == {"target_momentum", "rotation_accuracy"}  # not lr, images_per_second or loss
    by_panel = {(axis.get_title(), label) for axis, label, _ in panels if label is not None}
    assert by_panel == {("target_momentum", "byol"), ("rotation_accuracy", "rotnet")}
    raw = [y for axis, label, y in panels if axis.get_title() == "rotation_accuracy" and label is None]
    assert raw == [[step / 100 for step in range(1, 51)]]  # the per-step values as logged, drawn faint beside their average


def test_run_times_sum_each_methods_cells_per_protocol_and_take_its_pretraining_from_its_record(tmp_path):
    from cxrbench.reports.report import run_times

    for seed, seconds in ((0, 10.0), (1, 20.0)):
        write_record(tmp_path, "simclr", 0.6, seed=seed, protocol="frozen")
        path = tmp_path / "cells" / f"simclr__frozen__1.0__{seed}.json"
        record = json.loads(path.read_text())
        # the cell's own stages count; the pretraining it refers to (pretrain_s) is not counted again
        record["timing"] = {"pretrain_s": 999.0, "shared_s": 1.0, "train_s": seconds, "test_s": 2.0}
        record["environment"] = {"device_name": "cpu", "torch_threads": 2, "packages": {"torch": "2.14.1"}}
        path.write_text(json.dumps(record))
    (tmp_path / "pretrain" / "simclr__phantom-nih").mkdir(parents=True)
    (tmp_path / "pretrain" / "simclr__phantom-nih" / "record.json").write_text(json.dumps({"method": "simclr", "pretrain_dataset": "phantom-nih", "seconds": 1343.4}))
    frame = run_times(tmp_path)
    row = frame.set_index("method").loc["simclr"]
    assert row["pretraining_s"] == 1343.0 and row["frozen_cells"] == 2 and row["frozen_s"] == 36.0
    assert row["machine"] == "cpu, 2 threads, torch 2.14.1"
