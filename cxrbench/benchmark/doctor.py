"""`bench doctor`: a short self-check to run first on a new machine or cluster node.

Three parts, each check one PASS/FAIL line with the error's one-line reason:

* environment: versions, CUDA / cuDNN / NCCL, GPUs and their memory, threads, free disk,
  Sup.2's ImageNet weights, prepared datasets under the data root (information; a missing
  item is reported, not failed, except what the asked-for device needs);
* function: three pretraining steps of every registered method that pretrains (plugins
  included) at the profile's image size, under each precision the device supports, with
  channels-last and views made on the device; a frozen and a fine-tune cell written as
  records through the runner; one step of a one-process DistributedDataParallel group over
  the device's backend (gloo on the CPU, NCCL on CUDA);
* speed: the images/second of those steps after the first (a small batch: a check, not a
  benchmark; `bench speed` measures throughput).

The exit code is 0 only when every check passed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cxrbench.benchmark.pretraining.loop import TrainingOptions, pretrain
from cxrbench.benchmark.profiles import load_profile
from cxrbench.benchmark.plan import grid_cells
from cxrbench.benchmark.config import RunConfig
from cxrbench.benchmark.profiles import method_hyperparameters
from cxrbench.benchmark.runner import Runner
from cxrbench.datasets import DATASETS
from cxrbench.datasets.phantom_sources import cache_root
from cxrbench.methods import available_methods, get_method

# the check's data: the smoke profile's small phantom, at the asked-for profile's image size
CHECK_PROFILE = "smoke"
CHECK_BATCH = 16
CHECK_STEPS = 3  # the first is warm-up; the speed is taken from the others


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    seconds: float
    images_per_second: float | None = None
    traceback: str | None = None  # of a failure, in the JSON only

    def line(self) -> str:
        speed = f", {self.images_per_second:.1f} images/s" if self.images_per_second else ""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}{speed} ({self.seconds:.1f} s)"


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def precisions(device: torch.device) -> list[str]:
    """The autocast precisions this device runs: fp32 always; bf16 where supported; fp16 (with
    the gradient scaler) on CUDA only (CPU autocast of fp16 convolutions is not a path anyone trains on)."""
    if device.type == "cuda":
        return ["fp32"] + (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"]
    return ["fp32", "bf16"]


def _package_versions() -> dict[str, str | None]:
    names = ["cxrbench"]
    try:
        requirements = importlib.metadata.requires("cxrbench") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].strip()
        for separator in "<>=!~[ (":
            name = name.split(separator)[0]
        names.append(name)
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _free_gib(path: Path) -> float | None:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return round(shutil.disk_usage(path).free / 2**30, 1)
    except OSError:
        return None


def _prepared_datasets(data_root: Path | None) -> dict:
    if data_root is None or not Path(data_root).is_dir():
        return {}
    found = {}
    for manifest in sorted(Path(data_root).glob("*/manifest.json")):
        try:
            images = np.load(manifest.parent / "images.npy", mmap_mode="r")
            found[manifest.parent.name] = {"images": int(images.shape[0]), "size": list(images.shape[1:])}
        except (OSError, ValueError) as error:
            found[manifest.parent.name] = {"error": one_line(error)}
    return found


def environment(device: torch.device, out_dir: Path, data_root: Path | None) -> dict:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                         "capability": f"{properties.major}.{properties.minor}"})
    sup2 = get_method("sup2")
    distributed = torch.distributed.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _package_versions(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl_available": bool(distributed and torch.distributed.is_nccl_available()),
        "gloo_available": bool(distributed and torch.distributed.is_gloo_available()),
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cache_dir": str(cache_root()),
        "cache_free_gib": _free_gib(cache_root()),
        "out_dir": str(out_dir),
        "out_free_gib": _free_gib(out_dir),
        "sup2_imagenet_weights": sup2.unavailable_reason(method_hyperparameters(load_profile(CHECK_PROFILE), "sup2")) or "present",
        "data_root": str(data_root) if data_root else None,
        "prepared_datasets": _prepared_datasets(data_root),
    }


def _timed(name: str, action: Callable[[], tuple[str, float | None]]) -> Check:
    started = time.perf_counter()
    try:
        detail, images_per_second = action()
        return Check(name, True, detail, time.perf_counter() - started, images_per_second)
    except Exception as error:  # a check reports any failure as its line; the traceback goes to the JSON
        return Check(name, False, one_line(error), time.perf_counter() - started, traceback=traceback.format_exc(limit=8))


def _check_data(profile: dict) -> dict:
    return dict(load_profile(CHECK_PROFILE)["data"], image_size=profile["data"]["image_size"])


def pretraining_check(name: str, dataset, device: torch.device, precision: str, seed: int = 0) -> Check:
    def action():
        torch.manual_seed(seed)
        profile = load_profile(CHECK_PROFILE)
        method = get_method(name)(method_hyperparameters(profile, name))
        options = TrainingOptions(precision=precision, channels_last=True, augment_on="device")
        result = pretrain(method, dataset, batch_size=CHECK_BATCH, epochs=1, max_steps=CHECK_STEPS, seed=seed,
                          device=device, options=options)
        loss = result.history[-1].get("loss", float("nan"))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss {loss}")
        return f"{CHECK_STEPS} steps, loss {loss:.3f}", CHECK_BATCH / float(np.median(result.step_seconds[1:]))

    size = dataset.images.shape[-1]
    return _timed(f"pretrain {name} {precision} channels-last views-on-device ({size} px, batch {CHECK_BATCH})", action)


def cells_check(profile: dict, device: torch.device, scratch: Path) -> Check:
    def action():
        check_profile = load_profile(CHECK_PROFILE)
        check_profile["data"] = _check_data(profile)
        runner = Runner(RunConfig.from_profile(check_profile), scratch / "cells-run", device, echo=lambda line: None)
        records = runner.run(grid_cells(["sup1"], ["phantom-nih"], ["frozen", "finetune"], [100.0], [0]))
        if len(records) != 2:
            raise RuntimeError(f"{len(records)} of 2 records written")
        scores = ", ".join(f"{r.cell.protocol} {r.score(r.headline_metric):.3f}" for r in records)
        return f"records written ({scores})", None

    return _timed("frozen and fine-tune cells (Sup.1, phantom-nih, 100 %)", action)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_check(device: torch.device) -> Check:
    backend = "nccl" if device.type == "cuda" else "gloo"

    def action():
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if dist.is_initialized():
            raise RuntimeError("a process group is initialised already (run bench doctor outside torchrun)")
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.LazyLinear(2)).to(device)
            model(torch.zeros(2, 3, 8, 8, device=device))  # materialise the lazy layer before DDP wraps it
            wrapped = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
            optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
            before = [p.detach().clone() for p in model.parameters()]
            loss = wrapped(torch.randn(4, 3, 8, 8, device=device)).pow(2).mean()
            loss.backward()
            optimizer.step()
            moved = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
            if moved == 0:
                raise RuntimeError("no parameter moved after the step")
            probe = torch.ones(1, device=device)
            dist.all_reduce(probe)
            if probe.item() != 1.0:
                raise RuntimeError(f"all_reduce over one process gave {probe.item()}")
        finally:
            dist.destroy_process_group()
        return f"one step and an all-reduce over {backend}", None

    return _timed(f"DistributedDataParallel, one process, {backend}", action)


def run_doctor(device: torch.device, profile_name: str, out_dir: Path, data_root: Path | None,
               echo: Callable[[str], None] = print, methods: list[str] | None = None) -> dict:
    """Every check, each echoed as its line when done; returns the JSON-ready report."""
    profile = load_profile(profile_name)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": profile_name,
              "environment": environment(device, out_dir, data_root), "checks": []}
    env = report["environment"]
    gpus = "".join(f" [{gpu['name']}, {gpu['memory_gib']} GiB]" for gpu in env["gpus"])
    echo(f"environment: python {env['python']}, torch {env['packages'].get('torch')}, device {device}, "
         f"CUDA {env['cuda_version'] or 'none'}, cuDNN {env['cudnn_version'] or 'none'}, NCCL {'yes' if env['nccl_available'] else 'no'}, "
         f"{len(env['gpus'])} GPU(s){gpus}")
    echo(f"environment: {env['cpu_count']} CPUs, {env['torch_threads']} torch threads; free disk: cache {env['cache_free_gib']} GiB "
         f"({env['cache_dir']}), output {env['out_free_gib']} GiB; Sup.2 ImageNet weights: {env['sup2_imagenet_weights']}")
    echo(f"environment: prepared datasets under {env['data_root'] or '(no --data-root)'}: "
         + (", ".join(f"{name} {info.get('images', '?')} images {info.get('size', '')}" for name, info in env["prepared_datasets"].items()) or "none"))

    def record(check: Check) -> None:
        report["checks"].append(asdict(check))
        echo(check.line())

    echo(f"generating the check's phantom at {profile['data']['image_size']} px (cached after the first time) ...")
    try:
        dataset = DATASETS.get("phantom-nih")().load(_check_data(profile))
    except Exception as error:
        record(Check("phantom-nih for the checks", False, one_line(error), 0.0))
        dataset = None
    names = methods if methods is not None else [name for name in available_methods() if get_method(name).pretrains]
    if dataset is not None:
        for name in names:
            for precision in precisions(device):
                record(pretraining_check(name, dataset, device, precision))
    with tempfile.TemporaryDirectory(prefix="cxrbench-doctor-") as scratch:
        record(cells_check(profile, device, Path(scratch)))
    record(ddp_check(device))
    failed = [check for check in report["checks"] if not check["passed"]]
    report["passed"] = not failed
    report["speed_images_per_second"] = {check["name"]: check["images_per_second"] for check in report["checks"] if check["images_per_second"]}
    echo(f"{len(report['checks']) - len(failed)} of {len(report['checks'])} checks passed" + (f"; failed: {', '.join(c['name'] for c in failed)}" if failed else ""))
    return report
