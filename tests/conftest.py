import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def phantom_cache(tmp_path_factory):
    """One phantom cache for the whole test session, never the user's."""
    cache = tmp_path_factory.mktemp("cxrbench-cache")
    previous = os.environ.get("CXRBENCH_CACHE")
    os.environ["CXRBENCH_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CXRBENCH_CACHE", None)
    else:
        os.environ["CXRBENCH_CACHE"] = previous


@pytest.fixture(scope="session")
def smoke_profile():
    from cxrbench.benchmark.profiles import load_profile

    return load_profile("smoke")


@pytest.fixture(scope="session")
def smoke_nih(smoke_profile, phantom_cache):
    from cxrbench.datasets import DATASETS

    return DATASETS.get("phantom-nih")().load(smoke_profile["data"])


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; deselected (and counted as such in the summary) without it")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where CUDA is present and are deselected elsewhere, so the
    summary line says how many did not run ("N deselected") instead of counting them as passed."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
