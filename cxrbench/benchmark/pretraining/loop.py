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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrbench.benchmark.pretraining.checkpoints import latest_checkpoint, save_checkpoint
from cxrbench.benchmark.pretraining.schedule import rate_factor
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.distributed import World, average_across_processes, barrier, convert_sync_batchnorm, gather_objects
from cxrbench.distributed import world as current_world
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
    images = torch.from_numpy(np.ascontiguousarray(dataset.images[dataset.split_positions("train")]))
    if len(images) < batch_size:
        raise ValueError(f"{dataset.name}: {len(images)} training images, fewer than the batch size {batch_size}")
    steps_per_epoch = len(images) // batch_size  # drop_last, as the reference code does
    total_steps = int(round(epochs * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    run = _PretrainingRun(method, images, batch_size, max(1, total_steps), steps_per_epoch, seed, device, options, world)
    run.resume(checkpoint_dir)
    run.open_logs(description, log_dir)
    for step in range(run.first_step, run.total_steps):
        run.train_step(step, snapshot_steps)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == run.total_steps:
            run.end_epoch(step, description)
            if checkpoint_dir is not None and step + 1 < run.total_steps:
                run.save_checkpoint(checkpoint_dir, step, seconds=run.seconds_before + time.perf_counter() - started)
    run.close_logs()
    method.eval()
    return PretrainResult(
        encoder_state_dict=method.export_encoder(),
        history=run.history,
        steps=run.total_steps,
        epochs=run.total_steps / steps_per_epoch,
        seconds=run.seconds_before + time.perf_counter() - started,
        snapshots=run.snapshots,
        step_history=run.step_history,
        step_seconds=run.step_seconds,
    )


class _PretrainingRun:
    """The state of one pretraining: the data order and position, both random generators, the
    optimiser and its schedule, and what is logged; everything a checkpoint saves and restores."""

    def __init__(self, method: Method, images: torch.Tensor, batch_size: int, total_steps: int, steps_per_epoch: int,
                 seed: int, device: torch.device, options: TrainingOptions, world: World):
        self.method, self.images, self.device, self.world = method, images, device, world
        self.batch_size, self.local_batch = batch_size, batch_size // world.size
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.schedule = method.lr_schedule()
        self.warmup_steps = int(round(self.schedule.warmup_epochs * steps_per_epoch))
        method.train()
        self.step_runner = StepRunner(method, device, options, world)
        self.optimizer = method.build_optimizer(batch_size)
        self.peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.order_generator = torch.Generator(device="cpu").manual_seed(seed)
        # one process draws its views from the order's generator (as every earlier version did,
        # so single-process records reproduce); each rank of several draws from its own
        self.view_generator = self.order_generator if not world.distributed else \
            torch.Generator(device="cpu").manual_seed(seed + 1_000_003 * (world.rank + 1))
        if world.distributed and device.type == "cuda":
            torch.cuda.manual_seed(seed + 1_000_003 * (world.rank + 1))  # global GPU draws (the shuffled-BN order) differ per rank
        self.views_on = device if options.augment_on == "device" else torch.device("cpu")
        self.history: list[dict] = []
        self.snapshots: dict[int, dict] = {}
        self.epoch_logs: dict[str, list[float]] = {}
        self.order = torch.randperm(len(images), generator=self.order_generator)
        self.position, self.first_step, self.seconds_before = 0, 0, 0.0
        self.step_history: list[dict] = []
        self.step_seconds: list[float] = []
        self.log_every = max(1, total_steps // STEP_HISTORY_POINTS)
        self.epochs_total = math.ceil(total_steps / steps_per_epoch)
        self.log_lines_every = max(1, self.epochs_total // 20)
        self.bar = self.writer = None
        self.factor = 0.0

    def resume(self, checkpoint_dir: Path | None) -> None:
        """Continue from the newest readable checkpoint, if any (every rank from the same step)."""
        resumed = latest_checkpoint(checkpoint_dir)
        found = gather_objects(resumed["step"] if resumed is not None else None)
        if len(set(found)) > 1:  # e.g. a rank that could not read the newest file on its node
            raise RuntimeError(f"{checkpoint_dir}: the processes found checkpoints of different steps {found}; "
                               f"remove the unreadable one(s) and start again")
        if resumed is None:
            return
        if resumed["total_steps"] != self.total_steps or resumed["batch_size"] != self.batch_size \
                or resumed.get("world_size", 1) != self.world.size:
            raise ValueError(f"{checkpoint_dir}: checkpoint of another schedule ({resumed['total_steps']} steps of "
                             f"{resumed['batch_size']} on {resumed.get('world_size', 1)} process(es)), expected "
                             f"{self.total_steps} steps of {self.batch_size} on {self.world.size}")
        self.method.load_checkpoint_state(resumed["method"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        if self.step_runner.scaler is not None and resumed.get("scaler"):
            self.step_runner.scaler.load_state_dict(resumed["scaler"])
        rank_state = resumed["ranks"][self.world.rank]
        self.order_generator.set_state(resumed["order_generator"])
        self.view_generator.set_state(rank_state["view_generator"])
        torch.set_rng_state(rank_state["torch_rng"])
        if rank_state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rank_state["cuda_rng"], self.device)
        self.order, self.position, self.history = resumed["order"], resumed["position"], resumed["history"]
        self.first_step, self.seconds_before = resumed["step"], resumed["seconds"]
        self.step_history = [entry for entry in resumed.get("step_history", []) if entry["step"] <= self.first_step]

    def open_logs(self, description: str, log_dir: Path | None) -> None:
        """The progress bar, and TensorBoard on rank 0 (events after a resumed checkpoint dropped)."""
        self.bar = tqdm(total=self.total_steps, initial=self.first_step, desc=description, unit="step", leave=False,
                        disable=None if self.world.is_main else True)
        if log_dir is not None and self.world.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=self.first_step)

    def close_logs(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _next_batch(self) -> torch.Tensor:
        """This rank's share of the next global batch (a new order once an epoch's images are used)."""
        if self.position + self.batch_size > len(self.images):
            self.order, self.position = torch.randperm(len(self.images), generator=self.order_generator), 0
        rank = self.world.rank
        mine = self.order[self.position + rank * self.local_batch : self.position + (rank + 1) * self.local_batch]
        batch = self.images[mine]
        if self.views_on.type == "cuda":
            batch = batch.pin_memory().to(self.views_on, non_blocking=True)  # the copy overlaps the previous step's kernels
        self.position += self.batch_size
        return batch

    def train_step(self, step: int, snapshot_steps: tuple[int, ...]) -> None:
        step_started = time.perf_counter()
        _fault_injection(step)
        batch = self._next_batch()
        self.factor = rate_factor(step, self.steps_per_epoch, self.schedule.unit, self.total_steps, self.warmup_steps,
                                  self.schedule.final_lr_fraction)
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak if group.get(FIXED_LR) else peak * self.factor
        # the views' random parameters come from the CPU generator wherever the views are made:
        # views made on the GPU equal those made on the CPU, and a resumed run continues them
        views = self.method.make_views(batch, generator=self.view_generator)
        views = [view.to(self.device, non_blocking=True) for view in views]
        loss, logs = self.step_runner(views, self.optimizer, step, progress=(step + 1) / self.total_steps)
        for key, value in logs.items():
            self.epoch_logs.setdefault(key, []).append(float(value))
        self.bar.set_postfix(loss=f"{logs.get('loss', loss.item()):.4f}")
        self.bar.update(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels are done before it is timed
        self.step_seconds.append(time.perf_counter() - step_started)
        self._log_step(step, logs)
        if step + 1 in snapshot_steps:
            self.snapshots[step + 1] = self.method.export_encoder()

    def _log_step(self, step: int, logs: dict) -> None:
        scalars = {"lr": self.peak_lrs[0] * self.factor, "images_per_second": self.batch_size / self.step_seconds[-1], **logs}
        if (step + 1) % self.log_every == 0 or step + 1 == self.total_steps:
            self.step_history.append({"step": step + 1} | {key: float(value) for key, value in scalars.items()})
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"pretrain/{key}", float(value), step + 1)

    def end_epoch(self, step: int, description: str) -> None:
        """The epoch's mean logs into the history; without a progress bar, about 20 lines per run."""
        self.history.append({"epoch": len(self.history) + 1, "step": step + 1, "lr": self.peak_lrs[0] * self.factor}
                            | {key: float(np.mean(values)) for key, values in self.epoch_logs.items()})
        self.epoch_logs = {}
        if self.bar.disable and self.world.is_main and self.epochs_total > 1 \
                and (len(self.history) % self.log_lines_every == 0 or step + 1 == self.total_steps):
            # no bar where output is not a terminal (a log file, a SLURM job): about 20 lines instead
            # (none for a run of one epoch: the checks and tests that run one would only be noisier)
            seconds_per_step = float(np.mean(self.step_seconds[-self.steps_per_epoch:]))
            tqdm.write(f"{description}: epoch {len(self.history)}/{self.epochs_total}, step {step + 1}/{self.total_steps}, "
                       f"loss {self.history[-1].get('loss', float('nan')):.4f}, {seconds_per_step:.2f} s/step, "
                       f"~{(self.total_steps - step - 1) * seconds_per_step / 60:.1f} min left")

    def save_checkpoint(self, checkpoint_dir: Path, step: int, seconds: float) -> None:
        """Everything needed to continue after ``step``; rank 0 writes it, every rank's random state in it."""
        # every rank's random state, so each continues its own stream of views
        ranks = gather_objects({
            "view_generator": self.view_generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        })
        if self.world.is_main:
            save_checkpoint(checkpoint_dir, len(self.history), {
                "format": "cxrbench-pretrain-checkpoint-2",
                "method": self.method.checkpoint_state(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.step_runner.scaler.state_dict() if self.step_runner.scaler is not None else None,
                "order_generator": self.order_generator.get_state(), "ranks": ranks,
                "order": self.order, "position": self.position, "history": self.history, "step": step + 1,
                "step_history": self.step_history,
                "total_steps": self.total_steps, "batch_size": self.batch_size, "world_size": self.world.size,
                "seconds": seconds,
            })
        barrier()  # no rank runs ahead of a checkpoint that is not written yet
