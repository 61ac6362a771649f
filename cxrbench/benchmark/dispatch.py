"""Grid dispatch: every pretraining and every evaluation cell as a job of its own (submitit).

``bench run --executor local --jobs N`` runs up to N jobs at a time as processes of this
machine (submitit's ``LocalExecutor``); ``--executor slurm`` submits them to SLURM
(submitit's ``AutoExecutor``), up to ``--jobs`` queued or running at once. A method's cells
are submitted only once its pretraining job has stored the encoder, so no cell ever
pretrains; the jobs of one run never write the same file, because each cell has its own
record and each method its own pretraining directory, all written atomically.

This process stays up while the jobs run: it submits, polls and reports. Interrupted, it
can be started again with the same command: finished cells have records and are skipped,
and a pretraining that was cut off resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from cxrbench.benchmark.config import RunConfig, resolve_device
from cxrbench.benchmark.pretraining.lease import PretrainingInProgressError
from cxrbench.benchmark.plan import RunPlan, cells_by_method
from cxrbench.benchmark.runner import Runner
from cxrbench.methods import get_method
from cxrbench.records.schema import Cell, RecordError, read_record


def _job_device(device: str, threads: int):
    """The job's device, resolved where the job runs ("auto" on a SLURM node finds its GPU)."""
    import torch

    interruptible()

    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)


