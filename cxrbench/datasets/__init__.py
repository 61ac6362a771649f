"""Dataset sources. Importing this package registers the built-in ones, then the plugins' (``cxrbench.datasets`` entry points)."""

from cxrbench.datasets import phantom_sources  # noqa: F401  (registers the phantom sites)
from cxrbench.datasets.real import sources  # noqa: F401  (registers nih, vindr, rsna, siim)
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.datasets.registry import DATASET_ORIGINS, DATASETS, available_datasets, load_plugins

load_plugins()  # after the built-in ones: a plugin cannot take a built-in dataset's name

__all__ = ["DATASETS", "DATASET_ORIGINS", "PreparedDataset", "available_datasets"]
