"""bench run -> records -> bench report, resumability, and a record that survives a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from cxrbench.benchmark.cli import main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--methods", "vicreg,sup1", "--protocol", "finetune", "--profile", "smoke", "--out", str(out)]) == 0
    assert main(["run", "--methods", "vicreg,sup1", "--protocol", "frozen", "--profile", "smoke", "--out", str(out)]) == 0
    return out


def test_every_cell_has_a_complete_record(smoke_run):
    records = sorted((smoke_run / "cells").glob("*.json"))
    assert len(records) == 2 * 2 * 3  # methods x protocols x fractions
    for path in records:
        record = json.loads(path.read_text())
        assert set(record["cell"]) == {"method", "dataset", "protocol", "label_fraction", "seed"}
        assert 0 <= record["metrics"]["mean_auroc"] <= 1
        assert set(record["metrics"]["per_class_auroc"]) == set(record["label_columns"])
        assert record["config"]["profile"]["name"] == "smoke"
        assert {"pretrain_s", "train_s", "test_s"} <= set(record["timing"])
        assert record["environment"]["packages"]["torch"]
        assert (path.parent / record["predictions_file"]).is_file()
    vicreg = json.loads((smoke_run / "cells" / "vicreg__phantom-nih__frozen__100pct__seed0.json").read_text())
    assert vicreg["config"]["method_hyperparameters"]["expander_dim"] == 256
    assert vicreg["pretrain_record"] == "pretrain/vicreg__phantom-nih"


def test_pretraining_happens_once_and_is_reused(smoke_run):
    pretrain_dirs = sorted(p.name for p in (smoke_run / "pretrain").iterdir())
    assert pretrain_dirs == ["vicreg__phantom-nih"]  # Sup.1 has no pretraining stage
    history = json.loads((smoke_run / "pretrain" / "vicreg__phantom-nih" / "record.json").read_text())["history"]
    assert history and history[-1]["step"] == 4


def test_rerun_skips_finished_cells_and_writes_no_duplicate(smoke_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "cells").iterdir()}
    assert main(["run", "--methods", "vicreg,sup1", "--protocol", "frozen,finetune", "--profile", "smoke", "--out", str(smoke_run)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "cells").iterdir()}
    assert before == after
    out = capsys.readouterr().out
    assert "12 of 12 cells already have a record" in out
    # the end of a run: the learning check against Sup.1, and a report folder that is not a committed one
    assert "learning check against random initialisation (Sup.1)" in out
    assert f"--out {smoke_run / 'report'}" in out and "reports/" not in out


def test_report_renders_table_one_and_two(smoke_run, tmp_path):
    assert main(["report", "--results", str(smoke_run), "--out", str(tmp_path)]) == 0
    finetune = (tmp_path / "table1_finetune.md").read_text()
    frozen = (tmp_path / "table2_frozen.md").read_text()
    for table in (finetune, frozen):
        assert "Sup.1 (bs)" in table and "VICReg" in table and "phantom-nih 1%" in table
        assert "Sup.1 (random init), because Sup.2 has no records" in table
        assert "**" in table  # a best value per column
    assert (tmp_path / "table1_finetune.csv").read_text().startswith("method,")


def test_a_killed_run_keeps_finished_records_and_resumes(tmp_path):
    """SIGKILL in the middle of a run: every record on disk is complete, and re-running finishes the rest."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cxrbench", "run", "--methods", "sup1", "--protocol", "finetune",
               "--profile", "smoke", "--fractions", "1,10,100", "--seeds", "0,1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 900  # a bound for a busy machine, not a timing: the wait is for the first record
    while time.time() < deadline and not list(out.glob("cells/*.json")) and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    assert 1 <= len(finished) < 6, "the kill should land mid-run"
    for content in finished.values():
        json.loads(content)  # complete JSON, never a half-written file
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    assert len(records) == 6
    assert all(records[name] == content for name, content in finished.items())


