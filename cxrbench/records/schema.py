"""The two records a run writes, as typed, versioned schemas.

The runner builds a ``CellRecord`` per evaluated cell and a ``PretrainRecord`` per pretraining
and writes them with ``to_json``; reports, comparisons and ``bench status`` read them back with
``from_json``, which checks every field it reads (kind and range) and raises ``RecordError``
naming the field. The schemas are here, not in the runner, so that the reports depend on the
records alone.

Version 1 is every record written before ``schema_version`` existed; ``from_json`` reads it as
version 2 (see ``_V1_BASELINE_RANKS``). Fields a record of either version may lack have the
defaults below, which are what the readers assumed before the schema existed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

# Version-1 records named a baseline only by ``method_is_baseline``; the order in which the
# baselines were preferred (Sup.2, ImageNet initialisation, then Sup.1, random initialisation)
# lived in the runner. Records since carry it as ``method_baseline_rank``.
_V1_BASELINE_RANKS = {"sup2": 0, "sup1": 1}
_V1_RANDOM_INIT = "sup1"

UNIT_INTERVAL_METRICS = {"mean_auroc", "dice_per_image"}


class RecordError(ValueError):
    """A file that is not a valid record; the message names the file (when known), the field and
    what was expected; ``reason`` is the message without the file."""

    def __init__(self, reason: str, path: Path | None = None):
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.reason, self.path = reason, path


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: (method, dataset, protocol, label fraction in percent, seed)."""

    method: str
    dataset: str
    protocol: str
    label_fraction: float
    seed: int

    @property
    def record_name(self) -> str:
        fraction = f"{self.label_fraction:g}".replace(".", "p")
        return f"{self.method}__{self.dataset}__{self.protocol}__{fraction}pct__seed{self.seed}"

    @classmethod
    def from_json(cls, data: Any) -> Cell:
        if not isinstance(data, dict):
            raise RecordError(f"cell is {data!r}, expected an object")
        for name in ("method", "dataset", "protocol"):
            if not isinstance(data.get(name), str):
                raise RecordError(f"cell.{name} is {data.get(name)!r}, expected a string")
        fraction, seed = data.get("label_fraction"), data.get("seed")
        if not _is_number(fraction) or not 0 < fraction <= 100:
            raise RecordError(f"cell.label_fraction is {fraction!r}, expected a number in (0, 100]")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RecordError(f"cell.seed is {seed!r}, expected an integer")
        return cls(data["method"], data["dataset"], data["protocol"], float(fraction), seed)


