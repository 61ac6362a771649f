"""Dataset sources. Importing this package registers the built-in ones; plugins (``cxrbench.datasets``
entry points) load the first time the registry is read, so none can take a built-in name."""

from cxrbench.datasets import phantom_sources  # noqa: F401  (registers the phantom sites)
from cxrbench.datasets.real import sources  # noqa: F401  (registers nih, vindr, rsna, siim)
from cxrbench.datasets.prepared import PreparedDataset
from cxrbench.datasets.registry import DATASET_ORIGINS, DATASETS, available_datasets

__all__ = ["DATASETS", "DATASET_ORIGINS", "PreparedDataset", "available_datasets"]
