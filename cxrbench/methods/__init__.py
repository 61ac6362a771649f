"""Methods. Importing this package registers the built-in ones; plugins load on first use."""

from cxrbench.methods import byol, densecl, mocov2, optiml, pcrlv2, simclr, simsiam, supervised, vicreg  # noqa: F401  (registration)
from cxrbench.methods.base import Method
from cxrbench.methods.registry import (
    METHOD_GROUPS,
    METHOD_ORIGINS,
    METHODS,
    available_methods,
    expand_methods,
    get_method,
    register_method,
)

__all__ = ["METHODS", "METHOD_GROUPS", "METHOD_ORIGINS", "Method", "available_methods", "expand_methods", "get_method",
           "register_method"]
