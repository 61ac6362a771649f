"""Where a record came from: package versions, machine, commit and device."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

TRACKED_PACKAGES = ("cxrbench", "torch", "torchvision", "lightly", "mmengine", "numpy", "pandas", "scikit-learn")


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment(device) -> dict:
    """The provenance stored in every record (``device`` a torch.device)."""
    import torch  # here: reading records never needs torch

    versions = {}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
    }
