"""The baseline methods: losses against their formulas, gradients, momentum encoders, queues."""

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cxrbench.benchmark.profiles import load_profile
from cxrbench.methods import available_methods, get_method
from cxrbench.methods.backbone import to_model_input
from cxrbench.methods.densecl import info_nce, match_positions
from cxrbench.methods.momentum import cosine_momentum, shuffle_bn_forward
from cxrbench.methods.pcrlv2 import cutout

SSL_METHODS = ["simclr", "mocov2", "byol", "simsiam", "vicreg", "densecl", "pcrlv2"]


def build(name, **overrides):
    """A method with the smoke profile's small settings (plus overrides)."""
    cls = get_method(name)
    settings = dict(load_profile("smoke")["methods"].get(name, {}), **overrides)
    return cls(cls.resolve_hyperparameters(settings))


def one_step(method, batch=8, seed=0):
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (batch, 64, 64), dtype=torch.uint8)
    method.train()
    optimizer = method.build_optimizer(batch)
    views = method.make_views(images, torch.Generator().manual_seed(seed))
    loss, logs = method.training_step(views)
    optimizer.zero_grad()
    loss.backward()
    return optimizer, loss, logs


def test_every_paper_method_is_registered_with_a_description():
    for name in SSL_METHODS + ["sup1", "sup2"]:
        assert name in available_methods()
        assert len(get_method(name).description) > 20


@pytest.mark.parametrize("name", SSL_METHODS)
def test_one_step_sends_gradient_to_every_trainable_parameter(name):
    method = build(name)
    _, loss, logs = one_step(method)
    assert torch.isfinite(loss) and "loss" in logs
    without = [n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    if method.zero_init_residual:
        # each residual branch starts closed (its last BN scale is 0, as official): on the first
        # step only that scale receives gradient; the branch's convolutions do once it opens
        gates = [block.bn2.weight for layer in (method.encoder.layer1, method.encoder.layer4) for block in layer]
        assert all(gate.grad.abs().sum() > 0 for gate in gates)
        without = [n for n in without if not re.match(r"encoder\.layer\d\.\d\.(conv1|bn1|conv2)\.", n)]
    if name == "pcrlv2":
        # only the decoder scales drawn this step receive gradient in their heads (as official)
        assert all(".projector." in n or ".predictor." in n or ".supervision." in n for n in without), without
        assert method.encoder.conv1.weight.grad.abs().sum() > 0
    else:
        assert without == []


@pytest.mark.parametrize("name, online, target", [
    ("mocov2", "encoder", "key_encoder"),
    ("byol", "encoder", "target_encoder"),
    ("densecl", "encoder", "key_encoder"),
])
def test_momentum_encoder_moves_by_ema_and_gets_no_gradient(name, online, target):
    method = build(name)
    target_module = getattr(method, target)
    before = {k: v.clone() for k, v in target_module.state_dict().items()}
    optimizer, _, _ = one_step(method)
    assert all(p.grad is None and not p.requires_grad for p in target_module.parameters())
    optimizer.step()
    online_after = dict(getattr(method, online).named_parameters())
    method.after_optimizer_step(0.5)
    m = method.target_momentum if name == "byol" else method.hparams.momentum
    for key, parameter in target_module.named_parameters():
        expected = m * before[key] + (1 - m) * online_after[key].detach()
        torch.testing.assert_close(parameter.detach(), expected)
    assert not torch.equal(before["conv1.weight"], target_module.conv1.weight)


def test_byol_target_momentum_rises_from_base_to_one_on_a_cosine():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)


