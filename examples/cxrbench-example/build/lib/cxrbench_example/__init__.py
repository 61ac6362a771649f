"""Example cxrbench plugin: RotNet (rotation prediction) as a pretraining method."""
