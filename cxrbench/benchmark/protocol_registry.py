"""The evaluation protocols by name (``bench run --protocol``), built-in and from plugins.

A package adds a protocol without touching cxrbench through the entry-point group
``cxrbench.protocols``::

    [project.entry-points."cxrbench.protocols"]
    segmentation-semi = "my_package.protocol:MyProtocol"

A protocol object has ``name``, ``tasks`` (the dataset tasks it accepts), ``description``,
``prepare_shared(encoder_state, dataset, device)`` and ``run(encoder_state, dataset,
label_fraction, seed, config, device, shared) -> ProtocolResult``. Its settings come from the
profile's ``evaluation.<name>`` section, or else from its ``default_config[profile name]``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import warnings

from cxrbench.benchmark.protocols import FinetuneProtocol, FrozenProtocol
from cxrbench.benchmark.segmentation import SegmentationProtocol

PROTOCOLS = {protocol.name: protocol for protocol in (FrozenProtocol(), FinetuneProtocol(), SegmentationProtocol())}
BUILT_IN = tuple(PROTOCOLS)  # what ``--protocol all`` runs
PROTOCOL_ORIGINS = {name: "built-in" for name in PROTOCOLS}
ENTRY_POINT_GROUP = "cxrbench.protocols"

# methods and protocols that live in plugin packages this repository ships as examples
KNOWN_PLUGINS = {
    "ideal": "the cxrbench-ideal plugin: pip install ./examples/cxrbench-ideal",
    "segmentation-semi": "the cxrbench-ideal plugin: pip install ./examples/cxrbench-ideal",
    "rotnet": "the cxrbench-example plugin: pip install ./examples/cxrbench-example",
}


def _load_plugins() -> None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            loaded = entry_point.load()
            protocol = loaded() if inspect.isclass(loaded) else loaded
        except Exception as error:  # a plugin must never take the whole suite down
            warnings.warn(f"cxrbench: plugin protocol {entry_point.name!r} from {origin} failed to load: {error}")
            continue
        missing = [attribute for attribute in ("tasks", "description", "prepare_shared", "run") if not hasattr(protocol, attribute)]
        if missing:
            warnings.warn(f"cxrbench: plugin protocol {entry_point.name!r} from {origin} lacks {missing}; not loaded")
        elif entry_point.name in PROTOCOLS:
            warnings.warn(f"cxrbench: plugin protocol {entry_point.name!r} from {origin} has the name of a "
                          f"{PROTOCOL_ORIGINS[entry_point.name]} protocol; ignored")
        else:
            protocol.name = entry_point.name
            PROTOCOLS[entry_point.name] = protocol
            PROTOCOL_ORIGINS[entry_point.name] = origin


def protocol_config(profile: dict, name: str) -> dict:
    """A protocol's settings: the profile's section, else the protocol's own default for the profile."""
    section = profile.get("evaluation", {}).get(name)
    if section is not None:
        return section
    defaults = getattr(PROTOCOLS[name], "default_config", {})
    if profile.get("name") in defaults:
        return defaults[profile["name"]]
    raise KeyError(f"protocol {name!r} has no settings for profile {profile.get('name')!r} "
                   f"(add evaluation.{name} to the profile)")


_load_plugins()