def nt_xent(a, b, temperature):
    """SimCLR's NT-Xent written out: 2N anchors, positive = the other view, 2N-2 negatives."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, positives)


def test_simclr_loss_is_nt_xent():
    method = build("simclr")
    torch.manual_seed(0)
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(method.criterion(a, b), nt_xent(a, b, 0.1))


def test_moco_loss_uses_its_queue_and_then_enqueues_the_keys():
    method = build("mocov2")
    bank = method.criterion.memory_bank
    queue_before = bank.bank.clone()  # (K, D)
    torch.manual_seed(0)
    query, key = torch.randn(4, 128), torch.randn(4, 128)
    loss = method.criterion(query.requires_grad_(), key)
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_before.T], dim=1) / 0.2
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(bank.bank[:4], k)  # the queue advanced by this batch's keys
    assert int(bank.bank_ptr) == 4


def test_symmetric_moco_loss_averages_both_directions_each_against_its_own_queue():
    """``symmetric_loss`` (an investigation knob): view 1's query against view 2's key and the
    first queue, view 2's query against view 1's key and a second queue, averaged; each queue then
    takes the keys it was the negatives for (so no query meets its own view's key of this batch)."""
    method = build("mocov2", symmetric_loss=True, shuffle_bn_splits=1).train()
    banks = [method.criterion.memory_bank, method.reverse_criterion.memory_bank]
    queues_before = [bank.bank.clone() for bank in banks]  # (K, D)
    torch.manual_seed(0)
    views = method.make_views(torch.randint(0, 256, (4, 64, 64), dtype=torch.uint8), torch.Generator().manual_seed(0))
    loss, _ = method.training_step(views)
    inputs = [to_model_input(view) for view in views]
    with torch.no_grad():
        queries = [F.normalize(method.projection_head(method.encoder(x)), dim=1) for x in inputs]
        keys = [F.normalize(method.key_projection_head(method.key_encoder(x)), dim=1) for x in inputs]
    expected = []
    for (q, k), queue in zip([(queries[0], keys[1]), (queries[1], keys[0])], queues_before):
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / method.hparams.temperature
        expected.append(F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))
    torch.testing.assert_close(loss.detach(), (expected[0] + expected[1]) / 2)
    torch.testing.assert_close(banks[0].bank[:4], keys[1])
    torch.testing.assert_close(banks[1].bank[:4], keys[0])
    assert not hasattr(build("mocov2"), "reverse_criterion")  # official: one direction, one queue
    for knob in ("symmetric_loss", "head_batch_norm"):  # MoCo v2's only: refused, not ignored, by DenseCL
        with pytest.raises(ValueError, match=f"^densecl: {knob} true: expected false"):
            build("densecl", **{knob: True})


def test_densecl_queues_advance_after_a_step():
    method = build("densecl")
    one_step(method, batch=8)
    assert int(method.global_queue.bank_ptr) == 8 and int(method.dense_queue.bank_ptr) == 8
    torch.testing.assert_close(method.dense_queue.bank[:8].norm(dim=1), torch.ones(8))


def test_densecl_matches_each_query_position_to_its_true_key_position():
    torch.manual_seed(0)
    query = torch.randn(2, 32, 9)
    permutation = torch.randperm(9)
    key = query[:, :, permutation] * 3.0 + 0.01 * torch.randn(2, 32, 9)  # same content, moved and rescaled
    matches = match_positions(query, key)
    # query position i is key position j where permutation[j] == i
    expected = torch.argsort(permutation)
    assert torch.equal(matches, expected.expand(2, -1))


def test_info_nce_equals_the_written_out_cross_entropy():
    torch.manual_seed(0)
    q, k, negatives = torch.randn(5, 8), torch.randn(5, 8), torch.randn(8, 11)
    manual = -torch.log_softmax(torch.cat([(q * k).sum(1, keepdim=True), q @ negatives], 1) / 0.2, dim=1)[:, 0].mean()
    torch.testing.assert_close(info_nce(q, k, negatives, 0.2), manual)


def test_simsiam_loss_is_the_symmetric_negative_cosine():
    method = build("simsiam")
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(4, 16) for _ in range(4))
    ours = 0.5 * (method.criterion(p1, z2) + method.criterion(p2, z1))
    manual = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    torch.testing.assert_close(ours, manual)
    # BYOL's official loss (2 - 2 cos, both directions summed) is in tests/test_faithfulness.py


def test_simsiam_predictor_keeps_a_fixed_learning_rate():
    method = build("simsiam")
    groups = method.build_optimizer(64).param_groups
    assert [bool(g.get("fixed_lr")) for g in groups] == [False, True]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.prediction_head.parameters()}


def test_shuffle_bn_returns_outputs_in_the_original_order():
    torch.manual_seed(0)
    images = torch.randn(8, 3)
    out = shuffle_bn_forward(lambda x: (x * 2, x.sum(1)), images, splits=2)
    torch.testing.assert_close(out[0], images * 2)
    torch.testing.assert_close(out[1], images.sum(1))


