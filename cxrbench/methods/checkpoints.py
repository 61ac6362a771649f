"""Reading a ResNet encoder out of another framework's checkpoint, recognised from its keys.

A researcher who trained an encoder elsewhere brings the file as it was saved; nothing is to be
set by hand. Each framework saves the ResNet trunk under its own container and prefix (and
carries heads, momentum encoders, queues and optimiser state beside it). A *layout* below says
where one framework keeps the trunk; the reader tries every layout, keeps the one under which
the file's keys are exactly a torchvision ResNet's (``fc`` aside: a classifier or projector),
and says which it was and what it mapped. No library does this for all of these frameworks
(timm's ``load_checkpoint`` strips ``module.`` only, each framework reads its own files), so it
is written here, from the frameworks' documented key layouts:

* torchvision / timm ResNet: the state dict itself (``conv1.weight``, ``layer1.0.conv1.weight``,
  ``fc.*``); cxrbench's own ``encoder.pth`` is the same without ``fc``;
* PyTorch Lightning (solo-learn; lightly's Lightning examples): ``{"state_dict": {"backbone.*",
  "projector.*", "momentum_backbone.*", ...}, "pytorch-lightning_version": ...}``;
* lightly models: a module's state dict with ``backbone.*``, either torchvision names or
  lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` numbering (``backbone.0.weight`` is
  ``conv1.weight``, ``backbone.4.*`` is ``layer1.*``);
* mmselfsup / mmpretrain: ``{"meta": ..., "state_dict": {"backbone.*", "neck.*", "head.*"}}``;
* official MoCo v1/v2: ``{"state_dict": {"module.encoder_q.*", "module.encoder_k.*",
  "module.queue", ...}}`` (``encoder_q.fc`` is the MLP head); official DenseCL (OpenSelfSup):
  ``encoder_q.0.*`` (and ``backbone.*``) in ``state_dict``;
* official SimSiam: ``{"state_dict": {"module.encoder.*", "module.predictor.*"}}``
  (``encoder.fc`` is the projector);
* a ``module.`` prefix (DistributedDataParallel) before any of these.

The file is read with ``torch.load(weights_only=True)``: never unpickled as code.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

# the backbones a checkpoint may hold, by their torchvision constructor
BACKBONES = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}
# lightly's nn.Sequential(*list(resnet.children())[:-1]) numbers the children of a torchvision ResNet
SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


class CheckpointError(ValueError):
    """A checkpoint that does not hold exactly one known ResNet trunk; the message is one line."""


@dataclass(frozen=True)
class Layout:
    """Where one framework keeps the ResNet trunk: the top-level key holding the weights (None:
    the file is the state dict), the prefix of the trunk's keys there, and whether the trunk is
    numbered as lightly's ``nn.Sequential`` of a ResNet's children."""

    name: str
    container: str | None
    prefix: str
    sequential: bool = False
    # a top-level key that marks the framework (e.g. Lightning's version); None: any file
    marker: str | None = None


LAYOUTS = (
    Layout("torchvision/timm ResNet state dict", None, ""),
    Layout("lightly model (backbone.)", None, "backbone."),
    Layout("lightly model (backbone as nn.Sequential of the ResNet's children)", None, "backbone.", sequential=True),
    Layout("PyTorch Lightning checkpoint (solo-learn, lightly)", "state_dict", "backbone.", marker="pytorch-lightning_version"),
    Layout("PyTorch Lightning checkpoint (lightly, backbone as nn.Sequential)", "state_dict", "backbone.", sequential=True,
           marker="pytorch-lightning_version"),
    Layout("mmselfsup/mmpretrain checkpoint", "state_dict", "backbone.", marker="meta"),
    Layout("official MoCo v1/v2 checkpoint (encoder_q)", "state_dict", "encoder_q."),
    Layout("official DenseCL (OpenSelfSup) checkpoint (encoder_q.0)", "state_dict", "encoder_q.0."),
    Layout("official SimSiam checkpoint (encoder)", "state_dict", "encoder."),
    Layout("state dict under 'state_dict'", "state_dict", ""),
    Layout("state dict under 'state_dict' (backbone.)", "state_dict", "backbone."),
    Layout("state dict under 'model'", "model", ""),
)


@dataclass
class LoadedEncoder:
    """A checkpoint's trunk as a torchvision state dict (no ``fc``), and how it was found."""

    state_dict: dict[str, torch.Tensor]
    backbone: str
    format: str
    sha256: str
    # what was done to the keys: the prefix removed, the renaming, what was left aside
    mapping: dict = field(default_factory=dict)


