"""The results folder of ``bench run --out DIR``: where each kind of record lives.

::

    DIR/run.json                      the resolved configuration the records were made under
    DIR/plan.json                     the latest run's cells (``bench status`` reads it)
    DIR/cells/CELL.json               one cell's record (``CellRecord``), written last
    DIR/cells/CELL.predictions.npz    its test predictions, written first
    DIR/cells/damaged/                records found unreadable, moved aside (never deleted)
    DIR/cells/claims/CELL.json        a cell being evaluated (a lease: host, pid, heartbeat)
    DIR/cells/tensorboard/CELL/       its validation curves
    DIR/pretrain/METHOD__DATASET/     record.json (``PretrainRecord``), encoder.pth, checkpoints/,
                                      tensorboard/, RUNNING.json (the pretraining's lease)
    DIR/shared/                       what a protocol computes once per encoder (frozen features)
    DIR/paired-tests.csv              every cell against the baseline row's
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRETRAIN_RECORD = "record.json"
ENCODER = "encoder.pth"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class ResultsFolder:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    def cell_record(self, record_name: str) -> Path:
        return self.cells / f"{record_name}.json"

    def cell_records(self) -> list[Path]:
        """Every cell record file, sorted (damaged and claimed ones live in subfolders: not these)."""
        return sorted(self.cells.glob("*.json"))

    @property
    def damaged(self) -> Path:
        return self.cells / "damaged"

    @property
    def claims(self) -> Path:
        return self.cells / "claims"

    def cell_tensorboard(self, record_name: str) -> Path:
        return self.cells / "tensorboard" / record_name

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    def pretrain_dir(self, method: str, dataset: str) -> Path:
        return self.pretrain / f"{method}__{dataset}"

    def pretrain_records(self) -> list[Path]:
        return sorted(self.pretrain.glob(f"*/{PRETRAIN_RECORD}"))

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def paired_tests(self) -> Path:
        return self.root / "paired-tests.csv"
