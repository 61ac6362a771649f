"""The protocol runner: pretrain each method once, then evaluate every cell.

A cell is (method, dataset, protocol, label fraction, seed); its result is one JSON record
under ``OUT/cells/`` (plus its test predictions, compressed, beside it). Records are written
atomically as each cell finishes, and a cell that already has a record is skipped, so an
interrupted run loses at most the cell in progress and re-running the same command never
writes a duplicate. The pretrained encoder of each method is stored once under
``OUT/pretrain/`` and reused by every cell.

The runner knows methods and protocols only through their interfaces: it never branches
on a method's or a protocol's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import io
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrbench.benchmark.config import RunConfig
from cxrbench.benchmark.errors import StoredEncoderError
from cxrbench.benchmark.plan import RunPlan, cells_by_method
from cxrbench.benchmark.pretraining.diagnostics import encoder_diagnostics, relative_change
from cxrbench.benchmark.pretraining.lease import LeaseHolder, PretrainingInProgressError, PretrainingLease, live_holder
from cxrbench.benchmark.pretraining.loop import pretrain
from cxrbench.benchmark.protocols.registry import PROTOCOLS
from cxrbench.datasets import DATASETS, PreparedDataset
from cxrbench.distributed import barrier, sum_across_processes, world
from cxrbench.methods import get_method
from cxrbench.methods.base import Method
from cxrbench.methods.external import register_encoder_rows
from cxrbench.records.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, now, read_json
from cxrbench.records.layout import CHECKPOINTS, ENCODER, PRETRAIN_RECORD, ResultsFolder
from cxrbench.records.provenance import environment
from cxrbench.records.schema import Cell, CellRecord, PretrainRecord, read_record, record_problem
from cxrbench.records.statistics import bootstrap_interval, statistic_from_predictions


def _read_stored_encoder(directory: Path) -> tuple[dict, PretrainRecord]:
    try:
        return (torch.load(directory / ENCODER, map_location="cpu", weights_only=True),
                read_record(directory / PRETRAIN_RECORD, PretrainRecord))
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StoredEncoderError(
            f"{directory}: its stored encoder cannot be read ({type(error).__name__}: {reason}); delete "
            f"{directory / ENCODER} and {directory / PRETRAIN_RECORD} and run the same command: the pretraining "
            f"resumes from its last checkpoint in {directory / CHECKPOINTS}") from None


def holds_results(out_dir: Path) -> bool:
    """Whether a run folder holds anything made under its configuration: cell records, encoders or checkpoints."""
    # a run in progress counts too (its leases and claims), and the stored frozen features
    return any(out_dir.glob("cells/*.json")) or any(out_dir.glob("pretrain/*/encoder.pth")) \
        or any(out_dir.glob("pretrain/*/checkpoints/*.pt")) or any(out_dir.glob("pretrain/*/RUNNING.json")) \
        or any(out_dir.glob("cells/claims/*.json")) or any(out_dir.glob("shared/*"))


def _profile_keys_with_results(out_dir: Path) -> set[str]:
    """The ``methods:`` entries (profile keys) that some result in ``out_dir`` was made under: the
    methods named by its cell records, claims, pretraining folders and stored features, each mapped
    to the entry it reads (an ablation variant reads its parent's). An unregistered name counts as
    its own entry."""
    names = {path.name.split("__")[0] for pattern in ("cells/*.json", "cells/claims/*.json", "pretrain/*", "shared/*")
             for path in out_dir.glob(pattern)}
    keys = set()
    for name in names:
        try:
            keys.add(get_method(name).profile_key or name)
        except KeyError:
            keys.add(name)
    return keys


class LeaseDecision(enum.IntEnum):
    """What rank 0 found at a pretraining's lease, shared with the other ranks as a number."""

    PRETRAIN = 0
    STORED = 1
    REFUSED = 2
    FAILED = 3


class Runner:
    def __init__(self, config: RunConfig, out_dir: Path, device: torch.device, echo: Callable[[str], None] = tqdm.write,
                 persist_shared: bool = False):
        self.config = config
        self.profile = config.profile  # stored whole in run.json and every record
        register_encoder_rows(config.encoders)  # a grid job's process registers the run's encoder rows
        # jobs that each run one cell keep what a protocol computes once per encoder (the frozen
        # probe's features) on disk, so the other cells of that encoder load it
        self.persist_shared = persist_shared
        self.out_dir = Path(out_dir)
        self.folder = ResultsFolder(self.out_dir)
        self.device = device
        self.echo = echo
        self._datasets: dict[str, PreparedDataset] = {}
        self.claimed_elsewhere: list[Cell] = []  # cells another live process was evaluating
        self.missing: dict[str, str] = {}  # method -> why its cells were not run
        self._position = ""  # "[k/N, ~time left] " before each cell's line, set by ``run``
        self._environment = environment(device)

    # --- the configuration an output directory belongs to

    @staticmethod
    def configuration_conflict(out_dir: Path, profile: dict) -> str | None:
        """Why ``out_dir`` cannot take records of ``profile`` (None if it can).

        Cells are skipped when a record exists, so every record in a directory must have been made
        under the profile as it applies now; ``run.json`` stores the profile. A method's own entry
        (``methods.NAME``; an encoder row's ``encoders.NAME``) applies to that method's records only: tuning one method in a folder that
        holds other methods' records is allowed, and is refused only while records of that method
        (or of a variant reading its entry) are there.
        """
        stored_path = ResultsFolder(out_dir).run_json
        if not stored_path.is_file() or not holds_results(Path(out_dir)):
            return None  # a folder without records takes any configuration (claim_out_dir rewrites run.json)
        try:
            stored = read_json(stored_path)["profile"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return (f"its {stored_path} is unreadable ({type(error).__name__}); it records the configuration of the "
                    f"records there: restore it, or move the folder's records away")
        in_use = _profile_keys_with_results(Path(out_dir))
        differences = sorted(difference for difference in _differences(stored, profile)
                             if not difference.startswith(("methods.", "encoders.")) or difference.split(".")[1].split(":")[0] in in_use)
        return ", ".join(differences[:5]) + (" ..." if len(differences) > 5 else "") if differences else None

    def claim_out_dir(self) -> None:
        """Store the profile in ``run.json``. Called after ``configuration_conflict`` found none, so
        any difference from the stored one is in the entry of a method with no results here."""
        path = self.folder.run_json
        if not path.is_file() or not holds_results(self.out_dir) or read_json(path).get("profile") != self.profile:
            created = read_json(path).get("created") if path.is_file() and holds_results(self.out_dir) else None
            atomic_write_json(path, {"profile": self.profile, "created": created or now()})

    # --- data

    def dataset(self, name: str) -> PreparedDataset:
        if name not in self._datasets:
            self._datasets[name] = DATASETS.get(name)().load(self.config.data)
        return self._datasets[name]

    # --- paths

    def cell_path(self, cell: Cell) -> Path:
        return self.folder.cell_record(cell.record_name)

    def has_record(self, cell: Cell) -> bool:
        """Whether ``cell`` has a complete record; a damaged one is moved aside (never deleted) and
        the cell counts as not done, so that it is evaluated again."""
        path = self.cell_path(cell)
        if not path.is_file():
            return False
        problem = record_problem(path, cell)
        if problem is None:
            return True
        aside = self.folder.damaged / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another process of this run moved it first
            path.rename(aside)
            self.echo(f"bench run: warning: {path}: {problem}; moved to {aside} and evaluated again")
        return False

    def pretrain_dir(self, method: str, dataset: str) -> Path:
        return self.folder.pretrain_dir(method, dataset)

    # --- stages

    def hyperparameters(self, name: str):
        return self.config.method_hyperparameters(name)

    def build_method(self, name: str) -> Method:
        return get_method(name).create(self.hyperparameters(name), backbone=self.config.backbone)

    def encoder_is_stored(self, method_name: str) -> bool:
        directory = self.pretrain_dir(method_name, self.config.pretrain.dataset)
        return (directory / PRETRAIN_RECORD).is_file() and (directory / ENCODER).is_file()

    def pretraining_holder(self, method_name: str) -> LeaseHolder | None:
        """The live process pretraining this method into this output directory, if any."""
        return live_holder(self.pretrain_dir(method_name, self.config.pretrain.dataset))

    def pretrained_encoder(self, method_name: str) -> tuple[dict, PretrainRecord]:
        """Pretrain once (or reuse the stored encoder); returns (state dict, pretrain record)."""
        settings = self.config.pretrain
        directory = self.pretrain_dir(method_name, settings.dataset)
        with self._pretraining_lease(method_name, directory) as stored:
            if not stored:
                seed = settings.seed
                torch.manual_seed(seed)  # the initialisation is reproducible, and is what the diagnostics compare to
                method = self.build_method(method_name)
                dataset = self.dataset(settings.dataset)
                result = pretrain(
                    method, dataset,
                    batch_size=settings.batch_size, epochs=settings.epochs,
                    max_steps=settings.max_steps, seed=seed, device=self.device,
                    description=f"pretrain {method_name}", checkpoint_dir=directory / CHECKPOINTS,
                    options=settings.options,
                    log_dir=directory / "tensorboard",  # `tensorboard --logdir OUT` draws every method's curves
                )
                if world().is_main:
                    self._store_pretraining(method_name, method, dataset, seed, result, directory)
                barrier()  # under torchrun the other ranks read what rank 0 wrote
        return _read_stored_encoder(directory)

    @contextlib.contextmanager
    def _pretraining_lease(self, method_name: str, directory: Path):
        """Yields whether the encoder is stored already; if not, rank 0 holds the directory's
        lease until the block ends.

        Rank 0 decides for every rank (one all-reduce): a rank that went on, or stopped, alone
        would leave the others waiting in a collective. The encoder is looked for again once the
        lease is held: another process may have stored it and let go in between.
        """
        lease = PretrainingLease(directory) if world().is_main else None
        held, failure, decision = False, None, LeaseDecision.PRETRAIN
        try:
            if lease is not None:
                held, failure, decision = self._take_lease(method_name, lease)
            decision = sum_across_processes(decision)  # only rank 0 adds anything
            if decision == LeaseDecision.REFUSED:
                raise failure or PretrainingInProgressError(f"{directory}: rank 0 found another process pretraining it")
            if decision == LeaseDecision.FAILED:
                raise failure or RuntimeError(f"{directory}: rank 0 could not take the pretraining lease")
            yield decision == LeaseDecision.STORED
        finally:
            if held:
                lease.release()

    def _take_lease(self, method_name: str, lease: PretrainingLease) -> tuple[bool, BaseException | None, LeaseDecision]:
        """Rank 0's look: (lease held, the error that refused it, what every rank does)."""
        if self.encoder_is_stored(method_name):
            return False, None, LeaseDecision.STORED
        try:
            lease.acquire()
        except BaseException as error:  # shared before it is raised, Ctrl-C included
            return False, error, LeaseDecision.REFUSED if isinstance(error, PretrainingInProgressError) else LeaseDecision.FAILED
        # looked for again once held: another process may have stored it and let go in between
        try:
            stored = self.encoder_is_stored(method_name)
        except BaseException:
            lease.release()
            raise
        return True, None, LeaseDecision.STORED if stored else LeaseDecision.PRETRAIN

    def _store_pretraining(self, method_name: str, method: Method, dataset: PreparedDataset, seed: int, result, directory: Path) -> None:
        settings = self.profile["pretrain"]  # stored as the profile has it
        record_path, encoder_path = directory / PRETRAIN_RECORD, directory / ENCODER
        diagnostics = encoder_diagnostics(result.encoder_state_dict, dataset, self.device)
        torch.manual_seed(seed)
        initial_state = self.build_method(method_name).export_encoder()
        diagnostics_at_init = encoder_diagnostics(initial_state, dataset, self.device)
        # how far pretraining moved the weights (BN running statistics excluded)
        diagnostics["relative_weight_change"] = relative_change(initial_state, result.encoder_state_dict)
        record = PretrainRecord(
            method=method_name, pretrain_dataset=settings["dataset"], seed=seed, hyperparameters=dataclasses.asdict(method.hparams),
            pretrain_settings=settings, processes=world().size, steps=result.steps, epochs=result.epochs, seconds=result.seconds,
            history=result.history, step_history=result.step_history,
            diagnostics={"pretrained": diagnostics, "initialisation": diagnostics_at_init},
            environment=self._environment, created=now())
        # encoder first, record last: a record only exists next to a complete encoder
        atomic_torch_save(encoder_path, result.encoder_state_dict)
        atomic_write_json(record_path, record.to_json())
        shutil.rmtree(directory / CHECKPOINTS, ignore_errors=True)  # only needed to resume this stage
        last = result.history[-1] if result.history else {}
        self.echo(
            f"pretrained {method_name} on {settings['dataset']}: {result.steps} steps in {result.seconds:.1f}s, "
            f"final loss {last.get('loss', float('nan')):.4f}; encoder feature std {diagnostics['feature_std']:.4f} "
            f"(init {diagnostics_at_init['feature_std']:.4f}), effective rank {diagnostics['effective_rank']:.1f} "
            f"(init {diagnostics_at_init['effective_rank']:.1f})"
        )

    def pending(self, cells: list[Cell]) -> list[Cell]:
        """The cells without a complete record, after claiming the folder for this run's profile;
        a damaged record is moved aside first (by rank 0, before any rank looks)."""
        if world().is_main:
            self.claim_out_dir()
            for cell in cells:
                self.has_record(cell)
        barrier()
        pending = [cell for cell in cells if not self.cell_path(cell).is_file()]
        barrier()  # every rank has the same list before any writes a record
        if len(pending) < len(cells):
            self.echo(f"{len(cells) - len(pending)} of {len(cells)} cells already have a record in {self.out_dir}: skipped")
        return pending

    def run(self, plan: RunPlan | list[Cell]) -> list[CellRecord]:
        """Evaluate every planned cell without a record; returns the records written this run.

        Under torchrun all ranks pretrain each method together, then share out its cells
        (rank r takes every N-th); each returns the records it wrote.
        """
        plan = plan if isinstance(plan, RunPlan) else RunPlan.for_cells(plan, self.config)
        by_method = cells_by_method(self.pending(plan.cells))
        for method_name, method_cells in by_method.items():
            if method_name in plan.cannot_run:
                # reported, never silently replaced: the table shows these cells as missing
                self.missing[method_name] = plan.cannot_run[method_name]
                self.echo(f"{method_name}: {len(method_cells)} cell(s) not run: {plan.cannot_run[method_name]}")
        # this rank's share of each method's cells (all of them in one process)
        mine = {method: method_cells[world().rank :: world().size] for method, method_cells in by_method.items()
                if method not in plan.cannot_run}
        total = sum(len(cells) for cells in mine.values())
        progress = tqdm(total=total, desc="cells", unit="cell", disable=None if world().is_main else True)
        clock = _ProgressClock(total, sum(1 for name in mine if get_method(name).pretrains and not self.encoder_is_stored(name)))
        written = []
        for method_name in mine:
            method_cls = get_method(method_name)
            if method_cls.pretrains:
                was_stored, started = self.encoder_is_stored(method_name), time.perf_counter()
                pretrained_state, pretrain_record = self.pretrained_encoder(method_name)
                if not was_stored:
                    clock.pretrained(time.perf_counter() - started)
            else:
                pretrained_state, pretrain_record = None, None
            shared_cache: dict = {}
            for cell in mine[method_name]:
                started = time.perf_counter()
                self._position = clock.position()
                record = self._run_claimed(cell, method_cls, pretrained_state, pretrain_record, shared_cache)
                if record is not None:
                    written.append(record)
                clock.cell_done(time.perf_counter() - started)
                progress.update(1)
        progress.close()
        barrier()  # the run is over when every rank's cells are
        return written

    def _run_claimed(self, cell: Cell, method_cls, pretrained_state, pretrain_record, shared_cache) -> CellRecord | None:
        """Evaluate ``cell`` while holding its claim (``cells/claims/CELL.json``, the pretraining
        lease's mechanism), so that concurrent runs and jobs over one folder never compute a cell
        twice; None if another process holds it or finished it meanwhile."""
        claim = PretrainingLease(self.folder.claims, name=f"{cell.record_name}.json", activity="evaluated")
        try:
            claim.acquire()
        except PretrainingInProgressError as error:
            self.claimed_elsewhere.append(cell)
            self.echo(f"{cell.record_name}: skipped here, {error}".split("; wait for it")[0])
            return None
        try:
            if self.cell_path(cell).is_file() and self.has_record(cell):
                return None  # another process finished it between our look and our claim
            return self._run_cell(cell, method_cls, pretrained_state, pretrain_record, shared_cache)
        finally:
            claim.release()

    def _run_cell(self, cell: Cell, method_cls, pretrained_state, pretrain_record: PretrainRecord | None, shared_cache) -> CellRecord:
        protocol = PROTOCOLS[cell.protocol]
        dataset = self.dataset(cell.dataset)
        if pretrained_state is not None:
            # the pretraining's creation time names this encoder: features stored for an earlier
            # pretraining of the same method are never taken for this one's
            encoder_state = pretrained_state
            encoder_key = "pretrained-" + hashlib.sha1(pretrain_record.created.encode()).hexdigest()[:10]
        else:
            # no pretraining stage: the encoder is the method's initialisation, drawn per seed
            torch.manual_seed(cell.seed)
            encoder_state, encoder_key = self.build_method(cell.method).export_encoder(), f"init-seed{cell.seed}"
        started = time.perf_counter()
        cache_key = (encoder_key, cell.dataset, cell.protocol)
        if cache_key not in shared_cache:
            shared_cache[cache_key] = self._prepare_shared(protocol, cell, encoder_key, encoder_state, dataset)
        shared_seconds = time.perf_counter() - started
        config = self.config.protocol_settings(cell.protocol)
        result = protocol.run(encoder_state, dataset, cell.label_fraction, cell.seed, config, self.device, shared_cache[cache_key])
        record = self._cell_record(cell, method_cls, pretrain_record, dataset, protocol, config, result, shared_seconds)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **result.predictions)
        # predictions first, record last: the record is what marks the cell done
        atomic_write_bytes(self.cell_path(cell).with_name(record.predictions_file), buffer.getvalue())
        atomic_write_json(self.cell_path(cell), record.to_json())
        _log_validation_curves(self.folder.cell_tensorboard(cell.record_name), result.selection)
        score, interval = result.metrics[result.headline], record.bootstrap
        self.echo(
            self._position
            + f"{cell.method:>10} {cell.dataset:>14} {cell.protocol:>12} {cell.label_fraction:>5g}% seed {cell.seed}: "
            + (f"{result.headline} {score:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]" if score is not None and interval['low'] is not None
               else f"{result.headline} undefined (no test positives)")
            + f" (val {result.selection['val_score']:.4f}, n={result.num_train_images}, {result.timing['train_s'] + shared_seconds:.1f}s)"
        )
        return record

    def _cell_record(self, cell: Cell, method_cls, pretrain_record: PretrainRecord | None, dataset: PreparedDataset, protocol,
                     config: dict, result, shared_seconds: float) -> CellRecord:
        """The record of an evaluated cell: its scores and interval, and everything that made them."""
        return CellRecord(
            cell=cell,
            method_display_name=method_cls.display_name,
            method_is_baseline=method_cls.is_baseline,
            method_baseline_rank=method_cls.baseline_rank,
            method_is_random_init=method_cls.is_random_init,
            method_ablation=method_cls.ablation,
            method_provenance=method_cls.provenance(),
            method_backbone=method_cls.trunk(self.config.backbone),
            pretrain_dataset=pretrain_record.pretrain_dataset if pretrain_record else None,
            task=dataset.task,
            label_columns=dataset.label_columns,
            num_train_images=result.num_train_images,
            label_subset=_label_subset(dataset, cell),
            dataset_root=str(dataset.root),
            headline_metric=result.headline,
            protocol_version=getattr(protocol, "shared_version", None),
            metrics=result.metrics,
            bootstrap=self._bootstrap_interval(result.predictions),
            selection=result.selection,
            timing={"pretrain_s": pretrain_record.seconds if pretrain_record else 0.0, "shared_s": shared_seconds, **result.timing},
            config={"profile": self.profile, "protocol": config,
                    "method_hyperparameters": pretrain_record.hyperparameters if pretrain_record else {}},
            pretrain_record=(str(self.pretrain_dir(cell.method, pretrain_record.pretrain_dataset).relative_to(self.out_dir))
                             if pretrain_record else None),
            predictions_file=f"{cell.record_name}.predictions.npz",
            environment=self._environment,
            created=now(),
        )

    def _prepare_shared(self, protocol, cell: Cell, encoder_key: str, encoder_state: dict, dataset: PreparedDataset):
        version = getattr(protocol, "shared_version", None)
        path = self.folder.shared / f"{cell.method}__{encoder_key}__{cell.dataset}__{cell.protocol}{'-' + version if version else ''}.npz"
        if self.persist_shared and path.is_file():
            with np.load(path) as stored:
                return {name: stored[name] for name in stored.files}
        shared = protocol.prepare_shared(encoder_state, dataset, self.device)
        storable = isinstance(shared, dict) and shared and all(isinstance(value, np.ndarray) for value in shared.values())
        if self.persist_shared and storable:
            buffer = io.BytesIO()
            np.savez(buffer, **shared)
            atomic_write_bytes(path, buffer.getvalue())
        return shared

    def _bootstrap_interval(self, predictions: dict) -> dict:
        name, statistic = statistic_from_predictions(predictions)
        resamples = self.config.evaluation.bootstrap_resamples
        count = len(predictions["image_ids"])
        return {"statistic": name, **bootstrap_interval(statistic, count, resamples=resamples, seed=0).as_dict(0.95)}


def _label_subset(dataset: PreparedDataset, cell: Cell) -> dict:
    """Which labelled training images the cell used: the subset's file (or how it was drawn), its
    size in images and patients, a hash of its image ids, and the classes it has no positive of."""
    train_positions = dataset.label_fraction_positions(cell.label_fraction, cell.seed)
    train_ids = dataset.index["image_id"].iloc[train_positions]
    subset_file = dataset.subset_file(cell.label_fraction, cell.seed)
    return {
        "source": str(subset_file.relative_to(dataset.root)) if subset_file.is_file() else "drawn: nested, by patient, stratified",
        "num_images": int(len(train_positions)),
        "num_patients": int(dataset.index["patient_id"].iloc[train_positions].nunique()),
        "sha1_of_image_ids": hashlib.sha1("\n".join(train_ids).encode()).hexdigest(),
        # the class rule: such a class still trains (all-negative); at test a class without
        # positives is left out of the mean and listed under metrics.undefined_classes
        "classes_without_positives": [name for name, count in zip(dataset.label_columns, dataset.targets(train_positions).sum(0)) if count == 0],
    }


def _log_validation_curves(log_dir: Path, selection: dict) -> None:
    """A cell's validation curve(s) as TensorBoard events (``tensorboard --logdir OUT`` shows them
    beside the pretraining curves): fine-tune and segmentation per evaluation step, the frozen
    probe per epoch for each learning rate of its grid."""
    curves = {"": selection.get("curve")} if selection.get("curve") else {f"/lr={rate}": curve for rate, curve in (selection.get("curves") or {}).items()}
    if not any(curves.values()):
        return
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(log_dir, ignore_errors=True)  # a re-evaluated cell replaces its curves
    with SummaryWriter(str(log_dir)) as writer:
        for suffix, curve in curves.items():
            for step, score in curve:
                writer.add_scalar(f"validation/{selection.get('val_metric', 'score')}{suffix}", score, int(step))


class _ProgressClock:
    """Cell k of N and an estimate of the time left, from the cells and pretrainings timed so far."""

    def __init__(self, cells: int, pretrainings_left: int):
        self.cells, self.done, self.pretrainings_left = cells, 0, pretrainings_left
        self.cell_seconds: list[float] = []
        self.pretraining_seconds: list[float] = []

    def pretrained(self, seconds: float) -> None:
        self.pretraining_seconds.append(seconds)
        self.pretrainings_left = max(0, self.pretrainings_left - 1)

    def cell_done(self, seconds: float) -> None:
        self.done += 1
        self.cell_seconds.append(seconds)

    def position(self) -> str:
        left = self.cells - self.done
        if not self.cell_seconds:
            return f"[{self.done + 1}/{self.cells}] "
        estimate = left * float(np.mean(self.cell_seconds))
        pretraining = ""
        if self.pretrainings_left:
            if self.pretraining_seconds:
                estimate += self.pretrainings_left * float(np.mean(self.pretraining_seconds))
            else:
                pretraining = f" + {self.pretrainings_left} pretraining(s)"
        return f"[{self.done + 1}/{self.cells}, ~{format_duration(estimate)}{pretraining} left] "


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _differences(stored, current, prefix: str = ""):
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in set(stored) | set(current):
            yield from _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
    elif stored != current and not (isinstance(stored, (list, tuple)) and isinstance(current, (list, tuple)) and list(stored) == list(current)):
        yield f"{prefix.rstrip('.')}: {stored!r} -> {current!r}"
