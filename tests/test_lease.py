"""The pretraining lease: one live pretraining per method and output directory, dead holders recognised."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrbench.benchmark.config import RunConfig
from cxrbench.benchmark.pretraining.lease import LEASE_NAME, PretrainingInProgressError, PretrainingLease, live_holder
from cxrbench.records.schema import PretrainRecord


def _foreign_lease(directory: Path, seconds_ago: float = 0.0, host: str = "gpu-node-17", pid: int = 4242,
                   pid_namespace: int | None = None) -> Path:
    """A lease written by a process on another node, last seen ``seconds_ago``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LEASE_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "pid_namespace": pid_namespace, "job": "981",
                                "started": "2026-11-22T00:00:00+00:00"}))
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))
    return path


def test_a_live_lease_refuses_a_second_holder_and_names_the_first(tmp_path):
    with PretrainingLease(tmp_path):
        holder = live_holder(tmp_path)
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        with pytest.raises(PretrainingInProgressError, match=f"pid {os.getpid()}"):
            PretrainingLease(tmp_path).acquire()
    assert not (tmp_path / LEASE_NAME).exists()  # released
    with PretrainingLease(tmp_path):  # and free again
        pass


def test_the_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = os.stat("/proc/self/ns/pid").st_ino
    _foreign_lease(tmp_path, host=socket.gethostname(), pid=int(finished.stdout), pid_namespace=here)
    assert live_holder(tmp_path) is None
    with PretrainingLease(tmp_path):
        assert live_holder(tmp_path).pid == os.getpid()  # taken over
    # the same host name seen from another pid namespace (a container): the pid says nothing there
    _foreign_lease(tmp_path, host=socket.gethostname(), pid=int(finished.stdout), pid_namespace=here + 1)
    assert live_holder(tmp_path) is not None


def test_a_lease_taken_between_a_look_and_the_link_is_not_overwritten(tmp_path, monkeypatch):
    """Two starts at once: the one whose link fails must find the other's live lease and stop."""
    from cxrbench.benchmark.pretraining import lease as lease_module

    lease = PretrainingLease(tmp_path)
    create = lease._create

    def rival_first():
        if not (tmp_path / LEASE_NAME).exists():
            _foreign_lease(tmp_path)  # the rival links its lease an instant before us
        return create()

    monkeypatch.setattr(lease, "_create", rival_first)
    with pytest.raises(PretrainingInProgressError, match="gpu-node-17"):
        lease.acquire()
    assert lease_module.live_holder(tmp_path).host == "gpu-node-17"  # the rival's lease is intact


def test_a_stale_lease_is_replaced_but_one_renewed_meanwhile_is_put_back(tmp_path, monkeypatch):
    from cxrbench.benchmark.pretraining import lease as lease_module

    stale = _foreign_lease(tmp_path, seconds_ago=3600)
    lease = PretrainingLease(tmp_path)
    read = lease_module._read_holder

    def renewed_after_the_look(path):
        holder = read(path)
        if path == stale and holder is not None and holder.pid == 4242:
            _foreign_lease(tmp_path, pid=5151)  # another process replaced the stale lease meanwhile
        return holder

    monkeypatch.setattr(lease_module, "_read_holder", renewed_after_the_look)
    with pytest.raises(PretrainingInProgressError, match="pid 5151"):
        lease.acquire()
    monkeypatch.setattr(lease_module, "_read_holder", read)
    assert live_holder(tmp_path).pid == 5151
    assert sorted(path.name for path in tmp_path.iterdir()) == [LEASE_NAME]  # nothing left aside


def test_a_lease_from_another_node_holds_until_its_heartbeat_is_stale(tmp_path):
    _foreign_lease(tmp_path, seconds_ago=60)
    with pytest.raises(PretrainingInProgressError, match="host gpu-node-17, pid 4242, job 981"):
        PretrainingLease(tmp_path, stale_after=300).acquire()
    _foreign_lease(tmp_path, seconds_ago=301)
    lease = PretrainingLease(tmp_path, stale_after=300)
    lease.acquire()
    assert live_holder(tmp_path).host == socket.gethostname()
    lease.release()


