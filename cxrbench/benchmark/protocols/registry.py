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

from cxrbench.benchmark.protocols.finetune import FinetuneProtocol
from cxrbench.benchmark.protocols.frozen import FrozenProtocol
from cxrbench.benchmark.protocols.segmentation import SegmentationProtocol
from cxrbench.plugins import Registry

REQUIRED = ("tasks", "description", "prepare_shared", "run")  # what the runner asks of a protocol


def _refusal(loaded) -> str | None:
    missing = [attribute for attribute in REQUIRED if not hasattr(loaded, attribute)]
    return f"lacks {missing}" if missing else None


# a plugin's protocol class is instantiated once, when registered
PROTOCOLS = Registry("protocol", "cxrbench.protocols", refuse=_refusal,
                     prepare=lambda name, loaded: loaded() if inspect.isclass(loaded) else loaded)
for _protocol in (FrozenProtocol(), FinetuneProtocol(), SegmentationProtocol()):
    PROTOCOLS.add(_protocol.name, _protocol)
BUILT_IN = ("frozen", "finetune", "segmentation")  # what ``--protocol all`` runs
PROTOCOL_ORIGINS = PROTOCOLS.origins

# methods and protocols that live in plugin packages this repository ships as examples
KNOWN_PLUGINS = {
    "ideal": "the cxrbench-ideal plugin: pip install ./examples/cxrbench-ideal",
    "segmentation-semi": "the cxrbench-ideal plugin: pip install ./examples/cxrbench-ideal",
    "rotnet": "the cxrbench-example plugin: pip install ./examples/cxrbench-example",
}


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

