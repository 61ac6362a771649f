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
