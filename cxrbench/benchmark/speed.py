"""``bench speed``: speed goals measured as ratios within one run on one machine.

Timing assertions in tests are flaky on shared machines, so speed is a benchmark: every
figure here is measured in the same process, back to back, and reported as a ratio.

* Sinkhorn: the batched torch solver against POT's ``ot.solve_batch`` at the same problem
  size and the same number of iterations, the largest plan difference, and the solver's time
  per iteration against the machine's memory floor (the time to read the B x d x d kernel
  twice, which is what one iteration must do).
* Pretraining images/second of every method at a profile's image size and batch, and the
  OPTiML/VICReg step-time ratio (the overhead of the OT term and CV-SIM).
* The prepared-array loader against decoding a PNG per sample.
* The frozen protocol with cached features against recomputing them every epoch.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from cxrbench.benchmark.config import RunConfig
from cxrbench.methods.sinkhorn import sinkhorn_solve


def _best_of(function, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def sinkhorn_benchmark(batch: int = 64, dim: int = 512, epsilon: float = 0.05, iterations: int = 100,
                       positions: int = 49, repeats: int = 3, seed: int = 0,
                       device: torch.device = torch.device("cpu")) -> dict:
    """Our solver on ``device`` against POT on the CPU, and against the memory floor on ``device``
    (two reads of the B x d x d kernel, timed in the same run: on a GPU, at its copy bandwidth)."""
    import ot


    def synchronised(function):
        def call():
            out = function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out
        return call

    generator = torch.Generator().manual_seed(seed)
    z_s = torch.nn.functional.normalize(torch.randn(batch, dim, positions, generator=generator).relu(), dim=2)
    z_t = torch.nn.functional.normalize(torch.randn(batch, dim, positions, generator=generator).relu(), dim=2)
    cost = 1 - torch.bmm(z_s, z_t.transpose(1, 2))
    a = torch.softmax(torch.randn(batch, dim, generator=generator), 1)
    b = torch.softmax(torch.randn(batch, dim, generator=generator), 1)

    cost_d, a_d, b_d = cost.to(device), a.to(device), b.to(device)
    ours = synchronised(lambda: sinkhorn_solve(cost_d, a_d, b_d, epsilon, max_iter=iterations, tol=0.0))
    plan, *_ , used, _ = ours()
    plan = plan.cpu()
    ours_seconds = _best_of(ours, repeats)
    # kernel construction + one iteration, to separate the loop's own cost per iteration
    one_iteration = _best_of(synchronised(lambda: sinkhorn_solve(cost_d, a_d, b_d, epsilon, max_iter=1, tol=0.0)), repeats)
    loop_per_iteration = (ours_seconds - one_iteration) / max(1, used - 1)
    cost_np, a_np, b_np = cost.double().numpy(), a.double().numpy(), b.double().numpy()
    pot = lambda: ot.solve_batch(cost_np, reg=epsilon, a=a_np, b=b_np, max_iter=iterations, tol=0.0, reg_type="entropy")  # noqa: E731
    reference = pot()
    pot_seconds = _best_of(pot, max(1, repeats - 1))
    kernel = torch.exp(-cost_d / epsilon)
    memory_floor = _best_of(synchronised(lambda: (kernel.sum(), kernel.sum())), repeats)  # read B x d x d twice
    return {
        "device": str(device), "batch": batch, "dim": dim, "epsilon": epsilon, "iterations": used,
        "ours_seconds": ours_seconds, "pot_solve_batch_seconds": pot_seconds,
        "speedup_vs_pot": pot_seconds / ours_seconds,
        "max_abs_plan_difference": float(np.abs(plan.double().numpy() - reference.plan).max()),
        "ours_seconds_per_iteration": ours_seconds / used,
        "ours_loop_seconds_per_iteration": loop_per_iteration,
        "setup_and_first_iteration_seconds": one_iteration,
        "memory_floor_seconds_per_iteration": memory_floor,
        "per_iteration_over_memory_floor": ours_seconds / used / memory_floor,
        "loop_iteration_over_memory_floor": loop_per_iteration / memory_floor,
    }


def pretraining_benchmark(config: RunConfig, repeats: int = 2, device: torch.device = torch.device("cpu"),
                          methods: list[str] | None = None) -> dict:
    """Pretraining images/second of every method at the profile's image size and batch, and its bound.

    ``step_seconds``: one step as the pretraining loop runs it: a uint8 batch taken from the
    prepared array in host memory (pinned and copied to the device, as the loop does), views
    made on the profile's ``augment_on`` device, forward, backward, optimiser step and the
    after-step hook (momentum update), through the same ``StepRunner`` with the profile's
    precision and layout. ``model_only_seconds``: the same training step on views already on
    the device (no loading, no augmentation), the bound the data path is compared with:
    ``data_path_ratio`` = model-only / full (1.0: the data path costs nothing). Best of
    ``repeats`` after one warm-up step each.
    """
    from cxrbench.methods import available_methods, get_method

    options, batch, size = config.pretrain.options, config.pretrain.batch_size, int(config.data["image_size"])
    names = methods or [name for name in available_methods() if get_method(name).pretrains and get_method(name).listed_in_all]
    host_images = torch.randint(0, 256, (4 * batch, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    results: dict = {"profile": config.name, "backbone": config.backbone, "image_size": size, "batch": batch, "device": str(device),
                     "precision": options.precision, "channels_last": options.channels_last,
                     "augment_on": options.augment_on, "methods": {}}
    for name in names:
        seconds, model_seconds = _time_pretraining_step(name, config, host_images, device, repeats)
        results["methods"][name] = {"step_seconds": seconds, "images_per_second": batch / seconds,
                                    "model_only_seconds": model_seconds, "model_only_images_per_second": batch / model_seconds,
                                    "data_path_ratio": model_seconds / seconds}
    timed = results["methods"]
    if timed:  # ratios within one run: each method's step time over the fastest method's
        fastest = min(timing["step_seconds"] for timing in timed.values())
        results["step_time_over_fastest"] = {name: timing["step_seconds"] / fastest for name, timing in timed.items()}
    return results


def _time_pretraining_step(name: str, config: RunConfig, host_images: torch.Tensor, torch_device: torch.device,
                           repeats: int) -> tuple[float, float]:
    """(full step, model-only step) seconds of one method, best of ``repeats`` after a warm-up each."""
    from cxrbench.benchmark.pretraining.loop import StepRunner
    from cxrbench.methods import get_method

    options, batch = config.pretrain.options, config.pretrain.batch_size
    views_on = torch_device if options.augment_on == "device" else torch.device("cpu")
    torch.manual_seed(0)
    method = get_method(name).create(config.method_hyperparameters(name), backbone=config.backbone).train()
    step_runner = StepRunner(method, torch_device, options)
    optimizer = method.build_optimizer(batch)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(host_images), generator=generator)[:batch]

    def synchronise():
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    def full_step():
        chunk = host_images[order]
        if views_on.type == "cuda":
            chunk = chunk.pin_memory().to(views_on, non_blocking=True)
        views = [view.to(torch_device, non_blocking=True) for view in method.make_views(chunk, generator=generator)]
        step_runner(views, optimizer, 0, progress=0.5)
        synchronise()

    ready = [view.to(torch_device) for view in method.make_views(host_images[order].to(views_on), generator=generator)]

    def model_step():
        step_runner(ready, optimizer, 0, progress=0.5)
        synchronise()

    full_step(), model_step()  # warm-up
    return _best_of(full_step, repeats), _best_of(model_step, repeats)


def frozen_cache_benchmark(config: RunConfig, dataset_name: str = "phantom-nih", device: torch.device = torch.device("cpu"),
                           seed: int = 0) -> dict:
    """The frozen protocol as run (features computed once, cached) against recomputing them.

    Cached: ``prepare_shared`` (every image through the encoder once) plus the protocol's
    whole run (the profile's learning rates x epochs of the linear head), measured. Recomputed:
    what a probe without the cache would add, from measured parts: the training images
    through the encoder every epoch and the validation images at every evaluation, for each
    learning rate, and the test images once. Running that for real would take hours at the
    profile's 200 epochs x 3 rates; each part is timed here and multiplied out.
    """
    from cxrbench.benchmark.protocols.base import load_encoder, predict
    from cxrbench.benchmark.protocols.frozen import frozen_evaluation_epochs
    from cxrbench.benchmark.protocols.registry import PROTOCOLS
    from cxrbench.datasets import DATASETS
    from cxrbench.methods.backbone import encoder_state_dict, resnet_encoder

    dataset = DATASETS.get(dataset_name)().load(config.data)
    torch.manual_seed(seed)
    # the time depends on the trunk (the run's backbone), not on its weights: a random one
    encoder_state = encoder_state_dict(resnet_encoder(config.backbone))
    protocol, settings = PROTOCOLS["frozen"], config.protocol_settings("frozen")
    started = time.perf_counter()
    shared = protocol.prepare_shared(encoder_state, dataset, device)
    features_seconds = time.perf_counter() - started
    protocol.run(encoder_state, dataset, 100.0, seed, settings, device, shared)
    cached_seconds = time.perf_counter() - started

    encoder = load_encoder(encoder_state, device)
    train = dataset.label_fraction_positions(100.0, seed)
    val, test = dataset.split_positions("val"), dataset.split_positions("test")
    train_pass = _best_of(lambda: predict(encoder, dataset.images[train], device), 2)
    val_pass = _best_of(lambda: predict(encoder, dataset.images[val], device), 2)
    test_pass = _best_of(lambda: predict(encoder, dataset.images[test], device), 1)
    rates, epochs = len(settings["learning_rates"]), int(settings["epochs"])
    evaluations = len(frozen_evaluation_epochs(epochs))
    head_seconds = cached_seconds - features_seconds
    recomputed_seconds = rates * (epochs * train_pass + evaluations * val_pass) + test_pass + head_seconds
    return {"dataset": dataset_name, "train_images": int(len(train)), "val_images": int(len(val)),
            "learning_rates": rates, "epochs": epochs, "features_once_seconds": features_seconds,
            "cached_total_seconds": cached_seconds, "train_pass_seconds": train_pass, "val_pass_seconds": val_pass,
            "recomputed_total_seconds_estimated": recomputed_seconds, "speedup": recomputed_seconds / cached_seconds}


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def loader_benchmark(num_images: int = 64, source_size: int = 1024, size: int = 256, batch: int = 32, seed: int = 0) -> dict:
    """Training views from the prepared uint8 array against decoding a source PNG per sample.

    The per-sample path is what a loader over the released files does each epoch: open the
    1024 x 1024 PNG, force grey, resize to the training size, make a tensor, augment. The
    prepared path reads a batch from the memory-mapped ``images.npy`` and augments the batch
    at once. Both produce the same views (one SimCLR-style view per image); the PNGs are
    smooth synthetic radiograph-like images written to a temporary directory.
    """
    import tempfile

    from cxrbench.datasets.decode import read_png, resize_square
    from cxrbench.methods.augment import ViewRecipe, augment

    recipe = ViewRecipe()
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as directory:
        paths, array = _radiograph_like_files(Path(directory), num_images, source_size, size, seed)

        def per_sample():
            for path in paths:
                pixels = torch.from_numpy(np.array(resize_square(read_png(path), size)))
                augment(pixels[None], recipe, size, generator)

        def prepared_batches():
            for start in range(0, num_images, batch):
                augment(torch.from_numpy(np.array(array[start : start + batch])), recipe, size, generator)

        def decode_only():
            for path in paths:
                resize_square(read_png(path), size)

        def read_only():
            for start in range(0, num_images, batch):
                torch.from_numpy(np.array(array[start : start + batch]))  # a real copy out of the mapped file

        per_sample_seconds = _best_of(per_sample, 2)
        prepared_seconds = _best_of(prepared_batches, 3)
        decode_seconds = _best_of(decode_only, 2)
        read_seconds = _best_of(read_only, 3)
    return {
        "images": num_images, "source_size": source_size, "size": size, "batch": batch,
        "png_per_sample_images_per_second": num_images / per_sample_seconds,
        "prepared_images_per_second": num_images / prepared_seconds,
        "speedup": per_sample_seconds / prepared_seconds,
        # the reading alone, without the views both paths make: where the prepared array's gain is
        "png_decode_images_per_second": num_images / decode_seconds,
        "prepared_read_images_per_second": num_images / read_seconds,
        "read_speedup": decode_seconds / read_seconds,
    }


def _radiograph_like_files(directory: Path, num_images: int, source_size: int, size: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """``num_images`` smooth radiograph-like PNGs at ``source_size`` in ``directory``, and the same
    images resized to ``size`` as a prepared ``images.npy`` (memory-mapped, read-only)."""
    from PIL import Image

    from cxrbench.datasets.decode import read_png, resize_square

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:source_size, 0:source_size] / source_size
    paths = []
    for i in range(num_images):
        # two soft "lungs", a bright mediastinum and film grain: compresses like a radiograph
        body = 0.6 - 0.35 * (np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.03) + np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.03))
        image = np.clip(body + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.004) + rng.normal(0, 0.03, body.shape), 0, 1)
        path = directory / f"{i:05d}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    prepared = np.lib.format.open_memmap(directory / "images.npy", mode="w+", dtype=np.uint8, shape=(num_images, size, size))
    for i, path in enumerate(paths):
        prepared[i] = resize_square(read_png(path), size)
    prepared.flush()
    return paths, np.load(directory / "images.npy", mmap_mode="r")
