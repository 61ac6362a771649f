"""The evaluation protocols by name (``bench run --protocol``)."""

from __future__ import annotations

from cxrbench.benchmark.protocols import FinetuneProtocol, FrozenProtocol
from cxrbench.benchmark.segmentation import SegmentationProtocol

PROTOCOLS = {protocol.name: protocol for protocol in (FrozenProtocol(), FinetuneProtocol(), SegmentationProtocol())}
