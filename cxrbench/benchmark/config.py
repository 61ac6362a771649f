"""The run's configuration, resolved once: ``RunConfig``.

A run's settings come from a profile file (``profiles/*.yaml``), then ``--set KEY=VALUE``, then
the flags that set profile values (``--backbone``, ``--precision``, ``--data-root`` ...). The CLI
applies them to the profile, then builds one ``RunConfig`` from the result: every value's type
and range is checked there, before anything is written, and the error names the key. The runner,
the plan, the grid's jobs and ``bench speed`` take the ``RunConfig``; a method's hyperparameters
and a protocol's settings are read through it. ``run.json`` and every record store its
``profile``, the resolved dict, whole.

Why dataclasses and not pydantic: the profile is a small tree of plain values whose checks are a
type and a range per key name (``profiles.setting_problem``), and methods check their own
hyperparameters; a schema library would add a dependency and its own error wording for that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from cxrbench.benchmark.pretraining.loop import TrainingOptions
from cxrbench.benchmark.profiles import method_hyperparameters, run_backbone, setting_problem

# sections whose values are checked elsewhere or are not settings: a method checks its own
# hyperparameters; encoder rows are checked when their files load; Grad-CAM's panel is a sub-table
_CHECKED_ELSEWHERE = {"methods", "encoders", "gradcam", "name", "description"}


class ConfigError(ValueError):
    """A profile value of the wrong type or out of range (the message names the key)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``: in the
    process that trains (a grid job resolves it on its own node; a login node has no GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class PretrainSettings:
    dataset: str
    batch_size: int
    epochs: float
    max_steps: int | None
    seed: int
    options: TrainingOptions  # how the steps run: precision, channels-last, SyncBN, where views are made


@dataclass(frozen=True)
class EvaluationSettings:
    datasets: tuple[str, ...]  # the classification datasets of a protocol without its own list
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    bootstrap_resamples: int


@dataclass(frozen=True)
class RunConfig:
    """One run's settings, checked. Build it with ``from_profile``; never change ``profile`` after."""

    profile: dict  # the resolved profile, whole, as run.json and every record store it
    name: str
    backbone: str  # the trunk every method pretrains and every protocol evaluates
    data: dict  # handed to the dataset sources as it is (root, image size, phantom settings)
    pretrain: PretrainSettings
    evaluation: EvaluationSettings

    @classmethod
    def from_profile(cls, profile: dict) -> RunConfig:
        """Check every value of ``profile`` (raises ConfigError naming the first bad key) and build the config."""
        profile = copy.deepcopy(profile)
        for key, value in _settings(profile):
            problem = setting_problem(key.rsplit(".", 1)[-1], value)
            if problem:
                raise ConfigError(f"profile {profile.get('name', '?')!r}: {key}={value!r}: {problem}")
        pretrain, evaluation = profile["pretrain"], profile["evaluation"]
        try:
            options = TrainingOptions.from_settings(pretrain)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(
            profile=profile, name=profile["name"], backbone=run_backbone(profile), data=profile["data"],
            pretrain=PretrainSettings(dataset=pretrain["dataset"], batch_size=int(pretrain["batch_size"]),
                                      epochs=float(pretrain["epochs"]), max_steps=pretrain.get("max_steps"),
                                      seed=int(pretrain.get("seed", 0)), options=options),
            evaluation=EvaluationSettings(datasets=tuple(evaluation["datasets"]),
                                          fractions=tuple(float(f) for f in evaluation["fractions"]),
                                          seeds=tuple(int(s) for s in evaluation["seeds"]),
                                          bootstrap_resamples=int(evaluation.get("bootstrap_resamples", 1000))),
        )

    @property
    def encoders(self) -> dict[str, str]:
        """``--encoder NAME=PATH`` rows stored with the profile (every grid job registers them)."""
        return dict(self.profile.get("encoders") or {})

    def method_hyperparameters(self, name: str):
        """A method's hyperparameters under this profile, checked by the method."""
        return method_hyperparameters(self.profile, name)

    def protocol_settings(self, name: str) -> dict:
        """A protocol's settings: the profile's ``evaluation.<name>`` section, else the protocol's
        own default for this profile (a plugin protocol may bring one)."""
        from cxrbench.benchmark.protocols.registry import protocol_config  # the registry loads plugins

        return protocol_config(self.profile, name)


def _settings(node: dict, prefix: str = ""):
    """(dotted key, value) of every setting in the profile, sections flattened."""
    for key, value in node.items():
        if key in _CHECKED_ELSEWHERE:
            continue
        if isinstance(value, dict) and key != "phantom_patients":
            yield from _settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
