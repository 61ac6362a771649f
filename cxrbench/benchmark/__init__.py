"""The benchmark: CLI, profiles, pretraining, protocols, run records."""