def interruptible() -> None:
    """SIGINT raises KeyboardInterrupt even where it was ignored at start.

    A process started in the background by a non-interactive shell (``nohup bench run ... &``,
    a script) inherits SIGINT ignored, and Python then never installs its handler: submitit's
    cancel (SIGINT) would do nothing and the jobs would train on. Processes this one starts
    inherit the default action, so their Python handles SIGINT too.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pretraining_job(config: RunConfig, out_dir: str, device: str, threads: int, method: str) -> str:
    """One job: pretrain ``method`` and store its encoder (nothing if it is stored already).

    A job of several tasks (``--pretrain-processes``) is one DistributedDataParallel run:
    submitit tells each task its rank and the first host, exported as torchrun would.
    """
    import submitit

    from cxrbench.distributed import process_group_from_environment

    torch_device = _job_device(device, threads)
    group = contextlib.nullcontext((None, torch_device))
    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        group = process_group_from_environment(torch_device)
    with group as (_, torch_device):
        Runner(config, Path(out_dir), torch_device, echo=print).pretrained_encoder(method)
    return method


def cell_job(config: RunConfig, out_dir: str, device: str, threads: int, cell: Cell) -> int:
    """One job: evaluate one cell with the stored encoder; returns the records written (0 or 1)."""
    runner = Runner(config, Path(out_dir), _job_device(device, threads), echo=print, persist_shared=True)
    written = len(runner.run([cell]))
    if runner.claimed_elsewhere:  # not done by this job: say so, so that the grid does not count it as done
        raise PretrainingInProgressError(f"cell {cell.record_name} is being evaluated by another process "
                                         f"(its claim in {Path(out_dir) / 'cells' / 'claims'}); run the same command again later")
    return written


def parse_slurm_time(text: str) -> int:
    """Minutes from ``90`` (minutes), ``1:30:00`` (H:MM:SS) or ``2-00:00:00`` (D-HH:MM:SS)."""
    text = text.strip()
    if text.isdigit():
        minutes = int(text)
    else:
        match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", text)
        if not match:
            raise ValueError(f"--slurm-time {text!r}: expected minutes (90), H:MM:SS (1:30:00) or D-HH:MM:SS (2-00:00:00)")
        days, hours, mins, seconds = (int(group or 0) for group in match.groups())
        minutes = days * 24 * 60 + hours * 60 + mins + (1 if seconds else 0)
    if minutes <= 0:
        raise ValueError(f"--slurm-time {text!r}: expected a limit longer than 0 minutes")
    return minutes


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: int | None = None
    time_minutes: int = 24 * 60
    account: str | None = None
    constraint: str | None = None
    qos: str | None = None
    nodes: int = 1  # of a pretraining job


class Executors:
    """Two submitit executors on one folder: pretraining jobs (possibly several processes,
    GPUs and nodes) and evaluation-cell jobs (one process); ``submit`` hands each its GPUs.

    On SLURM the scheduler gives each job its GPUs. Local jobs see no GPU unless told
    (submitit sets ``CUDA_VISIBLE_DEVICES`` from ``visible_gpus``): a job in concurrency slot
    s gets GPU s mod G, a pretraining job of P processes P consecutive GPUs from there.
    """

    def __init__(self, kind: str, folder: Path, slurm: SlurmOptions, pretrain_processes: int = 1,
                 device: str = "auto", local_gpus: int = 0, threads: int = 0):
        self.kind, self.device, self.threads = kind, device, threads
        self.pretrain_processes = pretrain_processes
        self.local_gpus = local_gpus if kind == "local" and device in ("auto", "cuda") else 0
        self.pretraining = self._make(kind, folder, slurm, processes=pretrain_processes, nodes=slurm.nodes)
        self.cells = self._make(kind, folder, slurm, processes=1, nodes=1)
        if kind == "slurm":
            # one failed task ends the job's other tasks instead of leaving them in a collective
            self.pretraining.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])

    @staticmethod
    def _make(kind: str, folder: Path, slurm: SlurmOptions, processes: int, nodes: int):
        import submitit

        if kind == "local":
            executor = submitit.LocalExecutor(folder=str(folder))
            executor.update_parameters(timeout_min=slurm.time_minutes, tasks_per_node=processes)
            return executor
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        extra = {key: value for key, value in {"account": slurm.account, "qos": slurm.qos}.items() if value}
        # a pretraining job of P processes: P tasks on each of its nodes, one GPU each
        gpus = processes if processes > 1 else slurm.gpus
        executor.update_parameters(
            name="cxrbench", timeout_min=slurm.time_minutes, nodes=nodes, tasks_per_node=processes, gpus_per_node=gpus,
            cpus_per_task=slurm.cpus, slurm_partition=slurm.partition, slurm_mem=f"{slurm.mem_gb}G" if slurm.mem_gb else None,
            slurm_constraint=slurm.constraint, slurm_additional_parameters=extra,
        )
        return executor

    def submit(self, kind: str, slot: int, runner: Runner, payload):
        """Submit one pretraining (``payload`` = method) or cell (``payload`` = Cell) job."""
        processes = self.pretrain_processes if kind == "pretrain" else 1
        executor = self.pretraining if kind == "pretrain" else self.cells
        device = self.device
        if self.local_gpus:
            first = slot * processes
            gpus = [(first + index) % self.local_gpus for index in range(processes)]
            executor.update_parameters(gpus_per_node=processes, visible_gpus=gpus)
            device = "cuda"  # the job sees only its own GPUs; a DDP task takes its local rank's
        # CPU threads: this machine's cores shared out between the jobs and their processes
        threads = max(1, self.threads // processes) if self.threads else 0
        function = pretraining_job if kind == "pretrain" else cell_job
        return executor.submit(function, runner.config, str(runner.out_dir), device, threads, payload)


@dataclass
class DispatchResult:
    written: int = 0
    failures: list[str] = field(default_factory=list)  # one line per failed job
    missing: dict[str, str] = field(default_factory=dict)  # method -> why its cells were not run


def dispatch(runner: Runner, plan: RunPlan | list[Cell], executors: Executors, *, jobs: int,
             poll_seconds: float = 1.0, echo: Callable[[str], None] = tqdm.write,
             cancel_grace_seconds: float = 30.0) -> DispatchResult:
    """Run the plan's cells as jobs on ``executors``, at most ``jobs`` at a time; pretraining first."""
    plan = plan if isinstance(plan, RunPlan) else RunPlan.for_cells(plan, runner.config)
    grid = _Grid(runner, executors, jobs, echo)
    grid.queue(plan)
    try:
        while grid.ready or grid.running or grid.watched:
            grid.submit_ready()
            time.sleep(poll_seconds)
            for job in [job for job in grid.running if job.done()]:
                grid.collect(job)
            grid.look_at_watched()
    except BaseException:
        # Ctrl-C, SIGTERM/SIGHUP (turned into SystemExit by the CLI) or an error while polling:
        # the jobs of this run would otherwise go on (SLURM) or be orphaned; finished cells keep
        # their records and a cut-off pretraining its checkpoints
        cancel_jobs(list(grid.running), grace_seconds=cancel_grace_seconds)
        echo(f"interrupted: {len(grid.running)} running job(s) cancelled; the same command resumes")
        raise
    grid.progress.close()
    return grid.result


