"""The one registry shape shared by methods, protocols and datasets, and their plugin discovery.

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
import inspect
import warnings
from collections.abc import Iterator, Mapping
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


class Registry(Mapping):
    """Names -> registered objects (method classes, dataset source classes, protocol objects), with
    each one's origin; the group's entry points are loaded the first time the registry is read.

    Built-in entries come through the ``register(name)`` class decorator. A plugin entry point's
    object is checked by ``refuse`` (a reason, or None to accept) and given the entry point's name;
    a plugin module that registers its entries itself when imported is accepted as it is.
    ``prepare(name, obj)`` turns what is registered into what is stored (a protocol class into
    its instance, a method class given its display name).

    Hand-written rather than mmengine's ``Registry``, which the methods and datasets used
    before: that one holds classes and functions only (a protocol is an object), and its scopes
    and build-from-config machinery are unused here.
    """

    def __init__(self, kind: str, group: str, refuse: Callable[[Any], str | None] = lambda obj: None,
                 prepare: Callable[[str, Any], Any] | None = None):
        self.kind, self.group = kind, group
        self._refuse, self._prepare = refuse, prepare
        self._entries: dict[str, Any] = {}
        self.origins: dict[str, str] = {}  # name -> "built-in", a distribution's name, or an encoder file
        self.plugins_loaded = False  # the entry points are read once, the first time the registry is read

    def register(self, name: str, origin: str = "built-in"):
        """Class decorator: register under ``name`` (the class gets ``name``)."""

        def decorate(obj):
            self.add(name, obj, origin)
            return obj

        return decorate

    def add(self, name: str, obj, origin: str = "built-in") -> None:
        obj.name = name
        self._entries[name] = self._prepare(name, obj) if self._prepare else obj
        self.origins[name] = origin

    def remove(self, name: str) -> None:
        """Take an entry out (tests that register a throw-away method)."""
        self._entries.pop(name, None)
        self.origins.pop(name, None)

    def _accept_plugin(self, name: str, loaded, origin: str) -> str | None:
        if inspect.ismodule(loaded):  # it registered its entries when imported
            if name in self._entries:
                self.origins[name] = origin
            return None
        if name in self._entries:
            return f"has the name of a {self.origins[name]} {self.kind}"
        refusal = self._refuse(loaded)
        if refusal:
            return refusal
        self.add(name, loaded, origin)
        return None

    def load_plugins(self) -> None:
        if not self.plugins_loaded:
            self.plugins_loaded = True  # first: a plugin module that reads the registry does not load it again
            load_entry_points(self.group, self.kind, self._accept_plugin)

    def __getitem__(self, name: str):
        self.load_plugins()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __contains__(self, name) -> bool:
        self.load_plugins()
        return name in self._entries
