"""Who is pretraining a method right now: a lease file with a heartbeat.

A pretraining holds ``RUNNING.json`` in its directory while it runs: where it runs (host,
process, SLURM or submitit job) and, through the file's modification time, when it was last
seen alive. A second pretraining of the same method into the same output directory is
refused while the lease is live, and the grid dispatcher waits for the holder instead of
submitting the same pretraining twice; this matters when a dispatcher killed with SIGKILL
(its jobs still running on SLURM) is started again.

A lease is free when the file is missing or unreadable, when its heartbeat is older than
``STALE_AFTER_SECONDS`` (the holder died on another node), or at once when its holder was a
process on this host that no longer exists (SIGKILL, then the same command again).

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

LEASE_NAME = "RUNNING.json"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # ten missed heartbeats


class PretrainingInProgress(RuntimeError):
    """Another live process holds the pretraining lease."""


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int
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


def live_holder(directory: Path, stale_after: float = STALE_AFTER_SECONDS) -> LeaseHolder | None:
    """The live holder of the lease in ``directory``; None when the lease is free or stale."""
    path = directory / LEASE_NAME
    try:
        seconds = time.time() - path.stat().st_mtime
        payload = json.loads(path.read_text())
        holder = LeaseHolder(str(payload["host"]), int(payload["pid"]), payload.get("job"), str(payload["started"]), max(0.0, seconds))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # written atomically, so unreadable means damaged by hand: nobody can hold it
    if holder.seconds_since_heartbeat > stale_after:
        return None
    if holder.host == socket.gethostname() and not _process_exists(holder.pid):
        return None
    return holder


class PretrainingLease:
    """Hold the lease of ``directory`` (``with`` block); raises PretrainingInProgress if it is live."""

    def __init__(self, directory: Path, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_AFTER_SECONDS):
        self.path = Path(directory) / LEASE_NAME
        self.heartbeat_seconds, self.stale_after = heartbeat_seconds, stale_after
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None
        from cxrbench.benchmark.records import now  # torch comes with it: not at the CLI's import

        self.identity = {"host": socket.gethostname(), "pid": os.getpid(),
                         "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"), "started": now()}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a stale lease is removed once, then taken
            holder = live_holder(self.path.parent, self.stale_after)
            if holder is not None:
                raise PretrainingInProgress(
                    f"{self.path.parent} is being pretrained by another process ({holder.describe()}); "
                    f"wait for it, or delete {self.path} if that process is gone")
            if self._create():
                break
            self.path.unlink(missing_ok=True)  # stale: its holder died
        else:
            raise PretrainingInProgress(f"{self.path}: another process took the lease at the same moment")
        self._beating = threading.Thread(target=self._beat, name="cxrbench-lease-heartbeat", daemon=True)
        self._beating.start()

    def _create(self) -> bool:
        """Write the lease whole, then link it into place: ``link`` fails if the lease exists,
        atomically, also on NFS (where O_EXCL was not always honoured)."""
        temporary = self.path.with_name(f".{LEASE_NAME}.{self.identity['host']}.{self.identity['pid']}")
        temporary.write_text(json.dumps(self.identity))
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # deleted by hand: nothing to keep alive
                return

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
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