def test_the_holder_keeps_its_heartbeat_fresh_through_passing_file_system_errors(tmp_path, monkeypatch):
    from cxrbench.benchmark.pretraining import lease as lease_module

    failures = [OSError(116, "Stale file handle")] * 2
    utime = os.utime

    def flaky_utime(*args, **kwargs):
        if failures:
            raise failures.pop()
        return utime(*args, **kwargs)

    monkeypatch.setattr(lease_module.os, "utime", flaky_utime)
    lease = PretrainingLease(tmp_path, heartbeat_seconds=0.05, stale_after=1.0)
    lease.acquire()
    path = tmp_path / LEASE_NAME
    utime(path, (time.time() - 100, time.time() - 100))  # as if it had not beaten for 100 s
    # a wait for the condition (bounded far above a busy machine's scheduling delays)
    deadline = time.monotonic() + 60
    while (failures or time.time() - path.stat().st_mtime > 50) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not failures  # both errors met
    assert time.time() - path.stat().st_mtime < 50  # renewed after them: it was 100 s old
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
    directory = runner.pretrain_dir(method, runner.config.pretrain.dataset)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.pth").write_bytes(b"")
    (directory / "record.json").write_text("{}")


def _simclr_grid(smoke_profile, out):
    import torch

    from cxrbench.benchmark.runner import Cell, Runner

    runner = Runner(RunConfig.from_profile(smoke_profile), out, torch.device("cpu"), echo=lambda _: None)
    return runner, [Cell("simclr", "phantom-nih", "frozen", fraction, 0) for fraction in (10.0, 100.0)]


def _finish_elsewhere(runner, method, lease: Path):
    """The other process stores the encoder, then lets go of its lease (in that order, as the runner does)."""
    _store_fake_encoder(runner, method)
    lease.unlink()


def _dispatch_while_another_process_pretrains(tmp_path, smoke_profile, when_waiting):
    """Dispatch simclr's two cells with another node's live lease on its pretraining;
    ``when_waiting(runner, lease)`` runs once the dispatcher says it is waiting."""
    from cxrbench.benchmark.dispatch import dispatch

    runner, cells = _simclr_grid(smoke_profile, tmp_path)
    lease = _foreign_lease(runner.pretrain_dir("simclr", "phantom-nih"))
    executors, lines = _RecordingExecutors(runner), []

    def echo(line):
        lines.append(line)
        if "running already" in line:
            when_waiting(runner, lease)

    dispatch(runner, cells, executors, jobs=2, poll_seconds=0.05, echo=echo)
    return executors.submitted, lines


def test_the_dispatcher_waits_for_a_pretraining_it_did_not_start(tmp_path, smoke_profile):
    """A re-started dispatcher whose earlier pretraining job still runs must not submit it again."""
    submitted, lines = _dispatch_while_another_process_pretrains(
        tmp_path, smoke_profile, lambda runner, lease: _finish_elsewhere(runner, "simclr", lease))
    assert [kind for kind, *_ in submitted] == ["cell", "cell"]  # no second pretraining
    assert all(stored for *_, stored in submitted)  # every cell after the encoder was there
    assert any("running already" in line and "gpu-node-17" in line for line in lines)


def test_the_dispatcher_resubmits_a_pretraining_whose_holder_died(tmp_path, smoke_profile):
    def holder_goes_silent(runner, lease):  # its lease goes stale without an encoder
        os.utime(lease, (time.time() - 3600, time.time() - 3600))

    submitted, lines = _dispatch_while_another_process_pretrains(tmp_path, smoke_profile, holder_goes_silent)
    assert [kind for kind, *_ in submitted] == ["pretrain", "cell", "cell"]
    assert any("submitted again" in line for line in lines)


