"""Encoder rows: an encoder trained elsewhere, read from its checkpoint file, as a table row.

``bench run --encoder NAME=PATH`` (or a profile's ``encoders: {NAME: PATH}``) adds a row NAME
that is not pretrained here: every protocol starts from the trunk found in PATH
(``checkpoints.load_encoder_checkpoint`` recognises the framework from the file's keys). The
row's record stores the file's SHA-256, the format recognised and the key mapping applied
(``provenance``), so a table row can always be traced to the exact file.

Faithfulness record
===================
Nothing is trained by this row, so there is no recipe to follow: the weights are the file's,
key for key (features of fixed images equal those of a torchvision ResNet given the same
weights; ``tests/test_external_encoders.py``). BatchNorm running statistics come from the file
(and are re-estimated on the dataset by the frozen probe, as for every row).
"""

from __future__ import annotations

import re
from dataclasses import make_dataclass
from pathlib import Path
from typing import ClassVar

import torch

from cxrbench.methods.base import Method
from cxrbench.methods.checkpoints import CheckpointError, LoadedEncoder, load_encoder_checkpoint
from cxrbench.methods.registry import METHODS, register_method

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")


class EncoderRow(Method):
    """Base of every encoder row; a subclass per NAME=PATH is made by ``register_encoder_rows``."""

    description = "an encoder read from a checkpoint file (not pretrained here)"
    pretrains = False
    listed_in_all = False  # `--methods all` is the registry's methods; encoder rows are named
    loaded: ClassVar[LoadedEncoder | None] = None

    def __init__(self, hyperparameters=None, backbone: str | None = None):
        super().__init__(hyperparameters, backbone)
        loaded = self.loaded or load_encoder_checkpoint(self.hparams.path)
        with torch.no_grad():
            self.encoder.load_state_dict(loaded.state_dict, strict=False)  # fc is the identity here

    @classmethod
    def trunk(cls, requested: str | None) -> str:
        return cls.backbone  # the file's, whatever the run's model.backbone: the row is that checkpoint

    @classmethod
    def provenance(cls) -> dict:
        loaded = cls.loaded
        return {"path": str(cls.Hyperparameters().path), "sha256": loaded.sha256, "format": loaded.format,
                "backbone": loaded.backbone, "key_mapping": loaded.mapping}


def register_encoder_rows(encoders: dict | None) -> list[str]:
    """Register a row per ``{NAME: PATH}`` (reading each file once now, so that a bad file is a
    one-line error before anything runs); returns the names. A name already taken by a method
    other than the same encoder row is refused."""
    names = []
    for name, path in (encoders or {}).items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise CheckpointError(f"encoder row name {name!r}: expected lower-case letters, digits, '-', '_' or '.' "
                                  f"(at most 40), starting with a letter or digit")
        path = str(Path(path).expanduser().resolve())
        existing = METHODS.get(name)
        if existing is not None and not (issubclass(existing, EncoderRow) and existing.Hyperparameters().path == path):
            raise CheckpointError(f"encoder row name {name!r} is already a method's name; choose another")
        if existing is None:
            loaded = load_encoder_checkpoint(path)
            hyperparameters = make_dataclass(f"{name}_file", [("path", str, path)])
            row = type(f"EncoderRow_{name}", (EncoderRow,), {"display_name": name, "Hyperparameters": hyperparameters,
                                                               "loaded": loaded, "backbone": loaded.backbone})
            register_method(name, origin=f"encoder file {path}")(row)
        names.append(name)
    return names

