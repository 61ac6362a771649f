"""Each method against its official code: loss scales, heads, initialisations, schedules, LARS,
and faithfulness records that cannot drift from the profiles."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.benchmark.cli import main
from cxrbench.benchmark.pretraining.schedule import learning_rate_factor, rate_factor
from cxrbench.benchmark.profiles import available_profiles, load_profile, method_hyperparameters
from cxrbench.methods import get_method
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.lars import LARS

BUILT_IN_SSL = ["simclr", "mocov2", "byol", "simsiam", "vicreg", "densecl", "pcrlv2", "optiml"]


def build(name: str, profile: str = "smoke"):
    return get_method(name)(method_hyperparameters(load_profile(profile), name))


def fixed_views(method, batch: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (batch, 64, 64), dtype=torch.uint8)
    return method.make_views(images, torch.Generator().manual_seed(seed))


# --- loss scales -------------------------------------------------------------------------


def official_simclr_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """google-research/simclr objective.py: loss_a + loss_b, each a mean CE over N anchors."""
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    n = len(z_a)
    masked = torch.eye(n, dtype=torch.bool)
    logits_aa = (z_a @ z_a.T / temperature).masked_fill(masked, -1e9)
    logits_bb = (z_b @ z_b.T / temperature).masked_fill(masked, -1e9)
    logits_ab, logits_ba = z_a @ z_b.T / temperature, z_b @ z_a.T / temperature
    labels = torch.arange(n)
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return loss_a + loss_b


def test_simclr_loss_is_the_official_objective_at_its_scale():
    method = build("simclr")
    method.train()
    views = fixed_views(method)
    loss, _ = method.training_step(views)
    with torch.no_grad():
        z_a, z_b = (method.projection_head(method.encoder(to_model_input(view))) for view in views)
    expected = official_simclr_loss(z_a, z_b, method.hparams.temperature)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    # lightly's NTXentLoss alone is half of it (the mean over all 2N anchors)
    torch.testing.assert_close(method.criterion(z_a, z_b), expected / 2, rtol=1e-5, atol=1e-5)


def test_byol_loss_is_the_sum_of_both_directions_of_two_minus_two_cos():
    method = build("byol")
    method.train()
    views = fixed_views(method)
    loss, _ = method.training_step(views)
    with torch.no_grad():
        inputs = [to_model_input(view) for view in views]
        online = [method.prediction_head(method.projection_head(method.encoder(x))) for x in inputs]
        target = [method.target_projection_head(method.target_encoder(x)) for x in inputs]

        def regression(p, z):  # deepmind byol helpers.regression_loss: ||p/|p| - z/|z|||^2
            return ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(dim=1).mean()

        expected = regression(online[0], target[1]) + regression(online[1], target[0])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    assert 0 < loss.item() < 8  # each direction lies in [0, 4]


def test_byol_defaults_are_the_official_300_epoch_preset():
    hp = get_method("byol").Hyperparameters()
    assert (hp.base_lr, hp.weight_decay, hp.base_momentum) == (0.3, 1e-6, 0.99)  # configs/byol.py, 300 epochs
    assert load_profile("paper")["pretrain"]["epochs"] == 300
    assert method_hyperparameters(load_profile("paper"), "byol") == hp  # the paper profile keeps the preset


# --- heads and initialisations --------------------------------------------------------------


def test_simclr_head_is_the_official_v1_head():
    head = build("simclr", "paper").projection_head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]
    assert all(m.bias is None for m in linears)  # every linear layer is followed by BN
    assert norms[0].weight is not None and norms[0].bias is not None
    assert norms[1].weight is not None and norms[1].bias is None  # center=False: a scale, no shift
    assert all(name.split(".")[-1] != "bias" or "layers.1" in name for name, _ in head.named_parameters())


def test_byol_projector_and_predictor_end_without_bias():
    method = build("byol", "paper")
    for head in (method.projection_head, method.prediction_head, method.target_projection_head):
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        assert linears[-1].bias is None
        assert (linears[0].out_features, linears[-1].out_features) == (4096, 256)


def test_byol_target_network_has_its_own_initialisation_and_then_follows_by_ema():
    method = build("byol")
    online, target = dict(method.encoder.named_parameters()), dict(method.target_encoder.named_parameters())
    assert not torch.equal(online["conv1.weight"], target["conv1.weight"])
    assert not torch.equal(method.projection_head.layers[0].weight, method.target_projection_head.layers[0].weight)
    assert not any(p.requires_grad for p in method.target_encoder.parameters())
    before = (online["conv1.weight"] - target["conv1.weight"]).norm()
    method.after_optimizer_step(0.0)  # tau = base: the target moves (1 - tau) of the way
    after = (online["conv1.weight"] - target["conv1.weight"]).norm()
    assert after.item() == pytest.approx(before.item() * method.hparams.base_momentum, rel=1e-4)


def test_simsiam_projector_is_as_wide_as_the_backbone():
    head = build("simsiam", "paper").projection_head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512), (512, 2048)]
    assert not norms[-1].affine


@pytest.mark.parametrize("name", BUILT_IN_SSL)
def test_zero_init_residual_where_the_official_code_sets_it(name):
    encoder = build(name).encoder
    last_norms = [block.bn2.weight for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4) for block in layer]
    zeroed = all(torch.count_nonzero(weight) == 0 for weight in last_norms)
    assert zeroed == (name in ("simsiam", "vicreg"))  # official SimSiam and VICReg; the others not


def test_densecl_global_neck_is_kaiming_normal_with_zero_bias():
    torch.manual_seed(0)
    head = build("densecl", "paper").global_head
    for linear in (m for m in head.modules() if isinstance(m, nn.Linear)):
        assert torch.count_nonzero(linear.bias) == 0
        assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / linear.in_features), rel=0.05)


def test_pcrlv2_decoder_is_initialised_as_the_official_decoder():
    torch.manual_seed(0)
    decoder = build("pcrlv2", "paper").decoder
    convs = [m for m in decoder.blocks.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in decoder.blocks.modules() if isinstance(m, nn.Linear)]
    for conv in convs:  # kaiming_uniform(fan_in, relu): U(-b, b), b = sqrt(6 / fan_in)
        bound = math.sqrt(6 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]))
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert conv.bias is None or torch.count_nonzero(conv.bias) == 0
    for linear in linears:  # xavier_uniform: b = sqrt(6 / (fan_in + fan_out))
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(linear.bias) == 0
    head = decoder.reconstruction_head
    assert torch.count_nonzero(head.bias) == 0
    assert head.weight.abs().max() <= math.sqrt(6 / (16 * 9 + 3 * 9))


def test_pcrlv2_cutout_holes_are_zero_in_the_normalised_input():
    """Official Cutout runs after Normalize: a hole is 0 (the mean grey), not black."""
    method = build("pcrlv2")
    method.train()
    seen = []
    method.encoder.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    views = fixed_views(method, batch=4)
    global_1, _, _, keep_1, *_ = views
    method.training_step(views)
    first_input = seen[0]  # the encoder's first call is global view 1
    holes = keep_1.expand_as(first_input) == 0
    assert holes.any()
    assert torch.count_nonzero(first_input[holes]) == 0
    black = to_model_input(torch.zeros(1, 1, 1, 1))
    assert (black < -1.5).all()  # what the old fill (0 before normalising) gave: far from the mean
    torch.testing.assert_close(first_input[~holes], to_model_input(global_1).expand_as(first_input)[~holes])


# --- schedules ------------------------------------------------------------------------------


def test_warm_up_starts_at_rate_zero_as_the_official_code():
    assert learning_rate_factor(0, 100, 10, 0.0) == 0.0  # official: step / warmup_steps
    assert learning_rate_factor(5, 100, 10, 0.0) == pytest.approx(0.5)
    assert learning_rate_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert learning_rate_factor(100, 100, 10, 0.001) == pytest.approx(0.001)


@pytest.mark.parametrize("unit", ["step", "epoch"])
def test_a_warm_up_rises_every_step_in_either_unit_and_the_cosine_keeps_the_unit(unit):
    """Epochs of 10 steps, 2 of warm-up, 6 in all: the rate rises 0, 0.05, ..., 0.95 over the first
    20 steps (not 0 for a whole epoch, then a jump); after it, the cosine over the remaining 40 steps
    is evaluated every step or at each epoch's first step."""
    rates = [rate_factor(step, 10, unit, 60, 20, 0.0) for step in range(60)]
    assert rates[:20] == pytest.approx([step / 20 for step in range(20)])
    after = [0.5 * (1 + math.cos(math.pi * (step - 20) / 40)) for step in range(20, 60)]
    if unit == "epoch":
        after = [after[(step // 10) * 10] for step in range(40)]
    assert rates[20:] == pytest.approx(after)
    # a warm-up that ends within an epoch: the per-epoch cosine holds the peak until the next epoch
    # starts, never falling back to the rate of that epoch's first step (10/15)
    rates = [rate_factor(step, 10, "epoch", 60, 15, 0.0) for step in range(20)]
    assert rates[:15] == pytest.approx([step / 15 for step in range(15)])
    assert rates[15:20] == pytest.approx([1.0] * 5)


@pytest.mark.parametrize("name, unit", [("simclr", "step"), ("byol", "step"), ("vicreg", "step"), ("optiml", "step"),
                                        ("simsiam", "epoch"), ("mocov2", "epoch"), ("densecl", "epoch"), ("pcrlv2", "epoch")])
def test_each_method_steps_its_rate_as_its_official_code(name, unit):
    assert get_method(name).lr_schedule_unit == unit
    steps_per_epoch = 10
    rates = [rate_factor(step, steps_per_epoch, unit, 40, 0, 0.0) for step in range(40)]  # what the loop applies
    per_epoch = [rates[e * steps_per_epoch : (e + 1) * steps_per_epoch] for e in range(4)]
    if unit == "epoch":  # official SimSiam: lr * 0.5 (1 + cos(pi epoch / epochs)), constant within an epoch
        assert all(len(set(rates)) == 1 for rates in per_epoch)
        assert [epoch[0] for epoch in per_epoch] == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    else:
        assert len(set(rates)) == 40


# --- LARS -----------------------------------------------------------------------------------


def test_lars_step_is_the_official_formula():
    torch.manual_seed(0)
    weight, bias = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(8))
    optimiser = LARS([{"params": [weight], "weight_decay": 1e-4}, {"params": [bias], "weight_decay": 0.0}],
                     lr=0.5, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02)
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    momentum_w = torch.zeros_like(w0)
    for step in range(3):
        g_w, g_b = torch.randn(8, 4) * 1e-3, torch.randn(8)
        weight.grad, bias.grad = g_w.clone(), g_b.clone()
        optimiser.step()
        # facebookresearch/vicreg main_vicreg.py LARS: dp = g + wd p; q = eta |p| / |dp|; mu = m mu + q dp
        update = g_w + 1e-4 * w0
        momentum_w = 0.9 * momentum_w + 0.02 * w0.norm() / update.norm() * update
        w0 = w0 - 0.5 * momentum_w
        torch.testing.assert_close(weight.detach(), w0)
    assert not torch.equal(bias.detach(), b0)  # excluded from adaptation, still trained


def test_our_lars_differs_from_lightlys_where_the_decay_term_matters():
    """eta |w| / |g + wd w| (official, ours) against eta |w| / (|g| + wd |w|) (lightly): one step each."""
    from lightly.utils.lars import LARS as LightlyLARS

    steps = []
    for optimiser_class in (LARS, LightlyLARS):
        weight = nn.Parameter(torch.tensor([1.0, 0.0]))
        weight.grad = torch.tensor([-1e-4, 1e-4])  # a gradient as small as the decay term, partly against it
        optimiser_class([weight], lr=1.0, momentum=0.0, weight_decay=1e-4, trust_coefficient=1e-3).step()
        steps.append((torch.tensor([1.0, 0.0]) - weight.detach()).norm().item())
    ours, lightlys = steps
    assert ours == pytest.approx(1e-3, rel=1e-5)  # lr * (eta |w| / |d|) * |d| = eta |w|: the official step
    assert ours / lightlys > 1.5


# --- records that cannot drift ----------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_IN_SSL)
def test_faithfulness_records_hold_no_per_profile_columns(name):
    import importlib

    record = importlib.import_module(get_method(name).__module__).__doc__
    header = next(line for line in record.splitlines() if re.match(r"hyperparameter\s{2,}", line))  # the table's
    assert "profile" not in header.replace("ours (default)", ""), header
    assert f"bench list methods --details {name}" in " ".join(record.split())


@pytest.mark.parametrize("name", BUILT_IN_SSL)
def test_every_profile_override_of_a_method_is_named_in_its_record(name):
    """A profile that changes a method's default must have its reason in the record."""
    import importlib

    cls = get_method(name)
    record = importlib.import_module(cls.__module__).__doc__
    for profile in available_profiles():
        overrides = load_profile(profile)["methods"].get(cls.profile_key or name) or {}
        for key in overrides:
            if key in ("warmup_epochs",):  # every record's warm-up row says profiles may shorten it
                assert "warm-up" in record
                continue
            words = {key, key.replace("_", " ")}
            assert any(word in record for word in words), f"{name}: {profile} sets {key}, its record never names it"


def test_bench_list_details_prints_what_each_profile_resolves(capsys):
    assert main(["list", "methods", "--details", "byol"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [re.split(r"\s{2,}", line.strip()) for line in lines[lines.index(next(l for l in lines if l.startswith("hyperparameter"))):]]
    header, rows = table[0], {row[0]: row for row in table[2:]}
    profiles = header[2:]
    assert sorted(profiles) == sorted(available_profiles())
    default = get_method("byol").Hyperparameters()
    for field in dataclasses.fields(default):
        for position, profile in enumerate(profiles):
            value = getattr(method_hyperparameters(load_profile(profile), "byol"), field.name)
            printed = rows[field.name][2 + position]
            assert printed == (f"{value} *" if value != getattr(default, field.name) else str(value)), (field.name, profile)
    for position, profile in enumerate(profiles):
        assert rows["pretrain.epochs"][-len(profiles) + position] == str(load_profile(profile)["pretrain"]["epochs"])
    assert main(["list", "--details", "no-such-method"]) == 2


def test_moco_v2_head_and_schedule_are_the_official_ones_unless_asked_for():
    """The official MoCo v2 head has no BatchNorm and no warm-up; ``head_batch_norm`` and
    ``warmup_epochs`` (investigation knobs, no profile's) add them, the BatchNorm after each layer of
    both the query head and its momentum copy."""
    official = get_method("mocov2")()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in official.projection_head.modules())
    hyperparameters = dataclasses.replace(official.hparams, head_batch_norm=True)
    with_norm = get_method("mocov2")(hyperparameters)
    for head in (with_norm.projection_head, with_norm.key_projection_head):
        assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == 2
    for name in available_profiles():
        hyperparameters = method_hyperparameters(load_profile(name), "mocov2")
        assert not hyperparameters.head_batch_norm, name
        # no warm-up, as official, unless asked for; the loop reads it through the method's schedule
        assert get_method("mocov2")(hyperparameters).lr_schedule().warmup_epochs == 0, name
    warmed = get_method("mocov2")(dataclasses.replace(official.hparams, warmup_epochs=3.0))
    assert warmed.lr_schedule().warmup_epochs == 3.0 and warmed.lr_schedule().unit == "epoch"


def test_moco_optimizer_is_official_sgd_unless_lars_is_asked_for():
    """MoCo v2 and DenseCL train with SGD (weight decay on every parameter) and the one-directional
    loss in every profile;
    ``optimizer: lars`` (an investigation knob) gives LARS with biases and norms neither decayed nor
    adapted; anything else is refused with the value named."""
    for name in ("mocov2", "densecl"):
        for profile in available_profiles():
            hyperparameters = method_hyperparameters(load_profile(profile), name)
            assert hyperparameters.optimizer == "sgd", (name, profile)
            assert not hyperparameters.symmetric_loss, (name, profile)  # official: one direction
        method = get_method(name)()
        sgd = method.build_optimizer(64)
        assert type(sgd) is torch.optim.SGD and all(group["weight_decay"] == 1e-4 for group in sgd.param_groups)
        trainable = {id(p) for p in method.parameters() if p.requires_grad}
        assert {id(p) for group in sgd.param_groups for p in group["params"]} == trainable
        with_lars = get_method(name)(dataclasses.replace(method.hparams, optimizer="lars", lars_eta=0.02))
        lars = with_lars.build_optimizer(64)
        assert isinstance(lars, LARS)
        decayed, excluded = lars.param_groups
        assert decayed["weight_decay"] == 1e-4 and all(p.ndim > 1 for p in decayed["params"])
        assert excluded["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in excluded["params"])
        assert all(group["trust_coefficient"] == 0.02 for group in lars.param_groups)
        # every trainable parameter once, and no momentum copy
        assert {id(p) for group in lars.param_groups for p in group["params"]} == {id(p) for p in with_lars.parameters() if p.requires_grad}
        # refused when the method is made, before any pretraining, with the value and the choices
        with pytest.raises(ValueError, match=f"^{name}: optimizer 'adam': expected one of sgd, lars$"):
            get_method(name)(dataclasses.replace(method.hparams, optimizer="adam"))


def test_byol_target_starts_on_its_own_unless_copied():
    """Official BYOL draws the target network on its own; ``target_from_online`` (an investigation
    knob, no profile's) starts it as a copy of the online network and leaves the online one as it was."""
    torch.manual_seed(0)
    official = get_method("byol")()
    torch.manual_seed(0)
    copied = get_method("byol")(dataclasses.replace(official.hparams, target_from_online=True))
    online, target = official.encoder.state_dict(), official.target_encoder.state_dict()
    assert not torch.equal(online["conv1.weight"], target["conv1.weight"])
    for key, value in copied.encoder.state_dict().items():
        assert torch.equal(value, online[key]), key  # the online network does not depend on the knob
        assert torch.equal(copied.target_encoder.state_dict()[key], value), key
    for key, value in copied.projection_head.state_dict().items():
        assert torch.equal(copied.target_projection_head.state_dict()[key], value), key
    for profile in available_profiles():
        assert not method_hyperparameters(load_profile(profile), "byol").target_from_online, profile
