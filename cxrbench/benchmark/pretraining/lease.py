"""Who is pretraining a method right now: a lease file with a heartbeat.

A pretraining holds ``RUNNING.json`` in its directory while it runs: where it runs (host,
process, SLURM or submitit job) and, through the file's modification time, when it was last
seen alive. A second pretraining of the same method into the same output directory is
refused while the lease is live, and the grid dispatcher waits for the holder instead of
submitting the same pretraining twice; this matters when a dispatcher killed with SIGKILL
(its jobs still running on SLURM) is started again.

A lease is free when the file is missing or not a lease (damaged by hand), when its heartbeat
is older than ``STALE_AFTER_SECONDS`` (the holder died on another node), or at once when its
holder was a process of this host and process namespace that no longer exists (SIGKILL, then
the same command again). On a shared file system the heartbeat's time is the file server's
clock, read against this node's: nodes whose clocks are minutes apart would misjudge it.

Written here rather than taken from filelock or fcntl: those locks say nothing about who
holds them, and fcntl locks are not dependable across the nodes of an NFS or Lustre file
system; a heartbeat file is.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cxrbench.records.io import now

LEASE_NAME = "RUNNING.json"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # ten missed heartbeats


class PretrainingInProgressError(RuntimeError):
    """Another live process holds the pretraining lease."""


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int
    pid_namespace: int | None  # containers on one host can share its name but not their pids
    job: str | None
    started: str
    seconds_since_heartbeat: float

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return (f"host {self.host}, pid {self.pid}{job}, started {self.started}, "
                f"last heartbeat {self.seconds_since_heartbeat:.0f}s ago")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux
        return None


def _read_holder(path: Path) -> LeaseHolder | None:
    """The lease at ``path`` as written; None when there is none or it is not a lease.

    Other read errors (a stale NFS handle, say) are raised: they say nothing about the holder.
    """
    try:
        seconds = time.time() - path.stat().st_mtime
        payload = json.loads(path.read_text())
        return LeaseHolder(str(payload["host"]), int(payload["pid"]), payload.get("pid_namespace"), payload.get("job"),
                           str(payload["started"]), max(0.0, seconds))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # linked into place whole, so this was damaged by hand: nobody can hold it


def _is_live(holder: LeaseHolder, stale_after: float) -> bool:
    if holder.seconds_since_heartbeat > stale_after:
        return False
    if (holder.host, holder.pid_namespace) == (socket.gethostname(), _pid_namespace()):
        return _process_exists(holder.pid)
    return True


def live_holder(directory: Path, stale_after: float = STALE_AFTER_SECONDS, name: str = LEASE_NAME) -> LeaseHolder | None:
    """The live holder of the lease ``name`` in ``directory`` (a cell's claim is ``cells/claims/CELL.json``);
    None when the lease is free or stale."""
    holder = _read_holder(Path(directory) / name)
    return holder if holder is not None and _is_live(holder, stale_after) else None


class PretrainingLease:
    """Hold the lease of ``directory`` (``with`` block); raises PretrainingInProgressError if it is live."""

    def __init__(self, directory: Path, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_AFTER_SECONDS, name: str = LEASE_NAME, activity: str = "pretrained"):
        # ``name``/``activity``: the same lease serves as an evaluation cell's claim (cells/claims/CELL.json)
        self.path = Path(directory) / name
        self.activity = activity
        self.heartbeat_seconds, self.stale_after = heartbeat_seconds, stale_after
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        self.identity = {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
                         "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"), "started": now()}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            holder = _read_holder(self.path)  # looked at only after our link failed: no gap to race in
            if holder is not None and _is_live(holder, self.stale_after):
                what = self.path.parent if self.path.name == LEASE_NAME else self.path.stem
                raise PretrainingInProgressError(
                    f"{what} is being {self.activity} by another process ({holder.describe()}); "
                    f"wait for it, or delete {self.path} if that process is gone")
            self._remove_stale()
        self._beating = threading.Thread(target=self._beat, name="cxrbench-lease-heartbeat", daemon=True)
        self._beating.start()

    def _create(self) -> bool:
        """Write the lease whole, then link it into place: ``link`` fails if the lease exists,
        atomically, also on NFS, where O_EXCL was not always honoured. As ``open(2)`` advises
        there, success is read from the link count: a retried link can report EEXIST after it
        succeeded."""
        temporary = self.path.with_name(f".{self.path.name}.{self.identity['host']}.{self.identity['pid']}")
        temporary.write_text(json.dumps(self.identity))
        try:
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass
            return temporary.stat().st_nlink == 2
        finally:
            temporary.unlink(missing_ok=True)

    def _remove_stale(self) -> None:
        """Move the stale lease aside, and delete it only if what was moved is stale indeed: a
        process that took the lease in between keeps it (rename moves one file, atomically)."""
        aside = self.path.with_name(f".{self.path.name}.stale.{self.identity['host']}.{self.identity['pid']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process removed it first
        moved = _read_holder(aside)
        if moved is not None and _is_live(moved, self.stale_after):
            try:
                os.link(aside, self.path)  # a live lease moved by mistake: put it back
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # deleted by hand: nothing to keep alive
                return
            except OSError:  # a passing file-system error: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join(timeout=self.heartbeat_seconds + 5)  # a hung file system must not hold up the exit
        try:
            if json.loads(self.path.read_text()) == self.identity:
                self.path.unlink()
        except (OSError, ValueError):
            pass  # gone or replaced: not ours to remove

    def __enter__(self) -> "PretrainingLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
