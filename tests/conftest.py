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
    config.addinivalue_line("markers", "multigpu: needs two GPUs; deselected with a line saying so otherwise")
    config.addinivalue_line("markers", "browser: needs Chromium and Playwright; deselected with a line saying so without them")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where CUDA is present, ``browser`` where Chromium and Playwright
    are; elsewhere they are deselected, so the summary line says how many did not run ("N
    deselected", with a line each saying why) instead of counting them as passed."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    reasons = {"gpu": None if gpus else "CUDA is not available",
               "multigpu": None if gpus >= 2 else f"{gpus} GPU(s), the test needs 2",
               "browser": _browser_missing()}
    for marker, reason in reasons.items():
        if reason is None:
            continue
        chosen = [item for item in items if item.get_closest_marker(marker)]
        if chosen:
            config.hook.pytest_deselected(items=chosen)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]
            _DESELECTED_WHY.append(f"{len(chosen)} {marker} test(s) deselected: {reason}")


def pytest_terminal_summary(terminalreporter):
    for line in _DESELECTED_WHY:
        terminalreporter.write_line(line)


_DESELECTED_WHY: list[str] = []


def _browser_missing() -> str | None:
    import importlib.util
    import shutil

    if shutil.which("chromium") is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    return None
