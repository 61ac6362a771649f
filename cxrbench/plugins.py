"""Plugin discovery shared by the three registries (methods, protocols, datasets).

A package extends cxrbench without touching it by declaring entry points in the groups
``cxrbench.methods``, ``cxrbench.protocols`` and ``cxrbench.datasets``::

    [project.entry-points."cxrbench.datasets"]
    my-site = "my_package.site:MySite"

The entry point's name is the registered name. Each registry decides what it accepts (a class
of the right kind, an object with the right attributes); a plugin that fails to import or is
refused is a warning naming it, never an error that takes the suite down. ``bench list`` shows
every registered name with its origin ("built-in" or the distribution it came from).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any, Callable


def load_entry_points(group: str, kind: str, accept: Callable[[str, Any, str], str | None]) -> None:
    """Load every entry point of ``group`` and hand (name, loaded object, origin) to ``accept``,
    which registers it or returns why it cannot (then a warning says so)."""
    for entry_point in importlib.metadata.entry_points(group=group):
        origin = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            loaded = entry_point.load()
            refusal = accept(entry_point.name, loaded, origin)
        except Exception as error:  # a plugin must never take the whole suite down
            warnings.warn(f"cxrbench: plugin {kind} {entry_point.name!r} from {origin} failed to load: {error}")
            continue
        if refusal:
            warnings.warn(f"cxrbench: plugin {kind} {entry_point.name!r} from {origin} {refusal}; not loaded")


class EntryPointGroup:
    """An entry-point group loaded once, when a registry is first asked (``load`` is idempotent)."""

    def __init__(self, group: str, kind: str, accept: Callable[[str, Any, str], str | None]):
        self.group, self.kind, self.accept = group, kind, accept
        self.loaded = False

    def load(self) -> None:
        if not self.loaded:
            self.loaded = True
            load_entry_points(self.group, self.kind, self.accept)