class _Grid:
    """The dispatcher's state: jobs ready to submit (pretraining first), cells waiting for their
    method's encoder, methods pretrained by a process this run did not start, and running jobs."""

    def __init__(self, runner: Runner, executors: Executors, jobs: int, echo: Callable[[str], None]):
        self.runner, self.executors, self.echo = runner, executors, echo
        self.result = DispatchResult()
        self.waiting: dict[str, list[Cell]] = {}  # method -> cells held back until its encoder is stored
        self.watched: set[str] = set()
        self.ready: deque = deque()  # (kind, payload): ("pretrain", method) or ("cell", cell)
        self.running: dict = {}  # submitit job -> (kind, payload, slot)
        self.free_slots = list(range(jobs))
        self.progress = None

    def queue(self, plan: RunPlan) -> None:
        """Sort the plan's pending cells: not runnable here, ready now, or waiting for a pretraining."""
        self.waiting = cells_by_method(self.runner.pending(plan.cells))
        for method in list(self.waiting):
            if method in plan.cannot_run:
                self.result.missing[method] = plan.cannot_run[method]
                self.echo(f"{method}: {len(self.waiting.pop(method))} cell(s) not run: {plan.cannot_run[method]}")
            elif not get_method(method).pretrains or self.runner.encoder_is_stored(method):
                self.ready.extend(("cell", cell) for cell in self.waiting.pop(method))
            elif (holder := _pretraining_holder(self.runner, method)) is not None:
                # e.g. the job of a dispatcher that was killed: submitting it again would train twice
                self.watched.add(method)
                self.echo(f"{method}: its pretraining is running already ({holder}); waiting for its encoder")
            else:
                self.ready.appendleft(("pretrain", method))  # pretraining jobs go first: the most work waits on them
        total = len(self.ready) + len(self.watched) + sum(len(held) for held in self.waiting.values())
        self.progress = tqdm(total=total, desc="jobs", unit="job", disable=None)

    def submit_ready(self) -> None:
        while self.ready and self.free_slots:
            kind, payload = self.ready.popleft()
            slot = self.free_slots.pop(0)
            self.running[self.executors.submit(kind, slot, self.runner, payload)] = (kind, payload, slot)

    def collect(self, job) -> None:
        """A finished job: its cell's line, its method's cells released, or its failure recorded."""
        kind, payload, slot = self.running.pop(job)
        self.free_slots.append(slot)
        self.free_slots.sort()
        self.progress.update(1)
        try:
            outcome = job.results()[0]  # a job of several tasks (DDP pretraining) has one result each
        except Exception as error:  # the job's traceback is in its log; one line here
            self._failed(job, kind, payload, _exception_line(error))
            return
        if kind == "pretrain":
            self.echo(f"pretrained {payload} (job {job.job_id})")
            self.ready.extend(("cell", cell) for cell in self.waiting.pop(payload, []))
        else:
            self.result.written += int(outcome)
            self.echo(f"[{self.progress.n}/{self.progress.total} jobs] {_cell_line(self.runner, payload, job)}")

    def _failed(self, job, kind: str, payload, reason: str) -> None:
        if kind == "pretrain" and "PretrainingInProgressError" in reason and _pretraining_holder(self.runner, payload):
            # another process took the lease first (a job this run's earlier dispatcher
            # left queued, say): its encoder serves these cells as well
            self.watched.add(payload)
            self.progress.total += 1
            self.echo(f"{payload}: its pretraining is running in another process; waiting for its encoder")
            return
        name = payload if kind == "pretrain" else payload.record_name
        self.result.failures.append(f"{kind} {name}: {reason} (log: {job.paths.stderr})")
        self.echo(f"failed: {kind} {name}: {reason}")
        if kind == "pretrain":
            dropped = self.waiting.pop(payload, [])
            self.result.failures.extend(f"cell {cell.record_name}: not run, its pretraining failed" for cell in dropped)
            self.progress.update(len(dropped))

    def look_at_watched(self) -> None:
        """A pretraining held elsewhere that let go (it stores the encoder before it does) or died."""
        for method in sorted(self.watched):
            if _pretraining_holder(self.runner, method) is not None:
                continue
            self.watched.discard(method)
            if self.runner.encoder_is_stored(method):
                self.progress.update(1)
                self.echo(f"pretrained {method} (by the process that held its pretraining)")
                self.ready.extend(("cell", cell) for cell in self.waiting.pop(method, []))
            else:
                self.echo(f"{method}: the pretraining it waited for stopped without an encoder; submitted again "
                          f"(it resumes from its last checkpoint)")
                self.ready.appendleft(("pretrain", method))


