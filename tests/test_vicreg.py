import torch

from cxrbench.methods import get_method
from cxrbench.methods.backbone import to_model_input


def official_vicreg_loss(x, y, sim=25.0, std=25.0, cov=1.0):
    """The loss as written in the VICReg paper (Eqs. 1-6), independently of lightly."""
    n, d = x.shape
    invariance = ((x - y) ** 2).mean()
    x = x - x.mean(0)
    y = y - y.mean(0)
    std_x = torch.sqrt(x.var(0) + 1e-4)
    std_y = torch.sqrt(y.var(0) + 1e-4)
    variance = torch.relu(1 - std_x).mean() / 2 + torch.relu(1 - std_y).mean() / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    covariance = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    return sim * invariance + std * variance + cov * covariance


def small_vicreg():
    cls = get_method("vicreg")
    return cls(cls.resolve_hyperparameters({"expander_dim": 64}))


def test_loss_matches_the_paper_formula():
    method = small_vicreg()
    torch.manual_seed(0)
    a, b = torch.randn(32, 64) * 0.7, torch.randn(32, 64) * 1.3 + 0.2
    torch.testing.assert_close(method.criterion(a, b), official_vicreg_loss(a, b), rtol=1e-5, atol=1e-5)


def test_collapsed_embeddings_pay_the_full_variance_penalty():
    method = small_vicreg()
    constant = torch.ones(16, 64)
    # invariance 0, covariance 0, variance: relu(1 - sqrt(1e-4)) = 0.99 in both branches
    torch.testing.assert_close(method.criterion(constant, constant), torch.tensor(25 * 0.99), rtol=1e-5, atol=1e-5)


def test_training_step_sends_gradient_to_encoder_and_expander():
    method = small_vicreg()
    images = torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8)
    views = method.make_views(images, torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(8, 1, 64, 64)] * 2
    loss, logs = method.training_step(views)
    loss.backward()
    assert method.encoder.conv1.weight.grad.abs().sum() > 0
    # zero_init_residual (official): a block's branch starts closed, its gate (last BN) gets the gradient
    assert method.encoder.layer4[1].bn2.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.expander.parameters())
    assert "loss" in logs and torch.isfinite(loss)


def test_lars_excludes_biases_and_norms_from_decay_and_adaptation():
    method = small_vicreg()
    optimizer = method.build_optimizer(batch_size=64)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-6 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert decayed["lr"] == 0.2 * 64 / 256  # official linear scaling rule


def test_unknown_hyperparameter_is_rejected():
    cls = get_method("vicreg")
    try:
        cls.resolve_hyperparameters({"expander_width": 3})
    except ValueError as error:
        assert "expander_width" in str(error)
    else:
        raise AssertionError("an unknown hyperparameter was accepted")


def test_model_input_repeats_the_grey_channel():
    x = torch.rand(2, 1, 8, 8)
    rgb = to_model_input(x)
    assert rgb.shape == (2, 3, 8, 8)
    # undo the per-channel normalisation: all three channels carry the same grey image
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb * std + mean, x.expand(-1, 3, -1, -1))
