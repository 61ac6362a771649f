"""The command line: bad input is one clear line, exit code 2, and nothing written."""

import os
import subprocess
import sys

import pytest

from cxrbench.benchmark.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--methods", "simclr-typo"], "simclr-typo"),
        (["--methods", "vicreg", "--datasets", "phantom-mnist"], "phantom-mnist"),
        (["--methods", "vicreg", "--profile", "huge"], "huge"),
        (["--methods", "vicreg", "--protocol", "probe"], "probe"),
        (["--methods", "vicreg", "--fractions", "0"], "0"),
        (["--methods", "vicreg", "--fractions", "150"], "150"),
        (["--methods", "vicreg", "--fractions", "ten"], "ten"),
        (["--methods", "vicreg", "--seeds", "a"], "a"),
        # empty lists are errors, not the profile's whole grid
        (["--methods", "vicreg", "--fractions", ""], "--fractions"),
        (["--methods", "vicreg", "--seeds", ""], "--seeds"),
        (["--methods", "vicreg", "--datasets", ""], "--datasets"),
        # seeds the label subsets cannot draw with (seed * 1000 + step must fit numpy's seeds)
        (["--methods", "vicreg", "--seeds", "-1"], "-1"),
        (["--methods", "vicreg", "--seeds", "5000000"], "5000000"),
        (["--methods", "vicreg", "--device", "tpu"], "tpu"),
        # --set values of the wrong kind or out of range: refused before run.json is written
        (["--methods", "vicreg", "--set", "pretrain.epochs=abc"], "pretrain.epochs"),
        (["--methods", "vicreg", "--set", "pretrain.epochs=-3"], "pretrain.epochs"),
        (["--methods", "vicreg", "--set", "pretrain.batch_size=0"], "pretrain.batch_size"),
        (["--methods", "vicreg", "--set", "pretrain.max_steps=2.5"], "pretrain.max_steps"),
        (["--methods", "vicreg", "--set", "evaluation.finetune.learning_rate=0"], "learning_rate"),
        (["--methods", "vicreg", "--set", "evaluation.fractions=10"], "evaluation.fractions"),
        (["--methods", "vicreg", "--set", "methods.vicreg.base_lr=abc"], "base_lr"),
        (["--methods", "vicreg", "--set", "methods.vicreg.crop_scale=[0.5]"], "crop_scale"),
        (["--methods", "vicreg", "--set", "evaluation.seeds=[5000000]"], "evaluation.seeds"),
        (["--methods", "vicreg", "--set", "evaluation.fractions=[0]"], "evaluation.fractions"),
        (["--methods", "vicreg", "--set", "evaluation.seeds=[]"], "evaluation.seeds"),
    ],
)
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, named):
    out = tmp_path / "results"
    profile = [] if "--profile" in argv else ["--profile", "smoke"]
    code, stdout, stderr = run_cli(capsys, "run", *argv, *profile, "--out", str(out))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]
    assert "valid" in lines[0] or "expected" in lines[0]
    assert not out.exists()


def test_unknown_method_lists_the_valid_choices(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "run", "--methods", "nope", "--out", str(tmp_path / "r"))
    assert code == 2 and "vicreg" in stderr and "sup1" in stderr


def test_unwritable_out_is_rejected_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, stderr = run_cli(capsys, "run", "--methods", "vicreg", "--profile", "smoke", "--out", str(blocker / "sub"))
    assert code == 2 and str(blocker) in stderr
    if os.geteuid() != 0:  # root can write anywhere, so the permission case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, stderr = run_cli(capsys, "run", "--methods", "vicreg", "--profile", "smoke", "--out", str(locked / "r"))
        assert code == 2 and "not writable" in stderr


def test_report_on_a_missing_directory_is_a_clear_error(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "rep"))
    assert code == 2 and "none" in stderr and not (tmp_path / "rep").exists()


