"""Grid dispatch through submitit: every pretraining and every cell a job, pretraining first."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrbench.benchmark.config import RunConfig
from cxrbench.benchmark.cli import main
from cxrbench.benchmark.dispatch import Executors, SlurmOptions, default_threads, parse_slurm_time

GRID = ["--methods", "simclr,sup1", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
        "--fractions", "10,100"]


def _bench(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrbench", "run", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=1800, env=env)


def _records(out: Path) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((out / "cells").glob("*.json"))}


def test_local_executor_runs_each_job_in_its_own_process_and_matches_the_inline_run(tmp_path):
    # Both sides run with the same number of CPU threads: a job gets default_threads(2) of this
    # machine's cores, and the inline run as many (OMP_NUM_THREADS sets torch's intra-op
    # threads at start). One thread and two give different float sums, so a thread count that
    # differed between the sides would make the comparison hold on one machine only.
    threads = default_threads(2)
    inline = _bench(*GRID, "--out", str(tmp_path / "inline"), env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    assert inline.returncode == 0, inline.stderr[-2000:]
    local = _bench(*GRID, "--executor", "local", "--jobs", "2", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-2000:]

    # one submitit job per pretraining and per cell: 1 + 4, each with its own log
    submitted = sorted((tmp_path / "local" / "jobs").glob("*_submitted.pkl"))
    assert len(submitted) == 5
    expected, actual = _records(tmp_path / "inline"), _records(tmp_path / "local")
    assert sorted(actual) == sorted(expected) and len(actual) == 4
    pretrained = json.loads((tmp_path / "local" / "pretrain" / "simclr__phantom-nih" / "record.json").read_text())
    for name, record in actual.items():
        if record["cell"]["method"] == "simclr":
            assert record["created"] > pretrained["created"]  # no cell started before its encoder was stored
        # the same computation as in one process, with the same thread count
        assert record["metrics"]["mean_auroc"] == pytest.approx(expected[name]["metrics"]["mean_auroc"], abs=1e-4), name

    again = _bench(*GRID, "--executor", "local", "--jobs", "2", "--out", str(tmp_path / "local"))
    assert again.returncode == 0 and "4 of 4 cells already have a record" in again.stdout + again.stderr
    assert len(list((tmp_path / "local" / "jobs").glob("*_submitted.pkl"))) == 5  # nothing resubmitted


def test_a_pretraining_job_of_two_processes_trains_with_ddp(tmp_path):
    result = _bench("--methods", "vicreg", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
                    "--fractions", "100", "--executor", "local", "--pretrain-processes", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "pretrain" / "vicreg__phantom-nih" / "record.json").read_text())
    assert record["processes"] == 2
    assert (tmp_path / "cells" / "vicreg__phantom-nih__frozen__100pct__seed0.json").is_file()


def test_a_failed_pretraining_job_is_reported_and_its_cells_are_not_run(tmp_path):
    result = _bench(*GRID, "--executor", "local", "--jobs", "2", "--set", "pretrain.batch_size=100000", "--out", str(tmp_path))
    assert result.returncode == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("bench run: failed:")]
    assert any("pretrain simclr" in line and "fewer than the batch size" in line and "log:" in line for line in failures)
    assert sum("not run, its pretraining failed" in line for line in failures) == 2
    assert sorted(path.name for path in (tmp_path / "cells").glob("*.json")) == [
        "sup1__phantom-nih__frozen__100pct__seed0.json", "sup1__phantom-nih__frozen__10pct__seed0.json"]


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--executor", "local", "--jobs", "0"], "--jobs 0"),
        (["--jobs", "2"], "--jobs"),
        (["--executor", "local", "--slurm-partition", "gpu"], "--slurm-partition"),
        (["--executor", "local", "--slurm-time", "soon"], "soon"),
        (["--executor", "slurm"], "srun"),
        (["--pretrain-processes", "2"], "torchrun"),
        (["--set", "pretrain.precision=fp8"], "fp8"),
    ],
)
def test_bad_dispatch_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, monkeypatch, argv, named):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    out = tmp_path / "results"
    code = main(["run", "--methods", "simclr", "--profile", "smoke", *argv, "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0], lines
    assert not out.exists()


def test_slurm_jobs_ask_for_what_the_flags_say(tmp_path, monkeypatch):
    """The sbatch scripts submitit would submit (a stand-in srun makes this machine look like a login node)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", gpus=1, cpus=10, mem_gb=64, time_minutes=parse_slurm_time("1-12:00:00"),
                           account="lab", nodes=2)
    executors = Executors("slurm", tmp_path / "jobs", options, pretrain_processes=4)
    pretraining = executors.pretraining._executor._make_submission_file_text("python job", "uid")
    cells = executors.cells._executor._make_submission_file_text("python job", "uid")
    for line in ("--partition=gpu", "--time=2160", "--account=lab", "--mem=64G", "--cpus-per-task=10"):
        assert f"#SBATCH {line}" in pretraining and f"#SBATCH {line}" in cells
    assert all(f"#SBATCH {line}" in pretraining for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"))
    assert all(f"#SBATCH {line}" in cells for line in ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"))


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("0:00:30", 1), ("2-00:00:00", 2880)])
def test_slurm_time_forms(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "1:5", "1h", "-1"])
def test_bad_slurm_times_are_refused(text):
    with pytest.raises(ValueError, match="slurm-time"):
        parse_slurm_time(text)


