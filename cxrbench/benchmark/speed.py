"""``bench speed``: speed goals measured as ratios within one run on one machine.

Timing assertions in tests are flaky on shared machines, so speed is a benchmark: every
figure here is measured in the same process, back to back, and reported as a ratio.

* Sinkhorn: the batched torch solver against POT's ``ot.solve_batch`` at the same problem
  size and the same number of iterations, the largest plan difference, and the solver's time
  per iteration against the machine's memory floor (the time to read the B x d x d kernel
  twice, which is what one iteration must do).
* OPTiML training step against a VICReg step (same backbone, batch and image size): the
  overhead of the OT term and CV-SIM.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

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
                       positions: int = 49, repeats: int = 3, seed: int = 0) -> dict:
    import ot

    generator = torch.Generator().manual_seed(seed)
    z_s = torch.nn.functional.normalize(torch.randn(batch, dim, positions, generator=generator).relu(), dim=2)
    z_t = torch.nn.functional.normalize(torch.randn(batch, dim, positions, generator=generator).relu(), dim=2)
    cost = 1 - torch.bmm(z_s, z_t.transpose(1, 2))
    a = torch.softmax(torch.randn(batch, dim, generator=generator), 1)
    b = torch.softmax(torch.randn(batch, dim, generator=generator), 1)

    ours = lambda: sinkhorn_solve(cost, a, b, epsilon, max_iter=iterations, tol=0.0)  # noqa: E731
    plan, *_ , used, _ = ours()
    ours_seconds = _best_of(ours, repeats)
    # kernel construction + one iteration, to separate the loop's own cost per iteration
    one_iteration = _best_of(lambda: sinkhorn_solve(cost, a, b, epsilon, max_iter=1, tol=0.0), repeats)
    loop_per_iteration = (ours_seconds - one_iteration) / max(1, used - 1)
    cost_np, a_np, b_np = cost.double().numpy(), a.double().numpy(), b.double().numpy()
    pot = lambda: ot.solve_batch(cost_np, reg=epsilon, a=a_np, b=b_np, max_iter=iterations, tol=0.0, reg_type="entropy")  # noqa: E731
    reference = pot()
    pot_seconds = _best_of(pot, max(1, repeats - 1))
    kernel = torch.exp(-cost / epsilon)
    memory_floor = _best_of(lambda: (kernel.sum(), kernel.sum()), repeats)  # read B x d x d twice
    return {
        "batch": batch, "dim": dim, "epsilon": epsilon, "iterations": used,
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


def training_step_benchmark(image_size: int = 224, batch: int = 64, repeats: int = 2, device: str = "cpu") -> dict:
    from cxrbench.methods import get_method

    results = {}
    images = torch.randint(0, 256, (batch, image_size, image_size), dtype=torch.uint8, device=device)
    for name in ("vicreg", "optiml"):
        cls = get_method(name)
        method = cls(cls.resolve_hyperparameters({})).to(device).train()
        optimizer = method.build_optimizer(batch)

        def step():
            views = method.make_views(images)
            loss, _ = method.training_step(views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device != "cpu":
                torch.cuda.synchronize()

        step()  # warm-up
        results[f"{name}_step_seconds"] = _best_of(step, repeats)
    results["optiml_over_vicreg"] = results["optiml_step_seconds"] / results["vicreg_step_seconds"]
    results.update({"image_size": image_size, "batch": batch, "device": device})
    return results


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
    from pathlib import Path

    from PIL import Image

    from cxrbench.datasets.decode import read_png, resize_square
    from cxrbench.methods.augment import ViewRecipe, augment

    rng = np.random.default_rng(seed)
    recipe = ViewRecipe()
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
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
        array = np.load(directory / "images.npy", mmap_mode="r")

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
