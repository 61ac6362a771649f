"""The method registry and plugin discovery.

Built-in methods register with the ``@register_method`` decorator. Third-party packages add
methods without touching this repository by declaring an entry point in the group
``cxrbench.methods``::

    [project.entry-points."cxrbench.methods"]
    my-method = "my_package.my_method:MyMethod"

The entry point's name is the method's name; its object is a ``Method`` subclass (or a
module that registers its methods itself when imported).
"""

from __future__ import annotations

import inspect

from cxrbench.plugins import Registry


def _with_display_name(name: str, cls):
    if not cls.display_name:
        cls.display_name = name
    return cls


METHODS = Registry("method", "cxrbench.methods",
                   refuse=lambda obj: None if inspect.isclass(obj) else "is not a Method subclass",
                   prepare=_with_display_name)
# name -> "built-in" or the distribution (pip package) it came from
METHOD_ORIGINS = METHODS.origins

# a name that --methods expands to several methods, e.g. "optiml-ablation"
METHOD_GROUPS: dict[str, list[str]] = {}


def register_method(name: str, origin: str = "built-in"):
    """Class decorator: register a ``Method`` subclass under ``name``."""
    return METHODS.register(name, origin)


def register_method_group(name: str, members: list[str]) -> None:
    METHOD_GROUPS[name] = list(members)


def expand_methods(names: list[str]) -> list[str]:
    """Replace group names by their members, keeping order and dropping repeats."""
    expanded: list[str] = []
    for name in names:
        for member in METHOD_GROUPS.get(name, [name]):
            if member not in expanded:
                expanded.append(member)
    return expanded


def available_methods() -> list[str]:
    """Every registered method, built-in and plugin: baselines first, then by name."""
    return sorted(METHODS, key=lambda name: (not METHODS[name].is_baseline, name))


def get_method(name: str):
    return METHODS[name]
