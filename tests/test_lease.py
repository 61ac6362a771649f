"""The pretraining lease: one live pretraining per method and output directory, dead holders recognised."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxrbench.benchmark.lease import LEASE_NAME, PretrainingInProgress, PretrainingLease, live_holder


def _foreign_lease(directory: Path, seconds_ago: float = 0.0, host: str = "gpu-node-17", pid: int = 4242) -> Path:
    """A lease written by a process on another node, last seen ``seconds_ago``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LEASE_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "job": "981", "started": "2026-11-22T00:00:00+00:00"}))
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))
    return path


def test_a_live_lease_refuses_a_second_holder_and_names_the_first(tmp_path):
    with PretrainingLease(tmp_path):
        holder = live_holder(tmp_path)
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        with pytest.raises(PretrainingInProgress, match=f"pid {os.getpid()}"):
            PretrainingLease(tmp_path).acquire()
    assert not (tmp_path / LEASE_NAME).exists()  # released
    with PretrainingLease(tmp_path):  # and free again
        pass


def test_the_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _foreign_lease(tmp_path, host=socket.gethostname(), pid=int(finished.stdout))
    assert live_holder(tmp_path) is None
    with PretrainingLease(tmp_path):
        assert live_holder(tmp_path).pid == os.getpid()  # taken over


def test_a_lease_from_another_node_holds_until_its_heartbeat_is_stale(tmp_path):
    _foreign_lease(tmp_path, seconds_ago=60)
    with pytest.raises(PretrainingInProgress, match="host gpu-node-17, pid 4242, job 981"):
        PretrainingLease(tmp_path, stale_after=300).acquire()
    _foreign_lease(tmp_path, seconds_ago=301)
    lease = PretrainingLease(tmp_path, stale_after=300)
    lease.acquire()
    assert live_holder(tmp_path).host == socket.gethostname()
    lease.release()


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path):
    lease = PretrainingLease(tmp_path, heartbeat_seconds=0.05, stale_after=1.0)
    lease.acquire()
    path = tmp_path / LEASE_NAME
    os.utime(path, (time.time() - 100, time.time() - 100))  # as if it had not beaten for 100 s
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 1.0
    lease.release()


def test_bench_run_refuses_to_pretrain_what_another_process_pretrains(tmp_path, capsys):
    from cxrbench.benchmark.cli import main

    lease = _foreign_lease(tmp_path / "out" / "pretrain" / "simclr__phantom-nih")
    code = main(["run", "--methods", "simclr", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
                 "--fractions", "100", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert error[-1].startswith("bench run: error:") and "gpu-node-17" in error[-1] and str(lease) in error[-1]
    assert sorted(path.name for path in lease.parent.iterdir()) == [LEASE_NAME]  # no checkpoint, no encoder
    assert not list((tmp_path / "out").glob("cells/*.json"))


class _FinishedJob:
    """A submitit job stand-in that has already ended with ``result``."""

    job_id = "fake"

    def __init__(self, result):
        self.result = result

    def done(self):
        return True

    def results(self):
        return [self.result]

    def cancel(self, check=False):
        pass


class _RecordingExecutors:
    """Records what is submitted; a pretraining 'job' stores an encoder and record at once."""

    def __init__(self, runner):
        self.runner, self.submitted = runner, []

    def submit(self, kind, slot, runner, payload):
        self.submitted.append((kind, payload if kind == "pretrain" else payload.record_name,
                               runner.encoder_is_stored("simclr")))
        if kind == "pretrain":
            _store_fake_encoder(runner, payload)
        return _FinishedJob(payload if kind == "pretrain" else 1)


def _store_fake_encoder(runner, method):
    directory = runner.pretrain_dir(method, runner.profile["pretrain"]["dataset"])
    (directory / "encoder.pth").write_bytes(b"")
    (directory / "record.json").write_text("{}")


def _simclr_grid(smoke_profile, out):
    import torch

    from cxrbench.benchmark.runner import Cell, Runner

    runner = Runner(smoke_profile, out, torch.device("cpu"), echo=lambda _: None)
    return runner, [Cell("simclr", "phantom-nih", "frozen", fraction, 0) for fraction in (10.0, 100.0)]


def test_the_dispatcher_waits_for_a_pretraining_it_did_not_start(tmp_path, smoke_profile):
    """A re-started dispatcher whose earlier pretraining job still runs must not submit it again."""
    from cxrbench.benchmark.dispatch import dispatch

    runner, cells = _simclr_grid(smoke_profile, tmp_path)
    _foreign_lease(runner.pretrain_dir("simclr", "phantom-nih"))
    # the other process finishes a moment later
    threading.Timer(1.0, _store_fake_encoder, args=(runner, "simclr")).start()
    executors = _RecordingExecutors(runner)
    lines = []
    dispatch(runner, cells, executors, jobs=2, poll_seconds=0.1, echo=lines.append)
    assert [kind for kind, *_ in executors.submitted] == ["cell", "cell"]  # no second pretraining
    assert all(stored for *_, stored in executors.submitted)  # every cell after the encoder was there
    assert any("running already" in line and "gpu-node-17" in line for line in lines)


def test_the_dispatcher_resubmits_a_pretraining_whose_holder_died(tmp_path, smoke_profile):
    from cxrbench.benchmark.dispatch import dispatch

    runner, cells = _simclr_grid(smoke_profile, tmp_path)
    lease = _foreign_lease(runner.pretrain_dir("simclr", "phantom-nih"))
    # the holder stops beating: its lease goes stale without an encoder
    threading.Timer(1.0, os.utime, args=(lease, (time.time() - 3600, time.time() - 3600))).start()
    executors = _RecordingExecutors(runner)
    lines = []
    dispatch(runner, cells, executors, jobs=2, poll_seconds=0.1, echo=lines.append)
    assert [kind for kind, *_ in executors.submitted] == ["pretrain", "cell", "cell"]
    assert any("submitted again" in line for line in lines)
