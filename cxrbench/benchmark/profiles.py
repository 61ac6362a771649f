"""Profiles: every setting of a run, as data (``profiles/*.yaml``, read with mmengine Config)."""

from __future__ import annotations

from pathlib import Path

import yaml
from mmengine.config import Config

PROFILE_DIR = Path(__file__).parent / "profiles"


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """The resolved profile as a plain dict (what every record stores)."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(name)
    return Config.fromfile(str(path)).to_dict()


def apply_overrides(profile: dict, assignments: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a loaded profile.

    Only keys that exist in the profile can be set, except inside ``methods``, where a
    method's hyperparameters are checked by the method itself.
    """
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key:
            raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. pretrain.epochs=30")
        parts = key.split(".")
        node = profile
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or (part not in node and parts[0] != "methods"):
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
                raise ValueError(f"--set {key}: unknown profile key {'.'.join(parts[:depth + 1])!r}; valid here: {valid}")
            node = node.setdefault(part, {})
        if not isinstance(node, dict) or (parts[-1] not in node and parts[0] != "methods"):
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
            raise ValueError(f"--set {key}: unknown profile key {key!r}; valid here: {valid}")
        node[parts[-1]] = yaml.safe_load(text)
    return profile
