"""The method registry (mmengine Registry) and plugin discovery.

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

from mmengine.registry import Registry

from cxrbench.plugins import EntryPointGroup

METHODS = Registry("cxrbench method")
# name -> "built-in" or the distribution (pip package) it came from
METHOD_ORIGINS: dict[str, str] = {}

# a name that --methods expands to several methods, e.g. "optiml-ablation"
METHOD_GROUPS: dict[str, list[str]] = {}

ENTRY_POINT_GROUP = "cxrbench.methods"


def register_method(name: str, origin: str = "built-in"):
    """Class decorator: register a ``Method`` subclass under ``name``."""

    def decorate(cls):
        cls.name = name
        if not cls.display_name:
            cls.display_name = name
        METHODS.register_module(name=name, module=cls, force=origin != "built-in")
        METHOD_ORIGINS[name] = origin
        return cls

    return decorate


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


def load_plugins() -> None:
    """Import every ``cxrbench.methods`` entry point once; a broken plugin is a warning."""
    PLUGINS.load()


def _accept_plugin(name: str, loaded, origin: str) -> None:
    """A class is registered under the entry point's name; a module registered its methods when imported."""
    if inspect.isclass(loaded) and name not in METHODS.module_dict:
        register_method(name, origin=origin)(loaded)
    elif name in METHOD_ORIGINS:
        METHOD_ORIGINS[name] = origin


PLUGINS = EntryPointGroup(ENTRY_POINT_GROUP, "method", _accept_plugin)


def available_methods() -> list[str]:
    """Every registered method, built-in and plugin: baselines first, then by name."""
    load_plugins()
    return sorted(METHODS.module_dict, key=lambda name: (not METHODS.get(name).is_baseline, name))


def get_method(name: str):
    load_plugins()
    cls = METHODS.get(name)
    if cls is None:
        raise KeyError(name)
    return cls