def cancel_jobs(jobs: list, grace_seconds: float = 30.0) -> None:
    """Cancel jobs however the grid was started, and make sure local ones end.

    submitit cancels a local job with SIGINT to its controller process, which stops its tasks;
    the job's own SIGTERM handler only logs "Bypassing signal SIGTERM". A local job still
    running after ``grace_seconds`` (SIGINT ignored, a task stuck in a collective) is killed
    with its tasks (SIGKILL); its pretraining lease is then free at once, its holder being a
    dead process of this host. SLURM jobs are cancelled by scancel, which does the same there.
    """
    for job in jobs:
        job.cancel(check=False)
    local = [job for job in jobs if getattr(job, "_process", None) is not None]
    deadline = time.monotonic() + grace_seconds
    while any(job._process.poll() is None for job in local) and time.monotonic() < deadline:
        time.sleep(0.2)
    for job in local:
        if job._process.poll() is None:
            _kill_tree(job._process.pid)
            job._process.wait()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (its tasks first)."""
    for victim in [*_descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none, and the controller's own SIGINT handling is relied on)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return found


def _pretraining_holder(runner: Runner, method: str) -> str | None:
    """Who holds the method's pretraining lease, described; None when nobody live does.

    A lease that cannot be read for a moment (a stale NFS handle) counts as held: waiting one
    more poll costs less than a second pretraining.
    """
    try:
        holder = runner.pretraining_holder(method)
    except OSError as error:
        return f"its lease could not be read: {error}"
    return holder.describe() if holder is not None else None


def _cell_line(runner, cell, job) -> str:
    """The finished cell's score, read from its record (the job's own line is in its log)."""
    try:
        record = read_record(runner.cell_path(cell))
    except RecordError:
        return f"{cell.record_name}: done (job {job.job_id})"
    score = record.score(record.headline_metric)
    shown = f"{record.headline_metric} {score:.4f}" if score is not None else f"{record.headline_metric} undefined"
    return f"{cell.record_name}: {shown} (job {job.job_id})"


def _exception_line(error: Exception) -> str:
    """The job's own exception line (``ValueError: ...``) out of submitit's report with its traceback."""
    lines = [line.strip() for line in str(error).splitlines()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    return raised[-1] if raised else f"{type(error).__name__}: {lines[0] if lines else ''}"


def default_threads(jobs: int) -> int:
    """CPU threads per local job: the machine's cores shared out (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))
