"""cxrbench: an end-to-end benchmark suite for self-supervised learning on chest X-rays."""

__version__ = "0.1.0"
