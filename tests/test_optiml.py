"""OPTiML and its Sinkhorn solver: against POT, finite differences, and the spec's shapes."""

import numpy as np
import ot
import pytest
import torch

from cxrbench.benchmark.profiles import load_profile
from cxrbench.methods import METHOD_GROUPS, get_method
from cxrbench.methods.optiml import CVSIM, channel_cost
from cxrbench.methods.sinkhorn import entropic_transport, sinkhorn_solve


def problem(batch=3, n=12, m=10, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    M = torch.rand(batch, n, m, generator=generator, dtype=dtype) * 2
    a = torch.softmax(torch.randn(batch, n, generator=generator, dtype=dtype), 1)
    b = torch.softmax(torch.randn(batch, m, generator=generator, dtype=dtype), 1)
    return M, a, b


def entropic_objective(M, a, b, epsilon):
    plan, *_ = sinkhorn_solve(M, a, b, epsilon, max_iter=20000, tol=1e-14)
    return (plan * M).sum((1, 2)) + epsilon * (plan * (torch.log(plan) - 1)).sum((1, 2))


def test_plan_and_cost_match_pot_sinkhorn():
    M, a, b = problem()
    result = entropic_transport(M, a, b, epsilon=0.1, max_iter=5000, tol=1e-12)
    for index in range(len(M)):
        reference = ot.sinkhorn(a[index].numpy(), b[index].numpy(), M[index].numpy(), 0.1, numItermax=20000, stopThr=1e-14)
        np.testing.assert_allclose(result.plan[index].numpy(), reference, atol=1e-10)
        assert result.cost[index].item() == pytest.approx(float((reference * M[index].numpy()).sum()), abs=1e-9)
    np.testing.assert_allclose(result.plan.sum(2).numpy(), a.numpy(), atol=1e-11)
    np.testing.assert_allclose(result.plan.sum(1).numpy(), b.numpy(), atol=1e-11)


def test_float32_at_small_epsilon_matches_pot_solve_batch_without_overflow():
    M, a, b = problem(batch=4, n=64, m=64, seed=1, dtype=torch.float32)
    plan, f, g, iterations, error = sinkhorn_solve(M, a, b, epsilon=0.01, max_iter=3000, tol=1e-6)
    assert torch.isfinite(plan).all() and torch.isfinite(f).all() and torch.isfinite(g).all()
    reference = ot.solve_batch(M.double().numpy(), reg=0.01, a=a.double().numpy(), b=b.double().numpy(),
                               max_iter=20000, tol=1e-10, reg_type="entropy")
    np.testing.assert_allclose(plan.double().numpy(), reference.plan, atol=2e-6)


def test_envelope_gradients_match_finite_differences_of_the_entropic_objective():
    M, a, b = problem(batch=2, n=6, m=5, seed=2)
    epsilon = 0.2
    M.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    result = entropic_transport(M, a, b, epsilon=epsilon, max_iter=20000, tol=1e-14)
    result.cost.sum().backward()
    step = 1e-6
    with torch.no_grad():
        for (i, j) in [(0, 0), (3, 2), (5, 4)]:
            bump = torch.zeros_like(M)
            bump[:, i, j] = step
            numeric = (entropic_objective(M + bump, a, b, epsilon) - entropic_objective(M - bump, a, b, epsilon)) / (2 * step)
            np.testing.assert_allclose(M.grad[:, i, j].numpy(), numeric.numpy(), rtol=1e-5, atol=1e-9)
        # marginals live on the simplex: compare directional derivatives along e_i - e_j
        for (i, j) in [(0, 1), (2, 5)]:
            direction = torch.zeros_like(a)
            direction[:, i], direction[:, j] = step, -step
            numeric = (entropic_objective(M, a + direction, b, epsilon) - entropic_objective(M, a - direction, b, epsilon)) / (2 * step)
            analytic = a.grad[:, i] - a.grad[:, j]
            np.testing.assert_allclose(analytic.numpy(), numeric.numpy(), rtol=1e-5, atol=1e-9)
        direction = torch.zeros_like(b)
        direction[:, 0], direction[:, 4] = step, -step
        numeric = (entropic_objective(M, a, b + direction, epsilon) - entropic_objective(M, a, b - direction, epsilon)) / (2 * step)
        np.testing.assert_allclose((b.grad[:, 0] - b.grad[:, 4]).numpy(), numeric.numpy(), rtol=1e-5, atol=1e-9)


def build(name, **overrides):
    cls = get_method(name)
    return cls(cls.resolve_hyperparameters(dict(load_profile("smoke")["methods"]["optiml"], **overrides)))


def test_a_training_step_trains_encoder_cvsim_and_expander():
    method = build("optiml")
    images = torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8)
    loss, logs = method.training_step(method.make_views(images, torch.Generator().manual_seed(0)))
    loss.backward()
    for module in (method.encoder, method.cvsim, method.expander):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert {"ot", "var", "cov", "mu_entropy", "nu_entropy", "plan_entropy", "sinkhorn_iterations",
            "sinkhorn_marginal_error", "feature_std"} <= set(logs)
    assert logs["mu_entropy"] <= np.log(512) + 1e-4


def test_cvsim_attends_between_feature_dimensions_not_trivially():
    torch.manual_seed(0)
    module = CVSIM(dim=64, heads=4)
    weights, _ = module.attention(torch.randn(3, 64), torch.randn(3, 64))
    assert weights.shape == (3, 4, 16, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 16))
    assert not torch.allclose(weights, torch.ones_like(weights))  # the degenerate one-token reading
    assert weights.std() > 1e-3
    marginal = module(torch.randn(3, 64), torch.randn(3, 64))
    torch.testing.assert_close(marginal.sum(1), torch.ones(3))


def test_channel_cost_is_one_minus_cosine_between_channel_maps():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    cost = channel_cost(z_s, z_t)
    expected = 1 - torch.nn.functional.cosine_similarity(z_s[0, 3], z_t[0, 5], dim=0)
    torch.testing.assert_close(cost[0, 3, 5], expected)
    assert cost.shape == (2, 8, 8)


def test_a_one_by_one_feature_map_is_refused():
    method = build("optiml")
    views = method.make_views(torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2 positions"):
        method.training_step(views)


def test_each_ablation_changes_exactly_its_switches():
    base = get_method("optiml").resolve_hyperparameters({})
    expected = {
        "optiml-no-varcov": {"beta": 0.0, "eta": 0.0},
        "optiml-no-cvsim": {"use_cvsim": False},
        "optiml-ot-only": {"beta": 0.0, "eta": 0.0, "use_cvsim": False},
    }
    for name, changes in expected.items():
        variant = get_method(name).resolve_hyperparameters({})
        differing = {k: v for k, v in vars(variant).items() if vars(base)[k] != v}
        assert differing == changes, name
    assert METHOD_GROUPS["optiml-ablation"] == ["optiml", "optiml-no-varcov", "optiml-no-cvsim", "optiml-ot-only"]
    assert build("optiml-no-cvsim").cvsim is None
    with pytest.raises(ValueError, match="fixed"):
        get_method("optiml-no-varcov").resolve_hyperparameters({"beta": 25.0})


def test_without_var_cov_the_loss_is_the_weighted_ot_term():
    method = build("optiml-ot-only")
    images = torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8)
    loss, logs = method.training_step(method.make_views(images, torch.Generator().manual_seed(0)))
    assert loss.item() == pytest.approx(0.6 * logs["ot"], rel=1e-6)
    assert logs["mu_entropy"] == pytest.approx(np.log(512), rel=1e-6)  # uniform marginals
