"""Encoder rows: checkpoints of other frameworks, as each saves them, read back exactly."""

import io
import json
import pickle

import pytest
import torch
import torchvision
from torch import nn

from cxrbench.methods.checkpoints import CheckpointError, load_encoder_checkpoint


def source_model(seed=0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so they must be carried over
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def features(state_dict):
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(state_dict, strict=True)
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.rand(2, 3, 64, 64))


def prefixed(state, prefix):
    return {prefix + key: value for key, value in state.items()}


def lightly_model_state(model):
    """A lightly model as lightly's examples build it: the ResNet's children without fc as an
    nn.Sequential backbone, and lightly's own projection head."""
    from lightly.models.modules.heads import SimCLRProjectionHead

    class SimCLRModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(model.children())[:-1])
            self.projection_head = SimCLRProjectionHead(512, 512, 128)

    return SimCLRModel().state_dict()


def lightning_checkpoint(model, tmp_path):
    """A PyTorch Lightning checkpoint written by Lightning itself (one training step of a
    solo-learn-shaped module: backbone, projector, momentum backbone)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = model
            self.backbone.fc = nn.Identity()
            self.projector = nn.Linear(512, 16)
            self.momentum_backbone = torchvision.models.resnet18(weights=None)

        def training_step(self, batch, _):
            return self.projector(self.backbone(batch[0])).pow(2).mean() * 0.0  # keep the weights as they are

        def configure_optimizers(self):
            return torch.optim.SGD(self.projector.parameters(), lr=0.0)

    module = Module()
    module.backbone.eval()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path))
    module.train = lambda mode=True: module  # BatchNorm statistics stay as set (no training-mode update)
    trainer.fit(module, DataLoader(TensorDataset(torch.rand(2, 3, 32, 32)), batch_size=2))
    path = tmp_path / "solo.ckpt"
    trainer.save_checkpoint(str(path))
    return path


def formats(model, tmp_path):
    """(expected format, file) for each framework's layout."""
    state = model.state_dict()
    trunk = {key: value for key, value in state.items() if not key.startswith("fc.")}
    heads = {"fc.0.weight": torch.zeros(512, 512), "fc.0.bias": torch.zeros(512), "fc.2.weight": torch.zeros(128, 512)}
    cases = {
        "torchvision/timm ResNet state dict": state,
        "cxrbench encoder.pth": trunk,
        "lightly model (backbone as nn.Sequential": lightly_model_state(model),
        "mmselfsup/mmpretrain checkpoint": {"meta": {"epoch": 200}, "state_dict": {
            **prefixed(trunk, "backbone."), "neck.mlp.0.weight": torch.zeros(4, 4), "head.loss": torch.zeros(1)}},
        "official MoCo v1/v2 checkpoint (encoder_q) with a DistributedDataParallel 'module.' prefix": {
            "epoch": 200, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {**prefixed({**trunk, **heads}, "module.encoder_q."), **prefixed({**trunk, **heads}, "module.encoder_k."),
                           "module.queue": torch.zeros(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        "official DenseCL (OpenSelfSup) checkpoint (encoder_q.0)": {"state_dict": {
            **prefixed(trunk, "encoder_q.0."), "encoder_q.1.mlp.0.weight": torch.zeros(4, 4), **prefixed(trunk, "encoder_k.0."),
            "queue": torch.zeros(128, 16), "queue2": torch.zeros(128, 16)}},
        "official SimSiam checkpoint (encoder) with a DistributedDataParallel 'module.' prefix": {
            "epoch": 100, "state_dict": {**prefixed({**trunk, **heads}, "module.encoder."), "module.predictor.0.weight": torch.zeros(4, 4)}},
        "torchvision/timm ResNet state dict with a DistributedDataParallel 'module.' prefix": prefixed(state, "module."),
    }
    files = []
    for expected, content in cases.items():
        path = tmp_path / f"{len(files)}.pth"
        torch.save(content, path)
        files.append((expected, path))
    return files


def test_every_framework_layout_loads_the_same_weights(tmp_path):
    model = source_model()
    reference = features({key: value for key, value in model.state_dict().items() if not key.startswith("fc.")})
    for expected, path in formats(model, tmp_path) + [("PyTorch Lightning checkpoint (solo-learn, lightly)",
                                                        lightning_checkpoint(source_model(), tmp_path))]:
        loaded = load_encoder_checkpoint(path)
        assert loaded.format.startswith(expected), (path, loaded.format)
        assert loaded.backbone == "resnet18" and len(loaded.sha256) == 64
        assert torch.equal(features(loaded.state_dict), reference), expected
    lightning = load_encoder_checkpoint(tmp_path / "solo.ckpt")
    assert "momentum_backbone" in lightning.mapping["set_aside"] and lightning.mapping["prefix_removed"] == "backbone."


def test_a_missing_or_extra_trunk_key_an_unknown_layout_and_a_pickle_are_each_one_line(tmp_path):
    trunk = {key: value for key, value in source_model().state_dict().items() if not key.startswith("fc.")}
    missing = dict(trunk)
    del missing["layer3.1.conv2.weight"]
    extra = {**prefixed(trunk, "backbone."), "backbone.layer5.weight": torch.zeros(1)}
    cases = {
        "missing.pth": (missing, ["layer3.1.conv2.weight", "1 trunk key(s) missing", "torchvision/timm"]),
        "extra.pth": ({"state_dict": extra, "meta": {}}, ["layer5.weight", "left over", "mmselfsup"]),
        "unknown.pth": ({"weights": {"a.b": torch.zeros(1)}}, ["no ResNet-18 or ResNet-50 trunk", "tried:", "official SimSiam"]),
    }
    for name, (content, expected) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError) as error:
            load_encoder_checkpoint(tmp_path / name)
        message = str(error.value)
        assert "\n" not in message and str(tmp_path / name) in message
        assert all(part in message for part in expected), message

    class Exploit:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    buffer = io.BytesIO()
    torch.save({"state_dict": trunk, "hook": Exploit()}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    (tmp_path / "evil.pth").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="never unpickled") as error:
        load_encoder_checkpoint(tmp_path / "evil.pth")
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()


def test_an_encoder_row_takes_part_in_every_protocol(tmp_path, capsys):
    from cxrbench.benchmark.cli import main
    from cxrbench.reports.tables import load_records

    model = source_model()
    checkpoint = tmp_path / "solo.pth"
    torch.save({"state_dict": prefixed(model.state_dict(), "backbone."), "pytorch-lightning_version": "2.6.6"}, checkpoint)
    out = tmp_path / "run"
    assert main(["run", "--encoder", f"mine={checkpoint}", "--methods", "sup1", "--protocol", "all", "--profile", "smoke",
                 "--fractions", "100", "--out", str(out)]) == 0
    records = [json.loads(path.read_text()) for path in (out / "cells").glob("mine__*.json")]
    assert sorted(record["cell"]["protocol"] for record in records) == ["finetune", "frozen", "segmentation"]
    provenance = records[0]["method_provenance"]
    assert provenance["format"].startswith("PyTorch Lightning") and provenance["backbone"] == "resnet18"
    assert provenance["sha256"] == __import__("hashlib").sha256(checkpoint.read_bytes()).hexdigest()
    assert json.loads((out / "run.json").read_text())["profile"]["encoders"] == {"mine": str(checkpoint)}
    assert set(load_records(out)["method"]) == {"sup1", "mine"}
    # a file that is no checkpoint: one line, exit 2, nothing written
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["run", "--encoder", f"bad={tmp_path / 'notes.txt'}", "--profile", "smoke", "--out", str(tmp_path / "never")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "notes.txt" in lines[0] and not (tmp_path / "never").exists()


def test_a_resnet50_file_is_a_row_of_its_own_trunk_in_every_protocol(tmp_path):
    """Most published SSL checkpoints are ResNet-50: the row's frozen probe, fine-tuning and U-Net
    take the file's trunk (2,048 features, smp's ResNet-50 U-Net), its records say so, and its
    tests against the ResNet-18 baseline are marked as comparing two backbones."""
    import pandas as pd

    from cxrbench.benchmark.cli import main
    from cxrbench.benchmark.protocols.segmentation import build_unet
    from cxrbench.reports.tables import load_records, profile_note

    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None)
    checkpoint = tmp_path / "moco_r50.pth.tar"  # the official MoCo layout
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": prefixed(trunk.state_dict(), "module.encoder_q.")}, checkpoint)
    out = tmp_path / "run"
    assert main(["run", "--encoder", f"r50={checkpoint}", "--methods", "sup1", "--protocol", "all", "--profile", "smoke",
                 "--fractions", "100", "--out", str(out)]) == 0
    records = {json.loads(path.read_text())["cell"]["protocol"]: json.loads(path.read_text()) for path in (out / "cells").glob("r50__*.json")}
    assert sorted(records) == ["finetune", "frozen", "segmentation"]
    assert all(record["method_backbone"] == "resnet50" and record["method_provenance"]["backbone"] == "resnet50"
               for record in records.values())
    frame = load_records(out)
    assert set(frame.loc[frame["method"] == "r50", "display_name"]) == {"r50 [ResNet-50]"}
    assert "[ResNet-50]" in profile_note(frame)
    tests = pd.read_csv(out / "paired-tests.csv")
    assert set(tests.loc[tests["method"] == "r50", "backbones"]) == {"resnet50 vs resnet18"}
    assert set(tests.loc[tests["method"] != "r50", "backbones"]) <= {"resnet18"}
    # the U-Net's encoder is the file's trunk, key for key
    unet = build_unet({key: value for key, value in trunk.state_dict().items() if not key.startswith("fc.")})
    assert torch.equal(unet.encoder.layer4[2].conv3.weight, trunk.layer4[2].conv3.weight)


def test_backbone_resnet50_pretrains_evaluates_and_exports_a_torchvision_resnet50(tmp_path, capsys):
    """``bench run --backbone resnet50``: the method pretrains a ResNet-50, its records say so, its
    encoder.pth loads into torchvision's resnet50, and a folder of ResNet-18 records refuses it."""
    from cxrbench.benchmark.cli import main

    out = tmp_path / "run"
    common = ["run", "--methods", "simclr", "--protocol", "frozen", "--profile", "smoke", "--datasets", "phantom-nih",
              "--fractions", "100", "--seeds", "0", "--out", str(out)]
    assert main(common + ["--backbone", "resnet50"]) == 0
    record = json.loads(next((out / "cells").glob("simclr__*.json")).read_text())
    assert record["method_backbone"] == "resnet50" and record["config"]["profile"]["model"]["backbone"] == "resnet50"
    encoder = torch.load(out / "pretrain" / "simclr__phantom-nih" / "encoder.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet50(weights=None).load_state_dict(encoder, strict=False)
    assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}
    capsys.readouterr()
    assert main(common) == 2  # the profile's resnet18 into a folder of ResNet-50 records
    assert "model.backbone" in capsys.readouterr().err