def _wait_for(condition, seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.5)


@pytest.mark.parametrize("signal_name, exit_code, started_in_background", [
    ("SIGINT", 130, False), ("SIGTERM", 143, False),
    # a script's `bench run ... &` inherits SIGINT ignored, and so would its jobs: submitit's
    # cancel (SIGINT) then did nothing and the jobs trained on
    ("SIGINT", 130, True), ("SIGTERM", 143, True),
])
def test_ctrl_c_or_sigterm_cancels_the_running_jobs(tmp_path, signal_name, exit_code, started_in_background):
    """SIGINT or SIGTERM to the dispatching process: its local jobs (submitit's job id is their pid) end too."""
    import signal

    from cxrbench.benchmark.dispatch import _descendants

    command = [sys.executable, "-m", "cxrbench", "run", *GRID, "--executor", "local", "--set", "pretrain.max_steps=100000",
               "--set", "pretrain.epochs=10000", "--out", str(tmp_path)]
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if started_in_background else None
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint)
    spawned: set[int] = set()
    try:
        # Waits are for conditions, with bounds far above what a busy machine needs: the
        # pretraining job holds its lease once it trains (submitit's job id is the job's pid)
        lease = tmp_path / "pretrain" / "simclr__phantom-nih" / "RUNNING.json"
        _wait_for(lambda: lease.is_file() or driver.poll() is not None, 600, "the pretraining job to start")
        assert driver.poll() is None, driver.communicate()
        spawned = set(_descendants(driver.pid))
        pid = int(next((tmp_path / "jobs").glob("*_submitted.pkl")).name.split("_")[0])
        driver.send_signal(getattr(signal, signal_name))
        stdout, stderr = driver.communicate(timeout=600)
        assert driver.returncode == exit_code and "resume" in stdout + stderr

        def ended(process_id: int) -> bool:
            try:
                os.kill(process_id, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{process_id}/stat").is_file() and Path(f"/proc/{process_id}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

        _wait_for(lambda: all(ended(process_id) for process_id in spawned | {pid}), 300,
                  f"the job processes {sorted(spawned | {pid})} to end after the dispatcher was interrupted")
        # cancelled, not left to finish: the 100,000-step pretraining never stored its encoder
        assert not (tmp_path / "pretrain" / "simclr__phantom-nih" / "encoder.pth").exists()
    finally:  # a failed test must not leave a 100,000-step pretraining running on the machine
        for process_id in [*spawned, driver.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process_id, signal.SIGKILL)
        driver.wait()


def test_cell_jobs_share_the_frozen_features_through_the_output_directory(tmp_path, monkeypatch, smoke_profile):
    """A cell job computes its encoder's features once and stores them; the next job loads them."""
    import numpy as np
    import torch

    from cxrbench.benchmark.protocols.registry import PROTOCOLS
    from cxrbench.benchmark.runner import Cell, Runner

    first = Runner(RunConfig.from_profile(smoke_profile), tmp_path, torch.device("cpu"), echo=lambda _: None, persist_shared=True)
    first.run([Cell("sup1", "phantom-nih", "frozen", 100.0, 0)])
    stored = list((tmp_path / "shared").glob("*.npz"))
    assert [path.name for path in stored] == ["sup1__init-seed0__phantom-nih__frozen-bn-train.npz"]  # the protocol version in the name
    features = np.load(stored[0])["features"]
    assert features.shape == (len(first.dataset("phantom-nih").images), 512)

    def must_not_recompute(*args, **kwargs):
        raise AssertionError("features recomputed although they are stored")

    monkeypatch.setattr(PROTOCOLS["frozen"], "prepare_shared", must_not_recompute)
    second = Runner(RunConfig.from_profile(smoke_profile), tmp_path, torch.device("cpu"), echo=lambda _: None, persist_shared=True)
    assert len(second.run([Cell("sup1", "phantom-nih", "frozen", 10.0, 0)])) == 1
