"""Errors a run reports in one line with exit 1 (not usage errors: the message says what to do).

Kept in a module without heavy imports, so that the CLI can name them before torch loads.
"""


class StoredEncoderError(RuntimeError):
    """A stored encoder or its record that cannot be read."""
