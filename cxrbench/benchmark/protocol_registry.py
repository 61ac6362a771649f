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

import inspect

from cxrbench.benchmark.protocols import FinetuneProtocol, FrozenProtocol
from cxrbench.benchmark.segmentation import SegmentationProtocol
from cxrbench.plugins import load_entry_points

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


def _accept_plugin(name: str, loaded, origin: str) -> str | None:
    """Register a protocol (a class is instantiated); or say why it cannot be."""
    protocol = loaded() if inspect.isclass(loaded) else loaded
    missing = [attribute for attribute in ("tasks", "description", "prepare_shared", "run") if not hasattr(protocol, attribute)]
    if missing:
        return f"lacks {missing}"
    if name in PROTOCOLS:
        return f"has the name of a {PROTOCOL_ORIGINS[name]} protocol"
    protocol.name = name
    PROTOCOLS[name] = protocol
    PROTOCOL_ORIGINS[name] = origin
    return None


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


load_entry_points(ENTRY_POINT_GROUP, "protocol", _accept_plugin)
