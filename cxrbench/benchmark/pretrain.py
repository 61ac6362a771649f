"""The one pretraining loop every method goes through (the method supplies views, loss, optimiser).

The schedule is the one the SimCLR/BYOL/VICReg reference code shares: linear warm-up of the
learning rate, then cosine decay to ``final_lr_fraction`` of the peak, stepped per iteration.
A method says which through ``Method.lr_schedule()`` (warm-up epochs, final fraction, per
step or per epoch).

With a ``checkpoint_dir`` the loop saves, atomically at the end of every epoch, everything it
needs to continue: the method (parameters, buffers, plain attributes), the optimiser, the
step, the data order and position, the history and both random generators. Started again
with the same arguments it resumes from the newest readable checkpoint (a truncated or
corrupt one is reported and the one before it used) and ends with the same weights as an
uninterrupted run on CPU.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrbench.records.io import atomic_torch_save
from cxrbench.distributed import World, average_across_processes, barrier, convert_sync_batchnorm, gather_objects
from cxrbench.distributed import world as current_world
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.methods.base import FIXED_LR, Method


@dataclass
class PretrainResult:
    encoder_state_dict: dict
    history: list[dict]  # one entry per epoch: mean of each logged scalar
    steps: int
    epochs: float
    seconds: float
    # step -> encoder state dict at that step, for the steps asked for (learning curves)
    snapshots: dict = field(default_factory=dict)
    # every ``step_log_every``-th step: step, lr, images/s and the method's logged scalars
    step_history: list[dict] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step this process ran


# at most about this many entries in a pretraining record's per-step history
STEP_HISTORY_POINTS = 400


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps  # official SimCLR, BYOL, VICReg: the first step's rate is 0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return final_fraction + (1 - final_fraction) * cosine


def schedule_step(step: int, steps_per_epoch: int, unit: str) -> int:
    """The step the learning-rate schedule is evaluated at: every step, or the epoch's first step.

    Official SimSiam and PCRLv2 set the rate once per epoch (cosine over epochs); the
    schedule at an epoch's first step is exactly that rate.
    """
    if unit == "step":
        return step
    if unit == "epoch":
        return (step // steps_per_epoch) * steps_per_epoch
    raise ValueError(f"lr_schedule_unit {unit!r}: expected 'step' or 'epoch'")


CHECKPOINT_PATTERN = "epoch-*.pt"
KEEP_CHECKPOINTS = 2  # the newest and the one before it, in case the newest is unreadable


def latest_checkpoint(checkpoint_dir: Path | None) -> dict | None:
    """The newest checkpoint that loads completely, or None; unreadable ones are reported."""
    if checkpoint_dir is None:
        return None
    for path in sorted(Path(checkpoint_dir).glob(CHECKPOINT_PATTERN), reverse=True):
        try:
            # weights-only: a checkpoint holds tensors and plain containers alone, so a file
            # someone placed in the folder can never run code when it is loaded
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != "cxrbench-pretrain-checkpoint-2":
                raise ValueError("not a cxrbench pretraining checkpoint")
            return state
        except Exception as error:  # truncated zip, foreign or unsafe content: fall back to the previous one
            reason = (str(error).strip().splitlines() or [""])[0]
            warnings.warn(f"{path}: refused or unreadable checkpoint ({type(error).__name__}: {reason}); "
                          f"trying the previous one", stacklevel=2)
    return None


def _save_checkpoint(checkpoint_dir: Path, epoch: int, state: dict) -> None:
    checkpoint_dir = Path(checkpoint_dir)
    atomic_torch_save(checkpoint_dir / f"epoch-{epoch:05d}.pt", state)
    for old in sorted(checkpoint_dir.glob(CHECKPOINT_PATTERN))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def _fault_injection(step: int) -> None:
    """Test hook: ``CXRBENCH_KILL_AT_STEP=N`` kills this process with SIGKILL before step N."""
    target = os.environ.get("CXRBENCH_KILL_AT_STEP")
    if target is not None and step == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUGMENT_ON = ("device", "cpu")


@dataclass(frozen=True)
class TrainingOptions:
    """How the steps run, not what they compute (the profile's ``pretrain`` settings)."""

    precision: str = "fp32"  # autocast dtype of the forward pass; fp16 adds a gradient scaler
    channels_last: bool = False  # NHWC weights; convolutions then run NHWC (faster on tensor cores)
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over the global batch
    augment_on: str = "device"  # "device": uint8 batch copied, views made there; "cpu": views made on the CPU

    @classmethod
    def from_settings(cls, settings: dict) -> "TrainingOptions":
        options = cls(**{field: settings[field] for field in ("precision", "channels_last", "sync_batchnorm", "augment_on") if field in settings})
        if options.precision not in PRECISIONS:
            raise ValueError(f"pretrain.precision {options.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if options.augment_on not in AUGMENT_ON:
            raise ValueError(f"pretrain.augment_on {options.augment_on!r}: expected one of {', '.join(AUGMENT_ON)}")
        for flag in ("channels_last", "sync_batchnorm"):
            if not isinstance(getattr(options, flag), bool):
                raise ValueError(f"pretrain.{flag} {getattr(options, flag)!r}: expected true or false")
        return options


class StepRunner:
    """One optimisation step of a method, in one process or as one rank of DistributedDataParallel.

    Built before the optimiser: SyncBatchNorm replaces modules (and so parameters). The method
    is called through DDP's ``forward`` (``Method.forward`` is its ``training_step``) so that
    DDP's reducer averages the gradients across processes during ``backward``. Buffers are
    not broadcast from rank 0 at every step: lightly's queues are identical on every rank
    already (keys are gathered before they are enqueued), and without SyncBatchNorm each
    rank keeps BatchNorm running statistics of its own batches; rank 0's are exported, as
    in the official DDP code.
    """

    def __init__(self, method: Method, device: torch.device, options: TrainingOptions = TrainingOptions(), world: World | None = None):
        self.method, self.device, self.options = method, device, options
        self.world = world or current_world()
        method.to(device)
        if options.sync_batchnorm and self.world.distributed:
            convert_sync_batchnorm(method, device)
        if options.channels_last:
            # weights in NHWC make cuDNN run the convolutions NHWC whatever the input's layout
            method.to(memory_format=torch.channels_last)
        self.model: torch.nn.Module = method
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # torch 2.14 renamed the switch (and warns about the old name); older releases know only the old one
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                              else {"broadcast_buffers": False})
            self.model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                                 find_unused_parameters=method.leaves_parameters_unused, **no_buffer_sync)
        self.autocast_dtype = PRECISIONS[options.precision]
        self.scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None

    def __call__(self, views: list[torch.Tensor], optimizer: torch.optim.Optimizer, step: int, progress: float) -> tuple[torch.Tensor, dict]:
        """Forward, backward and optimiser step, then the method's ``after_optimizer_step(progress)``
        (momentum encoders, schedules) unless fp16's gradient scaler skipped the step."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            loss, logs = self.model(views)
        # one all-reduce per step carries the logs and the finiteness check, which every rank
        # decides together: a rank that stopped alone would leave the others in a collective
        logs = average_across_processes({**logs, "non_finite": float(not torch.isfinite(loss))})
        if logs.pop("non_finite") > 0:
            raise FloatingPointError(f"{self.method.name}: non-finite loss at step {step} "
                                     f"(this process: {loss.item()}, of {self.world.size} process(es))")
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            # the scaler lowers its scale exactly when the gradients overflowed and it skipped the
            # step. The momentum update is skipped with it, so that the EMA counts the optimiser's
            # steps (an extra update would pull the momentum encoder towards online weights this
            # step left as they were; some official code, DINO's, updates regardless). DDP's
            # averaged gradients make every rank decide alike.
            stepped = self.scaler.get_scale() >= scale
        else:
            loss.backward()
            optimizer.step()
            stepped = True
        if stepped:
            self.method.after_optimizer_step(progress)
        return loss, logs


def pretrain(
    method: Method,
    dataset: PreparedDataset,
    *,
    batch_size: int,
    epochs: float,
    max_steps: int | None,
    seed: int,
    device: torch.device,
    description: str = "pretrain",
    checkpoint_dir: Path | None = None,
    options: TrainingOptions = TrainingOptions(),
    snapshot_steps: tuple[int, ...] = (),
    log_dir: Path | None = None,
) -> PretrainResult:
    """Pretrain ``method`` on the training split of ``dataset`` (labels are never read).

    ``batch_size`` is the global batch. Under torchrun every rank draws the same data order
    (one generator, same seed) and takes its contiguous share of each global batch, so N
    processes see exactly the batches one process would; each rank draws its own views.
    """
    started = time.perf_counter()
    world = current_world()
    torch.manual_seed(seed)
    if batch_size % world.size:
        raise ValueError(f"pretrain.batch_size {batch_size} is not divisible by the {world.size} processes")
    local_batch = batch_size // world.size
    images = torch.from_numpy(np.ascontiguousarray(dataset.images[dataset.split_positions("train")]))
    if len(images) < batch_size:
        raise ValueError(f"{dataset.name}: {len(images)} training images, fewer than the batch size {batch_size}")
    steps_per_epoch = len(images) // batch_size  # drop_last, as the reference code does
    total_steps = int(round(epochs * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    total_steps = max(1, total_steps)
    schedule = method.lr_schedule()
    warmup_steps = int(round(schedule.warmup_epochs * steps_per_epoch))

    method.train()
    step_runner = StepRunner(method, device, options, world)
    optimizer = method.build_optimizer(batch_size)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    order_generator = torch.Generator(device="cpu").manual_seed(seed)
    # one process draws its views from the order's generator (as every earlier version did,
    # so single-process records reproduce); each rank of several draws from its own
    view_generator = order_generator if not world.distributed else torch.Generator(device="cpu").manual_seed(seed + 1_000_003 * (world.rank + 1))
    if world.distributed and device.type == "cuda":
        torch.cuda.manual_seed(seed + 1_000_003 * (world.rank + 1))  # global GPU draws (the shuffled-BN order) differ per rank
    views_on = device if options.augment_on == "device" else torch.device("cpu")
    history: list[dict] = []
    snapshots: dict[int, dict] = {}
    epoch_logs: dict[str, list[float]] = {}
    order = torch.randperm(len(images), generator=order_generator)
    position, first_step, seconds_before = 0, 0, 0.0
    resumed = latest_checkpoint(checkpoint_dir)
    found = gather_objects(resumed["step"] if resumed is not None else None)
    if len(set(found)) > 1:  # e.g. a rank that could not read the newest file on its node
        raise RuntimeError(f"{checkpoint_dir}: the processes found checkpoints of different steps {found}; "
                           f"remove the unreadable one(s) and start again")
    if resumed is not None:
        if resumed["total_steps"] != total_steps or resumed["batch_size"] != batch_size or resumed.get("world_size", 1) != world.size:
            raise ValueError(f"{checkpoint_dir}: checkpoint of another schedule ({resumed['total_steps']} steps of "
                             f"{resumed['batch_size']} on {resumed.get('world_size', 1)} process(es)), expected "
                             f"{total_steps} steps of {batch_size} on {world.size}")
        method.load_checkpoint_state(resumed["method"])
        optimizer.load_state_dict(resumed["optimizer"])
        if step_runner.scaler is not None and resumed.get("scaler"):
            step_runner.scaler.load_state_dict(resumed["scaler"])
        rank_state = resumed["ranks"][world.rank]
        order_generator.set_state(resumed["order_generator"])
        view_generator.set_state(rank_state["view_generator"])
        torch.set_rng_state(rank_state["torch_rng"])
        if rank_state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(rank_state["cuda_rng"], device)
        order, position, history = resumed["order"], resumed["position"], resumed["history"]
        first_step, seconds_before = resumed["step"], resumed["seconds"]
    bar = tqdm(total=total_steps, initial=first_step, desc=description, unit="step", leave=False,
               disable=None if world.is_main else True)
    writer = None
    if log_dir is not None and world.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir), purge_step=first_step)
    step_history = [entry for entry in (resumed or {}).get("step_history", []) if entry["step"] <= first_step]
    log_every = max(1, total_steps // STEP_HISTORY_POINTS)
    step_seconds: list[float] = []
    epochs_total = math.ceil(total_steps / steps_per_epoch)
    log_lines_every = max(1, epochs_total // 20)
    for step in range(first_step, total_steps):
        step_started = time.perf_counter()
        _fault_injection(step)
        if position + batch_size > len(images):
            order, position = torch.randperm(len(images), generator=order_generator), 0
        mine = order[position + world.rank * local_batch : position + (world.rank + 1) * local_batch]
        batch = images[mine]
        if views_on.type == "cuda":
            batch = batch.pin_memory().to(views_on, non_blocking=True)  # the copy overlaps the previous step's kernels
        position += batch_size
        factor = learning_rate_factor(schedule_step(step, steps_per_epoch, schedule.unit),
                                      total_steps, warmup_steps, schedule.final_lr_fraction)
        for group, peak in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak if group.get(FIXED_LR) else peak * factor
        # the views' random parameters come from the CPU generator wherever the views are made:
        # views made on the GPU equal those made on the CPU, and a resumed run continues them
        views = method.make_views(batch, generator=view_generator)
        views = [view.to(device, non_blocking=True) for view in views]
        loss, logs = step_runner(views, optimizer, step, progress=(step + 1) / total_steps)
        for key, value in logs.items():
            epoch_logs.setdefault(key, []).append(float(value))
        bar.set_postfix(loss=f"{logs.get('loss', loss.item()):.4f}")
        bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the step's kernels are done before it is timed
        step_seconds.append(time.perf_counter() - step_started)
        scalars = {"lr": peak_lrs[0] * factor, "images_per_second": batch_size / step_seconds[-1], **logs}
        if (step + 1) % log_every == 0 or step + 1 == total_steps:
            step_history.append({"step": step + 1} | {key: float(value) for key, value in scalars.items()})
        if writer is not None:
            for key, value in scalars.items():
                writer.add_scalar(f"pretrain/{key}", float(value), step + 1)
        if step + 1 in snapshot_steps:
            snapshots[step + 1] = method.export_encoder()
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total_steps:
            history.append({"epoch": len(history) + 1, "step": step + 1, "lr": peak_lrs[0] * factor}
                           | {key: float(np.mean(values)) for key, values in epoch_logs.items()})
            epoch_logs = {}
            if bar.disable and world.is_main and epochs_total > 1 and (len(history) % log_lines_every == 0 or step + 1 == total_steps):
                # no bar where output is not a terminal (a log file, a SLURM job): about 20 lines instead
                # (none for a run of one epoch: the checks and tests that run one would only be noisier)
                seconds_per_step = float(np.mean(step_seconds[-steps_per_epoch:]))
                tqdm.write(f"{description}: epoch {len(history)}/{epochs_total}, step {step + 1}/{total_steps}, "
                           f"loss {history[-1].get('loss', float('nan')):.4f}, {seconds_per_step:.2f} s/step, "
                           f"~{(total_steps - step - 1) * seconds_per_step / 60:.1f} min left")
            if checkpoint_dir is not None and step + 1 < total_steps:
                # every rank's random state, so each continues its own stream of views
                ranks = gather_objects({
                    "view_generator": view_generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                })
                if world.is_main:
                    _save_checkpoint(checkpoint_dir, len(history), {
                        "format": "cxrbench-pretrain-checkpoint-2",
                        "method": method.checkpoint_state(), "optimizer": optimizer.state_dict(),
                        "scaler": step_runner.scaler.state_dict() if step_runner.scaler is not None else None,
                        "order_generator": order_generator.get_state(), "ranks": ranks,
                        "order": order, "position": position, "history": history, "step": step + 1,
                        "step_history": step_history,
                        "total_steps": total_steps, "batch_size": batch_size, "world_size": world.size,
                        "seconds": seconds_before + time.perf_counter() - started,
                    })
                barrier()  # no rank runs ahead of a checkpoint that is not written yet
    bar.close()
    if writer is not None:
        writer.close()
    method.eval()
    return PretrainResult(
        encoder_state_dict=method.export_encoder(),
        history=history,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        seconds=seconds_before + time.perf_counter() - started,
        snapshots=snapshots,
        step_history=step_history,
        step_seconds=step_seconds,
    )
