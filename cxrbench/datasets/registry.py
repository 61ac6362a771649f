"""Registry of dataset sources (mmengine Registry), built-in and from plugins.

A package adds a dataset source through the entry-point group ``cxrbench.datasets``: its object
is a class with ``description``, ``task`` and ``load(data_settings) -> PreparedDataset`` (see
``phantom_sources.py`` and ``real/sources.py``); the entry point's name is the dataset's name.
"""

from __future__ import annotations

import inspect

from mmengine.registry import Registry

from cxrbench.plugins import EntryPointGroup

DATASETS = Registry("cxrbench dataset")

# name -> where the dataset came from ("built-in" or a distribution name)
DATASET_ORIGINS: dict[str, str] = {}


def register_dataset(name: str, origin: str = "built-in"):
    """Class decorator: register a dataset source under ``name``."""

    def decorate(cls):
        DATASETS.register_module(name=name, module=cls)
        DATASET_ORIGINS[name] = origin
        cls.name = name
        return cls

    return decorate


ENTRY_POINT_GROUP = "cxrbench.datasets"


def load_plugins() -> None:
    """Register every ``cxrbench.datasets`` entry point once (at ``cxrbench.datasets``' import)."""
    PLUGINS.load()


def _accept_plugin(name: str, loaded, origin: str) -> str | None:
    if not inspect.isclass(loaded) or not callable(getattr(loaded, "load", None)):
        return "is not a dataset source class (a class with load(data_settings))"
    if name in DATASETS.module_dict:
        return f"has the name of a {DATASET_ORIGINS[name]} dataset"
    register_dataset(name, origin=origin)(loaded)
    return None


PLUGINS = EntryPointGroup(ENTRY_POINT_GROUP, "dataset", _accept_plugin)


def available_datasets() -> list[str]:
    return sorted(DATASETS.module_dict)