def test_every_subcommand_has_help():
    for command in ("list", "run", "report"):
        result = subprocess.run([sys.executable, "-m", "cxrbench", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: bench" in result.stdout


def test_run_help_names_every_profile(capsys):
    from cxrbench.benchmark.cli import build_parser
    from cxrbench.benchmark.profiles import available_profiles

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    listed = help_text.rsplit("--profile PROFILE", 1)[1].split("(see", 1)[0]  # the option, not the usage line
    assert all(name in listed for name in available_profiles())


def test_list_shows_methods_with_origin(capsys):
    code, stdout, _ = run_cli(capsys, "list", "methods")
    assert code == 0
    rows = {line.split()[0]: line for line in stdout.splitlines()[2:]}
    assert "vicreg" in rows and "sup1" in rows and rows["vicreg"].rstrip().endswith("built-in")


def test_bench_speed_measures_every_method_and_the_frozen_cache_in_one_json(capsys, tmp_path):
    out = tmp_path / "speed.json"
    code, stdout, _ = run_cli(capsys, "speed", "--profile", "smoke", "--batch-size", "2", "--iterations", "10",
                              "--device", "cpu", "--out", str(out))
    assert code == 0
    import json

    from cxrbench.methods import available_methods, get_method

    report = json.loads(out.read_text())
    pretraining = report["pretraining"]
    expected = {name for name in available_methods() if get_method(name).pretrains and get_method(name).listed_in_all}
    assert set(pretraining["methods"]) == expected and pretraining["batch"] == 16 and pretraining["image_size"] == 64
    for timing in pretraining["methods"].values():
        assert timing["images_per_second"] == pytest.approx(16 / timing["step_seconds"])
        # the model-only bound and the ratio the README reports (no timing bound: speed is a benchmark)
        assert timing["model_only_images_per_second"] == pytest.approx(16 / timing["model_only_seconds"])
        assert timing["data_path_ratio"] == pytest.approx(timing["model_only_seconds"] / timing["step_seconds"])
    assert pretraining["precision"] == "fp32" and pretraining["channels_last"] is False  # on a CPU: the profile's
    ratios, steps = pretraining["step_time_over_fastest"], {name: t["step_seconds"] for name, t in pretraining["methods"].items()}
    assert set(ratios) == expected and min(ratios.values()) == 1.0
    assert ratios["optiml"] / ratios["vicreg"] == pytest.approx(steps["optiml"] / steps["vicreg"])
    frozen = report["frozen_cache"]
    assert frozen["speedup"] == pytest.approx(frozen["recomputed_total_seconds_estimated"] / frozen["cached_total_seconds"])
    assert "pretraining.optiml.images_per_second" in stdout and "frozen_cache.speedup" in stdout
    # the solver at both widths OPTiML meets: d = 512 (ResNet-18) and 2048 (ResNet-50), each against POT
    assert set(report["sinkhorn_by_width"]) == {"512", "2048"}
    for width, figures in report["sinkhorn_by_width"].items():
        assert figures["dim"] == int(width) and figures["batch"] == 2 and figures["max_abs_plan_difference"] < 1e-6
    assert "sinkhorn[d=2048].speedup_vs_pot" in stdout


def test_an_out_folder_that_permissions_allow_but_the_file_system_refuses_is_one_line(capsys):
    # /sys refuses new files even to root, whom os.access allows everything
    code, _, stderr = run_cli(capsys, "run", "--methods", "sup1", "--profile", "smoke", "--out", "/sys/cxrbench-run")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "not writable" in stderr


def test_set_reads_an_exponent_without_a_dot_as_the_number_meant():
    """PyYAML reads `1e-5` as a string (YAML 1.1); `--set ...weight_decay=1e-5` must still work."""
    from cxrbench.benchmark.profiles import apply_overrides, load_profile

    profile = apply_overrides(load_profile("quick"), ["methods.simclr.weight_decay=1e-5", "evaluation.finetune.learning_rate=3E-4",
                                                       "methods.simclr.temperature=0.2"])
    assert profile["methods"]["simclr"]["weight_decay"] == 1e-5 and profile["methods"]["simclr"]["temperature"] == 0.2
    assert profile["evaluation"]["finetune"]["learning_rate"] == 3e-4
    with pytest.raises(ValueError, match="pretrain.epochs"):
        apply_overrides(load_profile("quick"), ["pretrain.epochs=nan"])


def test_status_reports_done_running_interrupted_and_left_from_the_folder_alone(tmp_path, capsys):
    import json
    import os
    import socket

    out = tmp_path / "run"
    argv = ["run", "--methods", "simclr,sup1,sup2", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
            "--fractions", "10,100", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # the plan counts only what can run: Sup.2's ImageNet weights are not on this machine
    assert "= 6 cells: 4 to run, 2 that cannot run here (sup2)" in printed
    assert "[4/4" in printed and "left]" in printed  # cell k of N with the time left
    assert main(["status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "6 cells (2 cannot run here" in lines[0]
    assert lines[1].startswith("cells: 4 done, 0 running, 0 damaged") and "0 left" in lines[1]
    assert "nothing left: the plan is complete" in lines[-1]

    # one record gone, another cell claimed by a live process, a pretraining interrupted
    (out / "cells" / "sup1__phantom-nih__frozen__10pct__seed0.json").unlink()
    (out / "cells" / "simclr__phantom-nih__frozen__10pct__seed0.json").unlink()
    claims = out / "cells" / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    from cxrbench.benchmark.pretraining.lease import _pid_namespace

    (claims / "simclr__phantom-nih__frozen__10pct__seed0.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(), "job": None, "started": "now"}))
    interrupted = out / "pretrain" / "byol__phantom-nih" / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "epoch-00001.pt").write_bytes(b"x")
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cells: 2 done, 1 running, 0 damaged (moved to cells/damaged), 1 left" in text
    assert f"running: simclr__phantom-nih__frozen__10pct__seed0 (host {socket.gethostname()}, pid {os.getpid()}" in text
    assert "1 interrupted" in text and "interrupted: byol" in text
    assert "time left: ~" in text and "1 cell(s) at this folder's mean cell time per protocol" in text


def test_status_of_a_folder_that_is_not_a_results_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert main(["status", str(tmp_path / "missing")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "not a results folder" in errors[0] and "no such results folder" in errors[1]
