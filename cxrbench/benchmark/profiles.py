"""Profiles: every setting of a run, as data (``profiles/*.yaml``, read with mmengine Config)."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

PROFILE_DIR = Path(__file__).parent / "profiles"


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict:
    """The resolved profile as a plain dict (what every record stores)."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(name)
    return Config.fromfile(str(path)).to_dict()
