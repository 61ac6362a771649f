"""Profiles: every setting of a run, as data (``profiles/*.yaml``, read with mmengine Config)."""

from __future__ import annotations

from pathlib import Path

import yaml
from mmengine.config import Config

from cxrbench.benchmark.pretraining.loop import AUGMENT_ON, PRECISIONS
from cxrbench.methods.backbone import BACKBONES

PROFILE_DIR = Path(__file__).parent / "profiles"


def method_hyperparameters(profile: dict, name: str):
    """A method's hyperparameters under a profile (its own ``methods:`` entry, or its parent's)."""
    from cxrbench.methods import get_method  # here: the profile files load without the method registry

    cls = get_method(name)
    overrides = {**cls.profile_overrides.get(profile.get("name"), {}), **(profile.get("methods", {}).get(cls.profile_key or name) or {})}
    return cls.resolve_hyperparameters(overrides)


def run_backbone(profile: dict) -> str:
    """The run's trunk, ``model.backbone`` (ResNet-18 in run folders made before the key existed)."""
    return (profile.get("model") or {}).get("backbone", "resnet18")


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
        value = _yaml_value(text)
        if parts[0] != "methods":  # a method checks its own hyperparameters (resolve_hyperparameters)
            _check_value(key, node.get(parts[-1]), value)
        node[parts[-1]] = value
    return profile


def _yaml_value(text: str):
    """``text`` parsed as YAML, except that ``1e-5`` is the number a user means (YAML 1.1,
    which PyYAML follows, reads an exponent without a dot as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in {"nan", "inf", "-inf", "+inf", "infinity"} else value
        except ValueError:
            return value
    return value


# The range of each profile value, by its key's name (the same name means the same kind of value
# in every section). ``setting_problem`` checks one value; RunConfig checks the whole profile.
COUNTS = {"batch_size", "max_steps", "eval_every", "image_size", "bootstrap_resamples", "patience", "phantom_seed", "max_heatmaps"}
# keys that must be above 0 (counts aside): durations and rates
POSITIVE = {"epochs", "learning_rate"}
NON_NEGATIVE = {"weight_decay", "phantom_seed"}
CHOICES = {"backbone": tuple(BACKBONES), "precision": tuple(PRECISIONS), "augment_on": AUGMENT_ON}
FLAGS = {"channels_last", "sync_batchnorm"}  # true or false
NULLABLE = {"max_steps", "patience", "root"}  # null: no step cap, no early stopping, no data root
NUMBER_LISTS = {"learning_rates": "numbers above 0", "fractions": "percentages in (0, 100]", "seeds": "whole numbers of at least 0"}
NAME_LISTS = {"datasets"}  # dataset names (which exist is checked against the registry when a run starts)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _is_whole(value, minimum: int) -> bool:
    return _is_number(value) and value == int(value) and value >= minimum


def setting_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for a profile key called ``name`` ("expected ..."), or None."""
    if value is None:
        return None if name in NULLABLE else "expected a value (null is not allowed here)"
    if name in CHOICES and value not in CHOICES[name]:
        return f"expected one of {', '.join(CHOICES[name])}"
    if name in FLAGS and not isinstance(value, bool):
        return "expected true or false"
    if name in COUNTS and not _is_whole(value, 0 if name in NON_NEGATIVE else 1):
        return f"expected a whole number of at least {0 if name in NON_NEGATIVE else 1}"
    if name in POSITIVE and (not _is_number(value) or value <= 0):
        return "expected a number above 0"
    if name in NON_NEGATIVE and (not _is_number(value) or value < 0):
        return "expected a number of at least 0"
    if name in NUMBER_LISTS:
        valid = {"learning_rates": lambda v: _is_number(v) and v > 0, "fractions": lambda v: _is_number(v) and 0 < v <= 100,
                 "seeds": lambda v: _is_whole(v, 0)}[name]
        if not isinstance(value, list) or not value or not all(valid(item) for item in value):
            return f"expected a non-empty list of {NUMBER_LISTS[name]}"
    if name in NAME_LISTS and (not isinstance(value, list) or not all(isinstance(item, str) for item in value)):
        return "expected a list of names"
    if name == "crop_scale" and not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
                                     and 0 < value[0] <= value[1] <= 1):
        return "expected [low, high] with 0 < low <= high <= 1"
    if name == "phantom_patients" and not (isinstance(value, dict) and all(_is_whole(v, 1) for v in value.values())):
        return "expected dataset: number of patients (whole numbers of at least 1)"
    return None


def _check_value(key: str, current, value) -> None:
    """A ``--set`` value of the same kind as the profile's (numbers for numbers, lists for lists...)
    and in range: one clear error before anything is written."""
    name = key.rsplit(".", 1)[-1]
    if value is None and name in NULLABLE:
        return
    if current is not None:
        if _is_number(current):
            if not _is_number(value):
                raise ValueError(f"--set {key}={value!r}: expected a number")
        elif isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"--set {key}={value!r}: expected true or false")
        elif isinstance(current, (list, dict, str)) and not isinstance(value, type(current)):
            raise ValueError(f"--set {key}={value!r}: expected a {type(current).__name__} like {current!r}")
    problem = setting_problem(name, value) if value is not None else None
    if problem:
        raise ValueError(f"--set {key}={value!r}: {problem}")
