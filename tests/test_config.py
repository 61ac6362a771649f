"""RunConfig: one resolved configuration, every value checked before a run writes anything."""

from __future__ import annotations

import copy
import pickle

import pytest

from cxrbench.benchmark.config import ConfigError, RunConfig
from cxrbench.benchmark.profiles import available_profiles, load_profile


@pytest.mark.parametrize("name", available_profiles())
def test_every_built_in_profile_builds_and_is_stored_unchanged(name):
    profile = load_profile(name)
    config = RunConfig.from_profile(profile)
    assert config.profile == profile  # what run.json and every record store
    assert config.pretrain.batch_size == profile["pretrain"]["batch_size"]
    assert config.evaluation.fractions == tuple(float(f) for f in profile["evaluation"]["fractions"])
    assert config.protocol_settings("frozen") == profile["evaluation"]["frozen"]
    profile["pretrain"]["batch_size"] = 12345  # the config holds its own copy
    assert config.profile["pretrain"]["batch_size"] == load_profile(name)["pretrain"]["batch_size"] != 12345


@pytest.mark.parametrize("key, value, expected", [
    ("evaluation.frozen.learning_rates", [0.1, -0.01], "numbers above 0"),
    ("evaluation.finetune.crop_scale", [0.9, 0.2], "0 < low <= high <= 1"),
    ("evaluation.segmentation.eval_every", 0, "whole number of at least 1"),
    ("evaluation.finetune.patience", 2.5, "whole number of at least 1"),
    ("pretrain.precision", "fp8", "one of fp32, bf16, fp16"),
    ("pretrain.channels_last", "yes", "true or false"),
    ("pretrain.epochs", 0, "above 0"),
    ("data.phantom_patients", {"phantom-nih": 0}, "number of patients"),
    ("evaluation.fractions", [10, 200], "(0, 100]"),
    ("model.backbone", "vit_b_16", "one of"),
])
def test_a_bad_value_anywhere_in_the_profile_is_named(key, value, expected):
    """Not only --set values: a profile file's own values are checked too, each error naming its key."""
    profile = load_profile("smoke")
    node = profile
    *sections, last = key.split(".")
    for section in sections:
        node = node[section]
    node[last] = value
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_profile(profile)
    message = str(caught.value)
    assert key in message and expected in message and "\n" not in message


def test_method_hyperparameters_come_through_the_config():
    profile = load_profile("standard")
    config = RunConfig.from_profile(profile)
    assert config.method_hyperparameters("vicreg").expander_dim == profile["methods"]["vicreg"]["expander_dim"] == 512


def test_the_config_survives_the_trip_to_a_grid_job():
    """submitit pickles a job's arguments: a job must see the same settings as the process that planned it."""
    profile = load_profile("quick")
    profile["encoders"] = {"mine": "/data/mine.pth"}
    config = RunConfig.from_profile(copy.deepcopy(profile))
    again = pickle.loads(pickle.dumps(config))
    assert again == config and again.profile == profile and again.encoders == {"mine": "/data/mine.pth"}
