"""DistributedDataParallel on CPU: 2 gloo processes must train as one process does.

For every pretraining method the same global batch of views goes once through one process
(plain BatchNorm over the whole batch) and once through 2 processes of 4 images each, with
BatchNorm synchronised over both (``sync_batchnorm``). The losses of the first and of the
second step must agree: the first checks every cross-process gather (SimCLR's negatives,
VICReg's and OPTiML's variance/covariance, MoCo's shuffle-BN and unshuffle), the second
checks DDP's gradient averaging, the gradients through the gathers and the queues that
MoCo and DenseCL filled across processes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrbench.benchmark.pretrain import StepRunner, TrainingOptions
from cxrbench.benchmark.profiles import load_profile
from cxrbench.benchmark.runner import method_hyperparameters
from cxrbench.methods import available_methods, get_method

GLOBAL_BATCH, IMAGE_SIZE, STEPS, PROCESSES = 8, 64, 2, 2
PRETRAINING_METHODS = [name for name in available_methods() if get_method(name).pretrains and get_method(name).listed_in_all]


def _hyperparameters(name: str, processes: int):
    hyperparameters = method_hyperparameters(load_profile("smoke"), name)
    if hasattr(hyperparameters, "shuffle_bn_splits") and processes == 1:
        # one process with BatchNorm over the whole key batch is what SyncBatchNorm computes
        hyperparameters = dataclasses.replace(hyperparameters, shuffle_bn_splits=1)
    return hyperparameters


def _train_steps(name: str, views_per_step: list[list[torch.Tensor]], rank: int, processes: int) -> list[float]:
    torch.manual_seed(0)
    method = get_method(name)(_hyperparameters(name, processes))
    method.train()
    step_runner = StepRunner(method, torch.device("cpu"), TrainingOptions(sync_batchnorm=True))
    optimizer = method.build_optimizer(GLOBAL_BATCH)
    share = GLOBAL_BATCH // processes
    losses = []
    for step, views in enumerate(views_per_step):
        local = [view[rank * share : (rank + 1) * share] for view in views]
        _, logs = step_runner(local, optimizer, step)  # logs are averaged over the processes
        method.after_optimizer_step((step + 1) / STEPS)
        losses.append(logs["loss"])
    return losses


def _worker(rank: int, init_file: str, views_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=PROCESSES)
    try:
        views = torch.load(views_file, weights_only=True)
        losses = {name: _train_steps(name, views[name], rank, PROCESSES) for name in views}
        if rank == 0:
            torch.save(losses, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def views_per_method(tmp_path_factory):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (STEPS, GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    views = {}
    for name in PRETRAINING_METHODS:
        method = get_method(name)(_hyperparameters(name, 1))
        views[name] = [method.make_views(images[step], generator=generator) for step in range(STEPS)]
    path = tmp_path_factory.mktemp("ddp") / "views.pt"
    torch.save(views, path)
    return views, path


@pytest.fixture(scope="module")
def two_process_losses(views_per_method, tmp_path_factory):
    _, views_file = views_per_method
    directory = tmp_path_factory.mktemp("ddp-run")
    out_file = directory / "losses.pt"
    mp.spawn(_worker, args=(str(directory / "init"), str(views_file), str(out_file)), nprocs=PROCESSES, join=True)
    return torch.load(out_file, weights_only=True)


@pytest.mark.parametrize("name", PRETRAINING_METHODS)
def test_two_processes_give_the_single_process_losses(name, views_per_method, two_process_losses):
    views, _ = views_per_method
    single = _train_steps(name, views[name], rank=0, processes=1)
    distributed = two_process_losses[name]
    assert distributed == pytest.approx(single, rel=1e-4, abs=1e-5), f"{name}: 2 processes {distributed}, 1 process {single}"