def backbone_keys(backbone: str) -> dict[str, tuple[int, ...]]:
    """Every key of a torchvision ResNet's trunk (no ``fc``) with its tensor's shape."""
    model = BACKBONES[backbone](weights=None)
    return {key: tuple(value.shape) for key, value in model.state_dict().items() if not key.startswith("fc.")}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict:
    """The file's top-level dict, read as weights only; every failure is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected an encoder checkpoint)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = (str(error).strip().splitlines() or ["unpickling refused"])[0]
        raise CheckpointError(f"{path}: holds objects other than tensors and plain containers, which are never unpickled "
                              f"here ({reason[:160]}); save its state dict alone (torch.save(checkpoint['state_dict'], "
                              f"FILE) where you trust it) and pass that file") from None
    except Exception as error:  # a truncated or foreign file: torch raises several kinds
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {reason[:160]})") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, expected a dict of tensors (a state dict or a checkpoint)")
    return loaded


def _candidate(layout: Layout, top: dict, ddp: bool) -> tuple[dict, list[str]] | None:
    """The trunk's keys under ``layout`` (renamed to torchvision's) and the keys it leaves over
    under its prefix (which must not exist), or None where the layout does not apply."""
    if layout.marker is not None and layout.marker not in top:
        return None
    weights = top if layout.container is None else top.get(layout.container)
    if not isinstance(weights, dict):
        return None
    prefix = ("module." if ddp else "") + layout.prefix
    trunk = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(value, torch.Tensor):
            continue
        name = key[len(prefix):]
        if layout.sequential:
            head, _, rest = name.partition(".")
            if head not in SEQUENTIAL_CHILDREN:
                trunk[name] = value  # left over: not a child that holds weights
                continue
            name = f"{SEQUENTIAL_CHILDREN[head]}.{rest}"
        trunk[name] = value
    return trunk, prefix


def _fit(trunk: dict, backbone: str) -> tuple[int, list[str], list[str], list[str]]:
    """How many trunk keys fit (name and shape); the missing ones, the left-over ones and those of
    the wrong shape, for one backbone.
    ``fc.*`` (a classifier or projector) is set aside; BatchNorm's ``num_batches_tracked`` may be
    absent (several frameworks drop it)."""
    expected = backbone_keys(backbone)
    present = {key: value for key, value in trunk.items() if not key.startswith("fc.")}
    missing = [key for key in expected if key not in present and not key.endswith("num_batches_tracked")]
    extra = [key for key in present if key not in expected]
    wrong = [key for key in expected if key in present and tuple(present[key].shape) != expected[key]]
    fitting = sum(1 for key in expected if key in present and tuple(present[key].shape) == expected[key])
    return fitting, missing, extra, wrong


def load_encoder_checkpoint(path: str | Path) -> LoadedEncoder:
    """The ResNet trunk of ``path`` in any layout above, exactly: a missing or left-over trunk key
    is an error naming the layout it matched best and the first keys that did not fit."""
    path = Path(path)
    top = read_checkpoint(path)
    best = None  # (matched keys, layout name, backbone, missing, extra, wrong)
    for ddp in (False, True):
        for layout in LAYOUTS:
            candidate = _candidate(layout, top, ddp)
            if candidate is None:
                continue
            trunk, prefix = candidate
            for backbone in BACKBONES:
                matched, missing, extra, wrong = _fit(trunk, backbone)
                name = layout.name + (" with a DistributedDataParallel 'module.' prefix" if ddp else "")
                if not missing and not extra and not wrong and matched > 0:
                    state = _complete(trunk, backbone)
                    set_aside = sorted(key for key in trunk if key.startswith("fc."))
                    return LoadedEncoder(
                        state_dict=state, backbone=backbone,
                        format=_refined_name(layout, name, set_aside), sha256=sha256_of(path),
                        mapping={"path": str(path), "container": layout.container, "prefix_removed": prefix,
                                 "renamed": "lightly nn.Sequential children -> torchvision names" if layout.sequential else None,
                                 "set_aside": _summarise(set_aside + _outside(top, layout, prefix)),
                                 "trunk_keys": len(state)})
                if best is None or matched > best[0]:
                    best = (matched, name, backbone, missing, extra, wrong)
    tried = "; ".join(layout.name for layout in LAYOUTS)
    if best is None or best[0] == 0:
        raise CheckpointError(f"{path}: no ResNet-18 or ResNet-50 trunk found in any known layout (tried: {tried}; each "
                              f"also with a 'module.' prefix); first keys of the file: {_first_keys(top)}")
    _, name, backbone, missing, extra, wrong = best
    problems = [f"{len(missing)} trunk key(s) missing, first {missing[:3]}" if missing else "",
                f"{len(extra)} key(s) left over under the trunk's prefix, first {extra[:3]}" if extra else "",
                f"{len(wrong)} of the wrong shape, first {wrong[:3]}" if wrong else ""]
    raise CheckpointError(f"{path}: matched best as a {backbone} in the layout '{name}', but not exactly: "
                          + "; ".join(p for p in problems if p))


def _complete(trunk: dict, backbone: str) -> dict[str, torch.Tensor]:
    """The trunk in torchvision's key order, float32, with any ``num_batches_tracked`` a framework
    dropped filled in as 0 (it only steers BatchNorm's momentum when it is None)."""
    expected = backbone_keys(backbone)
    state = {}
    for key in expected:
        value = trunk.get(key)
        if value is None:  # num_batches_tracked only: _fit made sure of it
            value = torch.tensor(0, dtype=torch.long)
        state[key] = value.detach().clone().float() if value.is_floating_point() else value.detach().clone()
    return state


def _refined_name(layout: Layout, name: str, set_aside: list[str]) -> str:
    if layout.container is None and layout.prefix == "" and not set_aside:
        return name.replace("torchvision/timm ResNet state dict", "cxrbench encoder.pth (a torchvision ResNet state dict without fc)")
    return name


def _outside(top: dict, layout: Layout, prefix: str) -> list[str]:
    weights = top if layout.container is None else top[layout.container]
    return [str(key) for key in weights if not str(key).startswith(prefix)]


def _summarise(keys: list[str]) -> str:
    """'N keys: a.*, b.*' by their first two name parts, for the record."""
    groups = sorted({".".join(key.split(".")[:2]) for key in keys})
    return f"{len(keys)} key(s): " + ", ".join(groups[:8]) + (" ..." if len(groups) > 8 else "") if keys else "none"


def _first_keys(top: dict) -> list[str]:
    keys = [str(key) for key in top][:3]
    for container in ("state_dict", "model"):
        if isinstance(top.get(container), dict):
            keys += [f"{container}.{key}" for key in list(top[container])[:3]]
    return keys