def test_a_lease_that_cannot_be_read_for_a_moment_counts_as_held(tmp_path, smoke_profile, monkeypatch):
    from cxrbench.benchmark.dispatch import dispatch

    runner, cells = _simclr_grid(smoke_profile, tmp_path)
    errors = [OSError(116, "Stale file handle")] * 3

    def flaky_holder(method):
        if errors:
            raise errors.pop()
        return None  # readable again: nobody holds it

    monkeypatch.setattr(runner, "pretraining_holder", flaky_holder)
    executors, lines = _RecordingExecutors(runner), []

    def echo(line):
        lines.append(line)
        if "could not be read" in line:  # waiting as if held; meanwhile the holder finishes
            _store_fake_encoder(runner, "simclr")

    dispatch(runner, cells, executors, jobs=2, poll_seconds=0.05, echo=echo)
    assert not errors  # every read error met, none raised out of the dispatcher
    assert [kind for kind, *_ in executors.submitted] == ["cell", "cell"]


class _RefusedJob(_FinishedJob):
    """A pretraining job that found another process's live lease, as submitit reports it."""

    def results(self):
        raise RuntimeError("Job (task=0) failed during processing with trace:\n----\nTraceback ...\n"
                           "cxrbench.benchmark.pretraining.lease.PretrainingInProgressError: simclr__phantom-nih is being pretrained")


def test_a_pretraining_job_refused_by_a_live_lease_waits_for_its_holder_instead_of_failing(tmp_path, smoke_profile):
    """The dispatcher found no lease, but by the time its job ran another process held one
    (a job an earlier dispatcher left queued, say): its cells wait for that encoder."""
    from cxrbench.benchmark.dispatch import dispatch

    runner, cells = _simclr_grid(smoke_profile, tmp_path)
    directory = runner.pretrain_dir("simclr", "phantom-nih")
    submitted, lines = [], []

    class Executors:
        def submit(self, kind, slot, runner, payload):
            submitted.append(kind)
            if kind == "pretrain":
                _foreign_lease(directory)
                return _RefusedJob(None)
            return _FinishedJob(1)

    def echo(line):
        lines.append(line)
        if "running in another process" in line:
            _finish_elsewhere(runner, "simclr", directory / LEASE_NAME)

    result = dispatch(runner, cells, Executors(), jobs=2, poll_seconds=0.05, echo=echo)
    assert submitted == ["pretrain", "cell", "cell"]
    assert result.failures == [] and result.written == 2


# --- the runner: rank 0 decides at the lease for every rank


def _store_real_encoder(runner, method):
    import torch

    directory = runner.pretrain_dir(method, runner.config.pretrain.dataset)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.ones(2)}, directory / "encoder.pth")
    record = PretrainRecord(method=method, pretrain_dataset=runner.config.pretrain.dataset, seconds=1.0, created="elsewhere")
    (directory / "record.json").write_text(json.dumps(record.to_json()))


def _runner(smoke_profile, out):
    import torch

    from cxrbench.benchmark.runner import Runner

    return Runner(RunConfig.from_profile(smoke_profile), out, torch.device("cpu"), echo=lambda _: None)


def _must_not_pretrain(*args, **kwargs):
    raise AssertionError("pretrained although the encoder was stored")


def test_an_encoder_stored_while_the_lease_was_being_taken_is_used_not_trained_again(tmp_path, smoke_profile, monkeypatch):
    from cxrbench.benchmark import runner as runner_module

    runner = _runner(smoke_profile, tmp_path)

    class FinishedJustBefore(PretrainingLease):
        def acquire(self):
            _store_real_encoder(runner, "simclr")  # the previous holder stored it and let go
            super().acquire()

    monkeypatch.setattr(runner_module, "PretrainingLease", FinishedJustBefore)
    monkeypatch.setattr(runner_module, "pretrain", _must_not_pretrain)
    state, record = runner.pretrained_encoder("simclr")
    assert record.created == "elsewhere" and state["weight"].sum() == 2
    assert not (runner.pretrain_dir("simclr", "phantom-nih") / LEASE_NAME).exists()  # let go again


