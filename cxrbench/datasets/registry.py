"""Registry of dataset sources, built-in and from plugins.

A package adds a dataset source through the entry-point group ``cxrbench.datasets``: its object
is a class with ``description``, ``task`` and ``load(data_settings) -> PreparedDataset`` (see
``phantom_sources.py`` and ``real/sources.py``); the entry point's name is the dataset's name.
"""

from __future__ import annotations

import inspect

from cxrbench.plugins import Registry

DATASETS = Registry(
    "dataset", "cxrbench.datasets",
    refuse=lambda obj: None if inspect.isclass(obj) and callable(getattr(obj, "load", None))
    else "is not a dataset source class (a class with load(data_settings))")

# name -> where the dataset came from ("built-in" or a distribution name)
DATASET_ORIGINS = DATASETS.origins


def register_dataset(name: str, origin: str = "built-in"):
    """Class decorator: register a dataset source under ``name``."""
    return DATASETS.register(name, origin)


def available_datasets() -> list[str]:
    return sorted(DATASETS)
