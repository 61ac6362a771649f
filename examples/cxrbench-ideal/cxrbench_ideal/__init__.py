"""IDEAL as a cxrbench plugin: the ``ideal`` method and the ``segmentation-semi`` protocol."""