def test_the_lease_is_released_when_pretraining_raises(tmp_path, smoke_profile, monkeypatch):
    from cxrbench.benchmark import runner as runner_module

    def interrupted(*args, **kwargs):
        assert live_holder(runner.pretrain_dir("simclr", "phantom-nih")).pid == os.getpid()  # held while it runs
        raise KeyboardInterrupt

    runner = _runner(smoke_profile, tmp_path)
    monkeypatch.setattr(runner_module, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.pretrained_encoder("simclr")
    assert not (runner.pretrain_dir("simclr", "phantom-nih") / LEASE_NAME).exists()


def test_a_lease_that_cannot_be_written_stops_the_pretraining_with_its_own_error(tmp_path, smoke_profile, monkeypatch):
    from cxrbench.benchmark import runner as runner_module

    def read_only(self):
        raise PermissionError(13, "Permission denied", str(self.path))

    runner = _runner(smoke_profile, tmp_path)
    monkeypatch.setattr(PretrainingLease, "acquire", read_only)
    monkeypatch.setattr(runner_module, "pretrain", _must_not_pretrain)
    with pytest.raises(PermissionError, match=LEASE_NAME):
        runner.pretrained_encoder("simclr")


def _cannot_write(self):
    raise PermissionError(13, "Permission denied", str(self.path))


def _two_ranks_at_a_lease(rank: int, init_file: str, out: str, results: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from cxrbench.benchmark.profiles import load_profile

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=600))  # a rank left waiting fails the test, not hangs it
    outcomes = []
    try:
        runner = _runner(load_profile("smoke"), Path(out))
        # simclr: held elsewhere; vicreg: stored already; byol: rank 0 cannot write the lease
        for method in ("simclr", "vicreg", "byol"):
            directory = runner.pretrain_dir(method, "phantom-nih")
            if method == "byol":
                PretrainingLease.acquire = _cannot_write
            try:
                with runner._pretraining_lease(method, directory) as stored:
                    outcomes.append(f"stored={stored}")
            except PretrainingInProgressError as error:
                outcomes.append(f"refused: {'gpu-node-17' in str(error)}")
            except (PermissionError, RuntimeError) as error:
                # told by rank 0, not a collective that broke when rank 0 went its own way
                told = " (rank 0's decision)" if "rank 0 could not take" in str(error) else ""
                outcomes.append(f"failed: {type(error).__name__}{told}")
        Path(results, f"rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


def test_under_two_processes_every_rank_follows_rank_0_at_the_lease(tmp_path, smoke_profile):
    import torch.multiprocessing as mp

    runner = _runner(smoke_profile, tmp_path / "out")
    _foreign_lease(runner.pretrain_dir("simclr", "phantom-nih"))
    _store_real_encoder(runner, "vicreg")
    mp.spawn(_two_ranks_at_a_lease, args=(str(tmp_path / "init"), str(tmp_path / "out"), str(tmp_path)), nprocs=2)
    # rank 1 never looks at the files: it learns rank 0's decision, and names the holder only on rank 0
    # and a rank 0 that fails at the lease raises its own error, the others a RuntimeError, none waits
    assert json.loads((tmp_path / "rank0.json").read_text()) == ["refused: True", "stored=True", "failed: PermissionError"]
    assert json.loads((tmp_path / "rank1.json").read_text()) == ["refused: False", "stored=True", "failed: RuntimeError (rank 0's decision)"]


def test_a_cell_claimed_by_a_live_process_elsewhere_is_skipped_and_said(tmp_path, capsys):
    from cxrbench.benchmark.cli import main

    out = tmp_path / "out"
    claimed = _foreign_lease(out / "cells" / "claims")  # RUNNING.json: rename it to the cell's claim
    claimed.rename(claimed.with_name("sup1__phantom-nih__frozen__100pct__seed0.json"))
    code = main(["run", "--methods", "sup1", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
                 "--fractions", "10,100", "--out", str(out)])
    said = capsys.readouterr().out
    assert code == 0
    assert "sup1__phantom-nih__frozen__100pct__seed0: skipped here" in said and "gpu-node-17" in said
    assert "1 cell(s) were being evaluated by another process" in said
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == ["sup1__phantom-nih__frozen__10pct__seed0.json"]