def test_the_whole_grid_runs_for_every_method_and_sup2_without_weights_is_reported_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no cached ImageNet weights
    out = tmp_path / "all"
    assert main(["run", "--methods", "all", "--protocol", "all", "--profile", "smoke", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    ran = {record["cell"]["method"] for record in records}
    # every paper method; the OPTiML ablation variants run through their group, not through "all"
    assert ran == {"sup1", "simclr", "mocov2", "byol", "simsiam", "vicreg", "densecl", "pcrlv2", "optiml"}
    for method in ran:  # frozen, finetune (phantom-nih) and segmentation (phantom-siim) at 1, 10, 100 %
        cells = {(r["cell"]["protocol"], r["cell"]["dataset"], r["cell"]["label_fraction"]) for r in records if r["cell"]["method"] == method}
        assert cells == {(protocol, dataset, fraction) for protocol, dataset in
                         [("frozen", "phantom-nih"), ("finetune", "phantom-nih"), ("segmentation", "phantom-siim")]
                         for fraction in (1.0, 10.0, 100.0)}
    for record in records:
        interval = record["bootstrap"]
        assert 0 <= interval["low"] <= interval["high"] <= 1 and interval["resamples_defined"] > 0, record["cell"]
    segmentation = [r for r in records if r["cell"]["protocol"] == "segmentation"]
    assert all({"dice_per_image", "dice_global", "iou_per_image", "hd95"} <= set(r["metrics"]) for r in segmentation)
    # the paired tests against the baseline row cover every other method's cells
    tests = pd.read_csv(out / "paired-tests.csv")
    assert set(tests["method"]) == ran - {"sup1"} and set(tests["baseline"]) == {"sup1"}
    assert len(tests) == (len(ran) - 1) * 9 and tests["p_value"].between(0, 1).all()
    assert "missing: sup2: ResNet-18 ImageNet weights are not in the torch hub cache" in stdout
    for method in ran - {"sup1"}:
        record = json.loads((out / "pretrain" / f"{method}__phantom-nih" / "record.json").read_text())
        assert record["diagnostics"]["pretrained"]["effective_rank"] > 1
        assert record["diagnostics"]["pretrained"]["relative_weight_change"] > 0


def test_optiml_ablation_group_runs_and_renders_table_three(tmp_path, capsys):
    out = tmp_path / "ablation"
    assert main(["run", "--methods", "optiml-ablation", "--protocol", "finetune", "--profile", "smoke",
                 "--fractions", "1,10", "--out", str(out)]) == 0
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted({r["cell"]["method"] for r in records}) == ["optiml", "optiml-no-cvsim", "optiml-no-varcov", "optiml-ot-only"]
    for method in ("optiml", "optiml-ot-only"):
        history = json.loads((out / "pretrain" / f"{method}__phantom-nih" / "record.json").read_text())["history"]
        assert {"ot", "mu_entropy", "plan_entropy", "sinkhorn_iterations", "feature_std"} <= set(history[-1])
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table3_ablation.md").read_text()
    assert "var+cov" in table and "CV-SIM" in table and table.count("✓") == 4 and table.count("✗") == 4


def test_the_report_of_a_smoke_run_has_every_table_and_figure(tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    assert main(["run", "--methods", "sup1,simclr", "--protocol", "all", "--profile", "smoke", "--fractions", "1,100",
                 "--seeds", "0,1", "--out", str(out)]) == 0
    report = tmp_path / "report"
    assert main(["report", "--results", str(out), "--out", str(report)]) == 0
    names = {p.name for p in report.iterdir()}
    for stem in ("table1_finetune", "table2_frozen", "segmentation", "localisation"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names
    for stem in ("label_efficiency_finetune", "label_efficiency_frozen", "label_efficiency_segmentation", "gradcam",
                 "segmentation_dice", "segmentation_overlays", "pretraining_loss"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        pixels = np.asarray(Image.open(report / f"{stem}.png").convert("L"), dtype=float)
        assert min(pixels.shape) > 150 and pixels.std() > 5  # a drawn figure, not a blank canvas
    # Grad-CAM: every fine-tune cell at 1 % scored its heatmaps against the phantom's boxes
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*finetune__1pct*.json")]
    assert len(records) == 4 and all(r["metrics"]["localisation"]["num_heatmaps"] > 0 for r in records)
    assert all(0 <= r["metrics"]["localisation"]["pointing_game"] <= 1 for r in records)
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64") >= 8 and "Provenance of every cell" in page  # the leaderboard chart too
    # the paired tests are linked (a copy beside the page), not printed row by row
    assert 'href="paired-tests.csv"' in page and (report / "paired-tests.csv").is_file() and "bootstrap_p_value" not in page
    assert "[paired-tests.csv](paired-tests.csv)" in (report / "index.md").read_text()
    assert "<pre>" not in page and page.count('<table id="T_') >= 5  # HTML tables, not Markdown in a block
    assert "± " in (report / "table1_finetune.md").read_text()  # two seeds: mean ± std


def test_a_damaged_or_foreign_record_never_blocks_the_folder(tmp_path, capsys):
    """A truncated record is moved aside (not deleted) and its cell redone; a foreign file is left out."""
    out = tmp_path / "run"
    command = ["run", "--methods", "sup1", "--protocol", "frozen", "--profile", "smoke", "--fractions", "10,100", "--out", str(out)]
    assert main(command) == 0
    record = out / "cells" / "sup1__phantom-nih__frozen__100pct__seed0.json"
    complete = json.loads(record.read_text())
    damaged = record.read_bytes()[: len(record.read_bytes()) // 2]
    record.write_bytes(damaged)
    (out / "cells" / "extra.json").write_text('{"hello": 1}')
    capsys.readouterr()
    assert main(command) == 0
    said = capsys.readouterr().out
    assert "unreadable" in said and "evaluated again" in said
    assert json.loads(record.read_text())["metrics"] == complete["metrics"]  # redone, the same result
    aside = list((out / "cells" / "damaged").iterdir())
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, not deleted
    assert (out / "cells" / "extra.json").is_file()  # a foreign file is not touched
    assert "1 of 2 cells already have a record" in said


def test_a_truncated_encoder_or_empty_run_json_is_one_line_naming_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    command = ["run", "--methods", "vicreg", "--protocol", "frozen", "--profile", "smoke", "--fractions", "100", "--out", str(out)]
    assert main(command) == 0
    encoder = out / "pretrain" / "vicreg__phantom-nih" / "encoder.pth"
    encoder.write_bytes(encoder.read_bytes()[:1000])
    (out / "cells" / "vicreg__phantom-nih__frozen__100pct__seed0.json").unlink()
    capsys.readouterr()
    assert main(command) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(encoder) in lines[0] and "resumes from its last checkpoint" in lines[0]
    # a zero-byte run.json in a folder with records: one line, nothing written
    (out / "run.json").write_text("")
    assert main(command) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "run.json is unreadable" in lines[0]


def test_a_folder_without_records_takes_a_new_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"profile": {"name": "quick"}, "created": "earlier"}))  # left by a failed start
    assert main(["run", "--methods", "sup1", "--protocol", "frozen", "--profile", "smoke", "--fractions", "100",
                 "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["profile"]["name"] == "smoke"


def test_a_method_can_be_tuned_in_a_folder_that_holds_only_other_methods_records(tmp_path, capsys):
    """``methods.NAME`` applies to NAME's records only: changing MoCo v2's entry leaves a folder of
    Sup.1 records usable (and run.json follows), changing a global key or the entry of a method
    with records there is refused, an ablation variant's records guard its parent's entry."""
    from cxrbench.benchmark.profiles import apply_overrides, load_profile
    from cxrbench.benchmark.runner import Runner

    out = tmp_path / "run"
    command = ["run", "--methods", "sup1", "--protocol", "frozen", "--profile", "smoke", "--fractions", "100", "--out", str(out)]
    assert main(command) == 0
    assert main(command + ["--set", "methods.mocov2.base_lr=0.3"]) == 0
    assert json.loads((out / "run.json").read_text())["profile"]["methods"]["mocov2"]["base_lr"] == 0.3
    capsys.readouterr()
    assert main(command + ["--set", "pretrain.epochs=3"]) == 2
    assert "pretrain.epochs" in capsys.readouterr().err
    smoke = load_profile("smoke")
    (out / "cells" / "optiml-ot-only__phantom-nih__frozen__100pct__seed0.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"profile": smoke, "created": "earlier"}))
    assert Runner.configuration_conflict(out, apply_overrides(smoke, ["methods.mocov2.base_lr=0.3"])) is None
    conflict = Runner.configuration_conflict(out, apply_overrides(smoke, ["methods.optiml.base_lr=0.3"]))
    assert conflict is not None and "methods.optiml.base_lr" in conflict


def test_two_runs_into_one_folder_compute_each_cell_once(tmp_path):
    """Started together after the encoder exists, two runs share the cells through their claims."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "cxrbench", "run", "--methods", "vicreg", "--protocol", "frozen", "--profile", "smoke",
            "--out", str(out)]
    subprocess.run(base + ["--fractions", "100", "--seeds", "0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (out / "cells" / "vicreg__phantom-nih__frozen__100pct__seed0.json").unlink()  # the encoder stays
    for stale in (out / "cells").glob("*.npz"):
        stale.unlink()
    both = [subprocess.Popen(base + ["--seeds", "0,1,2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [process.communicate(timeout=1800)[0] for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    computed = [line for text in outputs for line in text.splitlines() if "frozen" in line and "mean_auroc" in line]
    assert len(computed) == 9, computed  # 3 fractions x 3 seeds, each evaluated by one of the two runs
    assert len(list((out / "cells").glob("*.json"))) == 9
    assert not list((out / "cells" / "claims").glob("*.json"))  # every claim released
