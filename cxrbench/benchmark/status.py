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

from cxrbench.benchmark.lease import LEASE_NAME, STALE_AFTER_SECONDS, _is_live, _read_holder

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

    from cxrbench.benchmark.records import atomic_write_json, now

    atomic_write_json(Path(out_dir) / PLAN_NAME, {
        "created": now(), "command": command, "cannot_run": cannot_run, "pretraining_methods": pretraining_methods,
        "cells": [dataclasses.asdict(cell) | {"record": cell.record_name} for cell in cells],
    })


def grid_status(out_dir: Path) -> GridStatus:
    out_dir = Path(out_dir)
    plan = json.loads((out_dir / PLAN_NAME).read_text()) if (out_dir / PLAN_NAME).is_file() else None
    records = {}
    for path in sorted((out_dir / "cells").glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue  # a damaged record: the next bench run moves it aside
    running = {}
    for path in sorted((out_dir / "cells" / "claims").glob("*.json")):
        holder = _read_holder(path)
        if holder is not None and _is_live(holder, STALE_AFTER_SECONDS):
            running[path.stem] = holder.describe()
    damaged = sorted(path.name for path in (out_dir / "cells" / "damaged").glob("*.json"))
    pretrained, pretraining, interrupted = [], {}, []
    pretrain_seconds = []
    for directory in sorted((out_dir / "pretrain").glob("*__*")):
        method = directory.name.split("__")[0]
        if (directory / "record.json").is_file() and (directory / "encoder.pth").is_file():
            pretrained.append(method)
            try:
                pretrain_seconds.append(float(json.loads((directory / "record.json").read_text())["seconds"]))
            except (ValueError, KeyError, TypeError):
                pass
            continue
        holder = _read_holder(directory / LEASE_NAME)
        if holder is not None and _is_live(holder, STALE_AFTER_SECONDS):
            pretraining[method] = holder.describe()
        elif any((directory / "checkpoints").glob("*.pt")):
            interrupted.append(method)
    cells = {cell["record"]: cell for cell in plan["cells"]} if plan else {}
    planned = list(cells) if plan else None
    cannot_run = dict(plan.get("cannot_run", {})) if plan else {}
    left = [name for name, cell in cells.items() if cell["method"] not in cannot_run and name not in records and name not in running]
    to_pretrain = sorted({cells[name]["method"] for name in left} & set(plan.get("pretraining_methods", [])) - set(pretrained)) if plan else []

    per_protocol: dict[str, list[float]] = {}
    for record in records.values():
        timing = record.get("timing", {})
        seconds = sum(float(timing.get(key, 0.0)) for key in ("shared_s", "train_s", "test_s"))
        per_protocol.setdefault(record.get("cell", {}).get("protocol", "?"), []).append(seconds)
    estimate, basis = None, "no record yet to time a cell by"
    if per_protocol and plan is not None:
        overall = float(np.mean([s for values in per_protocol.values() for s in values]))
        estimate = sum(float(np.mean(per_protocol.get(cells[name]["protocol"], [overall]))) for name in left)
        basis = f"{len(left)} cell(s) at this folder's mean cell time per protocol"
        if to_pretrain:
            if pretrain_seconds:
                estimate += len(to_pretrain) * float(np.mean(pretrain_seconds))
                basis += f" + {len(to_pretrain)} pretraining(s) at {np.mean(pretrain_seconds):.0f} s each (this folder's mean)"
            else:
                basis += f"; not counted: {len(to_pretrain)} pretraining(s), none timed yet"
    cannot_run_count = sum(1 for cell in cells.values() if cell["method"] in cannot_run)
    return GridStatus(out_dir, planned, cannot_run, cannot_run_count, sorted(records), running, damaged, left, pretrained, pretraining,
                      interrupted, to_pretrain, estimate, basis,
                      plan.get("created") if plan else None, plan.get("command", []) if plan else [])


def _names(items, limit: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def describe(status: GridStatus) -> list[str]:
    from cxrbench.benchmark.runner import _duration

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
            estimate = f"~{_duration(status.estimate_seconds)}" if status.estimate_seconds is not None else "unknown"
            lines.append(f"time left: {estimate} ({status.estimate_basis}), one job at a time")
        else:
            lines.append("nothing left: the plan is complete")
    return lines