def test_pcrlv2_views_keep_a_clean_restoration_target_and_beta_decays():
    method = build("pcrlv2")
    images = torch.randint(0, 256, (4, 64, 64), dtype=torch.uint8)
    views = method.make_views(images, torch.Generator().manual_seed(0))
    global_1, global_2, target, keep_1, keep_2, *local = views
    assert global_1.shape == target.shape == keep_1.shape == (4, 1, 64, 64)
    assert set(keep_2.unique().tolist()) == {0.0, 1.0}  # Cutout's holes, applied after normalisation
    assert len(local) == 2 and local[0].shape == (4, 1, 32, 32)
    method.after_optimizer_step(0.0)
    assert method.beta == pytest.approx(1.0)
    method.after_optimizer_step(0.5)
    assert method.beta == pytest.approx(0.5)
    method.after_optimizer_step(1.0)
    assert method.beta == pytest.approx(0.0, abs=1e-12)


def test_cutout_zeroes_square_holes():
    images = torch.ones(3, 1, 20, 20)
    out = cutout(images, holes=1, length=4, generator=torch.Generator().manual_seed(0))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert ((zeros > 0) & (zeros <= 16)).all()  # a 4x4 square, less where clipped at a border


def test_sup2_loads_the_given_imagenet_weights_exactly(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    cls = get_method("sup2")
    hyperparameters = cls.resolve_hyperparameters({"weights_path": str(path)})
    assert cls.unavailable_reason(hyperparameters) is None
    exported = cls(hyperparameters).export_encoder()
    for key, value in exported.items():
        assert torch.equal(value, reference.state_dict()[key]), key
    missing = cls.resolve_hyperparameters({"weights_path": str(tmp_path / "absent.pth")})
    assert "absent.pth" in cls.unavailable_reason(missing)


def test_sup2_loads_an_exported_encoder_without_fc_and_names_a_wrong_file(tmp_path):
    from cxrbench.methods.backbone import WeightsUnavailable, encoder_state_dict

    reference = torchvision.models.resnet18()
    path = tmp_path / "encoder.pth"
    torch.save(encoder_state_dict(reference), path)  # as bench run exports it: no fc.*
    cls = get_method("sup2")
    exported = cls(cls.resolve_hyperparameters({"weights_path": str(path)})).export_encoder()
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in exported.items())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsUnavailable, match="wrong.pth: not a ResNet-18 state dict"):
        cls(cls.resolve_hyperparameters({"weights_path": str(tmp_path / "wrong.pth")}))


@pytest.mark.parametrize("name", SSL_METHODS + ["optiml"])
def test_every_method_builds_its_heads_on_a_resnet50_trunk_and_trains_it(name):
    """``model.backbone: resnet50``: the heads start from the trunk's 2,048 features, a step's
    gradient reaches the trunk's last stage, and the exported encoder is torchvision's ResNet-50."""
    cls = get_method(name)
    method = cls(cls.resolve_hyperparameters(load_profile("smoke")["methods"].get(name, {})), backbone="resnet50")
    assert method.backbone == "resnet50" and method.feature_dim == 2048
    _, loss, _ = one_step(method, batch=4)
    assert torch.isfinite(loss)
    # the last stage's final BN: with zero_init_residual it is the gate that opens the branch
    assert method.encoder.layer4[-1].bn3.weight.grad.abs().sum() > 0
    # every head reads the 2,048 features: the first layer after the trunk takes 2,048 inputs
    first_inputs = [module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels
                    for child_name, child in method.named_children() if not child_name.endswith("encoder")
                    for module in child.modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))][:1]
    assert first_inputs == [2048], first_inputs
    reference = torchvision.models.resnet50(weights=None)
    missing, unexpected = reference.load_state_dict(method.export_encoder(), strict=False)
    assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}


def test_a_method_written_before_backbones_runs_on_resnet18_and_is_refused_in_one_line_elsewhere():
    """Plugins whose __init__ takes no backbone keep working on the paper's ResNet-18; at ResNet-50
    their cells are reported as not run, with the way to fix the plugin."""
    from cxrbench.methods.simclr import SimCLR

    class Older(SimCLR):
        def __init__(self, hyperparameters=None):
            super().__init__(hyperparameters)

        @classmethod
        def unavailable_reason(cls, hyperparameters):  # the one-argument form of those plugins
            return None

    assert Older.create(None, backbone="resnet18").feature_dim == 512
    assert Older.cannot_run(Older.Hyperparameters(), "resnet18") is None
    reason = Older.cannot_run(Older.Hyperparameters(), "resnet50")
    assert "takes no backbone argument" in reason and "\n" not in reason
    assert SimCLR.create(None, backbone="resnet50").feature_dim == 2048
