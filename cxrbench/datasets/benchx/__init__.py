"""BenchX's published split lists (data files; see README.md)."""
