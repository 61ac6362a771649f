"""The benchmark: CLI, profiles, the plan, pretraining, protocols, the runner and the grid dispatcher (records: cxrbench.records)."""
