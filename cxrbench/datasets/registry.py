"""Registry of dataset sources (mmengine Registry), built-in and from plugins."""

from __future__ import annotations

from mmengine.registry import Registry

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


def available_datasets() -> list[str]:
    return sorted(DATASETS.module_dict)