class _JsonRecord:
    """What both records share: written as plain JSON, read back from a JSON object."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def _as_object(data: Any) -> dict:
        if not isinstance(data, dict):
            raise RecordError(f"the file holds a JSON {type(data).__name__}, expected an object")
        return data


@dataclass
class CellRecord(_JsonRecord):
    """One evaluated cell: its scores, how they were made, and where its predictions are."""

    cell: Cell
    metrics: dict
    method_display_name: str = ""
    method_is_baseline: bool = False
    # which baseline a table compares against: the lowest rank present (Sup.2 0, Sup.1 1)
    method_baseline_rank: int | None = None
    # the row every method must beat to have learned anything (a randomly initialised network)
    method_is_random_init: bool = False
    method_ablation: dict | None = None  # Table III switches of an ablation variant
    method_provenance: dict | None = None  # an encoder row's file: SHA-256, format, key mapping
    method_backbone: str = "resnet18"
    pretrain_dataset: str | None = None
    task: str | None = None
    label_columns: list = field(default_factory=list)
    num_train_images: int | None = None
    label_subset: dict | None = None
    dataset_root: str | None = None
    headline_metric: str = "mean_auroc"
    # the protocol's feature version ("bn-train": BatchNorm re-estimated before a frozen probe)
    protocol_version: str | None = None
    bootstrap: dict | None = None
    selection: dict | None = None
    timing: dict = field(default_factory=dict)
    config: dict | None = None
    pretrain_record: str | None = None  # the pretraining folder, relative to the results folder
    predictions_file: str | None = None  # beside the record
    environment: dict | None = None
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, data: Any, check_scores: bool = True) -> CellRecord:
        """The record in ``data``; ``check_scores=False`` leaves the scores' values unchecked (the
        runner's question is only whether the cell was done, not whether its score is usable)."""
        data = cls._as_object(data)
        version = data.get("schema_version", 1)
        if version not in (1, SCHEMA_VERSION):
            raise RecordError(f"schema_version is {version!r}, expected 1 or {SCHEMA_VERSION} (a newer cxrbench wrote it?)")
        cell = Cell.from_json(data.get("cell"))
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            raise RecordError(f"metrics is {metrics!r}, expected an object")
        headline = data.get("headline_metric", "mean_auroc")
        if not isinstance(headline, str):
            raise RecordError(f"headline_metric is {headline!r}, expected a string")
        for name in {"mean_auroc", "dice_per_image", headline} if check_scores else ():
            _check_score(metrics, name)
        predictions = data.get("predictions_file")
        if predictions is not None and (not isinstance(predictions, str) or not predictions or Path(predictions).name != predictions):
            raise RecordError(f"predictions_file is {predictions!r}, expected a file name beside the record")
        values = {name: data[name] for name in _FIELDS if name in data}
        values.update(cell=cell, metrics=metrics, headline_metric=headline, schema_version=SCHEMA_VERSION)
        values["method_display_name"] = str(values.get("method_display_name", cell.method))
        values["method_backbone"] = str(values.get("method_backbone", "resnet18"))
        values["method_is_baseline"] = bool(values.get("method_is_baseline", False))
        if version == 1:
            values["method_baseline_rank"] = _V1_BASELINE_RANKS.get(cell.method) if values["method_is_baseline"] else None
            values["method_is_random_init"] = cell.method == _V1_RANDOM_INIT
        rank = values.get("method_baseline_rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
            raise RecordError(f"method_baseline_rank is {rank!r}, expected an integer or null")
        if not isinstance(values.get("protocol_version"), (str, type(None))):
            values["protocol_version"] = None
        return cls(**values)

    def interval_bound(self, side: str) -> float | None:
        """The stored 95 % bootstrap bound (``low``/``high``) of the headline score, if it is a finite number."""
        value = self.bootstrap.get(side) if isinstance(self.bootstrap, dict) else None
        return float(value) if _is_number(value) and math.isfinite(value) else None

    def validation_curve(self) -> list | None:
        """[step, validation score] of each evaluation of a fine-tune or segmentation cell."""
        curve = self.selection.get("curve") if isinstance(self.selection, dict) else None
        if not curve:
            return None
        if not all(isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point) for point in curve):
            raise RecordError("selection.curve is not a list of [step, score] pairs")
        return curve

    def score(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None else float(value)


_FIELDS = [f.name for f in dataclasses.fields(CellRecord)]


@dataclass
class PretrainRecord(_JsonRecord):
    """One pretraining: the encoder beside it (``encoder.pth``) and how it was made."""

    method: str
    pretrain_dataset: str
    seconds: float
    seed: int = 0
    hyperparameters: dict = field(default_factory=dict)
    pretrain_settings: dict = field(default_factory=dict)
    processes: int = 1
    steps: int | None = None
    epochs: float | None = None
    history: list = field(default_factory=list)  # one entry per epoch
    step_history: list = field(default_factory=list)  # every k-th step (at most ~400 points)
    # collapse check: the exported encoder against the same network at initialisation
    diagnostics: dict = field(default_factory=dict)
    environment: dict | None = None
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, data: Any) -> PretrainRecord:
        data = cls._as_object(data)
        for name in ("method", "pretrain_dataset"):
            if not isinstance(data.get(name), str):
                raise RecordError(f"{name} is {data.get(name)!r}, expected a string")
        if not _is_number(data.get("seconds")) or not data["seconds"] >= 0:
            raise RecordError(f"seconds is {data.get('seconds')!r}, expected a number of seconds")
        for name in ("history", "step_history"):
            if not isinstance(data.get(name, []) or [], list):
                raise RecordError(f"{name} is {data.get(name)!r}, expected a list")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {name: value for name, value in data.items() if name in fields}
        values.update(schema_version=SCHEMA_VERSION, history=data.get("history") or [], step_history=data.get("step_history") or [])
        return cls(**values)


def read_record(path: Path, schema=CellRecord):
    """The record at ``path`` (a ``CellRecord`` unless ``schema`` says otherwise); ``RecordError``
    naming the file if it is unreadable or not valid."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"unreadable ({type(error).__name__}: {error})", path) from None
    try:
        return schema.from_json(data)
    except RecordError as error:
        raise RecordError(error.reason, path) from None


def record_problem(path: Path, cell: Cell) -> str | None:
    """Why the file at ``path`` is not a complete record of ``cell``, or None if it is."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    if not isinstance(data, dict) or not isinstance(data.get("cell"), dict):
        return "not a cell record (no 'cell')"
    try:
        record = CellRecord.from_json(data, check_scores=False)
    except RecordError as error:
        stored = data["cell"]
        return f"holds another cell ({stored})" if str(error).startswith("cell.") else str(error)
    if dataclasses.astuple(record.cell) != dataclasses.astuple(cell):
        return f"holds another cell ({data['cell']})"
    if record.predictions_file and not (Path(path).parent / record.predictions_file).is_file():
        return f"its predictions file {record.predictions_file} is missing"
    return None


def choose_baseline(ranks: dict[str, int | None]) -> str | None:
    """The baseline among the methods present (method -> baseline rank, None for no baseline):
    the lowest rank, then the name."""
    ranked = sorted((rank, name) for name, rank in ranks.items() if rank is not None)
    return ranked[0][1] if ranked else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_score(metrics: dict, name: str) -> None:
    """A score is absent, or a finite number (in [0, 1] for AUROC and Dice)."""
    value = metrics.get(name)
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise RecordError(f"metrics.{name} is {value!r}, expected a finite number")
    if name in UNIT_INTERVAL_METRICS and not 0 <= value <= 1:
        raise RecordError(f"metrics.{name} is {value!r}, expected a number in [0, 1]")
