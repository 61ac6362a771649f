"""`bench status OUT`: what a grid running elsewhere has done, is doing, has failed and has left.

Read from the results folder alone (``bench run`` writes ``plan.json`` there before it starts),
so it works for a grid on SLURM or in another shell: records are done cells; a live claim
under ``cells/claims`` is a cell being evaluated, a live lease in ``pretrain/M__D`` a method
being pretrained; damaged records moved aside and pretrainings left with checkpoints and no
live lease are reported as failed. The time left is estimated from this folder's own records
(mean cell time per protocol, mean pretraining time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrbench.benchmark.pretraining.lease import live_holder
from cxrbench.records.layout import CHECKPOINTS, ENCODER, PRETRAIN_RECORD, ResultsFolder
from cxrbench.records.schema import CellRecord, PretrainRecord, RecordError, read_record

PLAN_NAME = "plan.json"


@dataclass
class GridStatus:
    out_dir: Path
    planned: list[str] | None  # record names of the latest plan; None without plan.json
    cannot_run: dict[str, str]  # method -> why its cells cannot run where the plan was made
    cannot_run_cells: int
    done: list[str]
    running: dict[str, str]  # record name -> holder
    damaged: list[str]
    left: list[str]
    pretrained: list[str]
    pretraining: dict[str, str]  # method -> holder
    interrupted: list[str]  # pretrainings with checkpoints and no live lease
    to_pretrain: list[str]
    estimate_seconds: float | None
    estimate_basis: str
    plan_created: str | None = None
    command: list[str] = field(default_factory=list)


def write_plan(out_dir: Path, cells: list, cannot_run: dict[str, str], pretraining_methods: list[str], command: list[str]) -> None:
    """The plan of this bench run, for ``bench status`` (replaces the previous run's)."""
    import dataclasses

    from cxrbench.records.io import atomic_write_json, now

    atomic_write_json(ResultsFolder(out_dir).plan_json, {
        "created": now(), "command": command, "cannot_run": cannot_run, "pretraining_methods": pretraining_methods,
        "cells": [dataclasses.asdict(cell) | {"record": cell.record_name} for cell in cells],
    })


def grid_status(out_dir: Path) -> GridStatus:
    folder = ResultsFolder(out_dir)
    plan = json.loads(folder.plan_json.read_text()) if folder.plan_json.is_file() else None
    records = _readable_records(folder)
    running = {}
    for path in sorted(folder.claims.glob("*.json")):
        holder = live_holder(path.parent, name=path.name)
        if holder is not None:
            running[path.stem] = holder.describe()
    damaged = sorted(path.name for path in folder.damaged.glob("*.json"))
    pretrained, pretraining, interrupted, pretrain_seconds = _pretrainings(folder)
    cells = {cell["record"]: cell for cell in plan["cells"]} if plan else {}
    cannot_run = dict(plan.get("cannot_run", {})) if plan else {}
    left = [name for name, cell in cells.items() if cell["method"] not in cannot_run and name not in records and name not in running]
    to_pretrain = sorted({cells[name]["method"] for name in left} & set(plan.get("pretraining_methods", [])) - set(pretrained)) if plan else []
    estimate, basis = None, "no record yet to time a cell by"
    if records and plan is not None:
        estimate, basis = _estimate(records, [cells[name]["protocol"] for name in left], len(to_pretrain), pretrain_seconds)
    cannot_run_count = sum(1 for cell in cells.values() if cell["method"] in cannot_run)
    return GridStatus(Path(out_dir), list(cells) if plan else None, cannot_run, cannot_run_count, sorted(records), running, damaged,
                      left, pretrained, pretraining, interrupted, to_pretrain, estimate, basis,
                      plan.get("created") if plan else None, plan.get("command", []) if plan else [])


def _readable_records(folder: ResultsFolder) -> dict[str, CellRecord]:
    records = {}
    for path in folder.cell_records():
        try:
            records[path.stem] = read_record(path)
        except RecordError:
            continue  # a damaged record: the next bench run moves it aside
    return records


def _pretrainings(folder: ResultsFolder) -> tuple[list[str], dict[str, str], list[str], list[float]]:
    """Methods pretrained, being pretrained (method -> holder), interrupted (checkpoints, no live
    lease), and the stored pretrainings' seconds."""
    pretrained, pretraining, interrupted, seconds = [], {}, [], []
    for directory in sorted(folder.pretrain.glob("*__*")):
        method = directory.name.split("__")[0]
        if (directory / PRETRAIN_RECORD).is_file() and (directory / ENCODER).is_file():
            pretrained.append(method)
            try:
                seconds.append(read_record(directory / PRETRAIN_RECORD, PretrainRecord).seconds)
            except RecordError:
                pass
            continue
        holder = live_holder(directory)
        if holder is not None:
            pretraining[method] = holder.describe()
        elif any((directory / CHECKPOINTS).glob("*.pt")):
            interrupted.append(method)
    return pretrained, pretraining, interrupted, seconds


def _estimate(records: dict[str, CellRecord], protocols_left: list[str], pretrainings_left: int,
              pretrain_seconds: list[float]) -> tuple[float, str]:
    """The time left: each cell left at this folder's mean cell time of its protocol, and each
    pretraining left at its mean pretraining time; with the basis in words."""
    per_protocol: dict[str, list[float]] = {}
    for record in records.values():
        seconds = sum(float(record.timing.get(key, 0.0)) for key in ("shared_s", "train_s", "test_s"))
        per_protocol.setdefault(record.cell.protocol, []).append(seconds)
    overall = float(np.mean([s for values in per_protocol.values() for s in values]))
    estimate = sum(float(np.mean(per_protocol.get(protocol, [overall]))) for protocol in protocols_left)
    basis = f"{len(protocols_left)} cell(s) at this folder's mean cell time per protocol"
    if pretrainings_left and pretrain_seconds:
        estimate += pretrainings_left * float(np.mean(pretrain_seconds))
        basis += f" + {pretrainings_left} pretraining(s) at {np.mean(pretrain_seconds):.0f} s each (this folder's mean)"
    elif pretrainings_left:
        basis += f"; not counted: {pretrainings_left} pretraining(s), none timed yet"
    return estimate, basis


def _names(items, limit: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def describe(status: GridStatus) -> list[str]:
    from cxrbench.benchmark.runner import format_duration

    lines = []
    if status.planned is None:
        lines.append(f"{status.out_dir}: no {PLAN_NAME} (made by bench run from this version on): the plan is unknown; "
                     f"counting what is there")
    else:
        lines.append(f"{status.out_dir}: plan of {status.plan_created}: {len(status.planned)} cells"
                     + (f" ({status.cannot_run_cells} cannot run here: "
                        + "; ".join(f"{m}: {r}" for m, r in status.cannot_run.items())[:300] + ")" if status.cannot_run else "")
                     + (f"; command: {' '.join(status.command)}" if status.command else ""))
    lines.append(f"cells: {len(status.done)} done, {len(status.running)} running, {len(status.damaged)} damaged (moved to cells/damaged), "
                 + (f"{len(status.left)} left" if status.planned is not None else "left unknown"))
    for name, holder in status.running.items():
        lines.append(f"  running: {name} ({holder})")
    if status.damaged:
        lines.append(f"  damaged: {_names(status.damaged)}")
    not_started = [name for name in status.to_pretrain if name not in status.interrupted and name not in status.pretraining]
    lines.append(f"pretraining: {len(status.pretrained)} stored ({_names(status.pretrained)}), {len(status.pretraining)} running, "
                 f"{len(status.interrupted)} interrupted (resume with the same bench run), {len(not_started)} not started"
                 + (f" ({_names(not_started)})" if not_started else ""))
    for method, holder in status.pretraining.items():
        lines.append(f"  pretraining: {method} ({holder})")
    if status.interrupted:
        lines.append(f"  interrupted: {_names(status.interrupted)}")
    if status.planned is not None:
        if status.left or status.running or status.pretraining:
            estimate = f"~{format_duration(status.estimate_seconds)}" if status.estimate_seconds is not None else "unknown"
            lines.append(f"time left: {estimate} ({status.estimate_basis}), one job at a time")
        else:
            lines.append("nothing left: the plan is complete")
    return lines
