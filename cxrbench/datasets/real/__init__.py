"""Readers of the four released datasets, each in the layout it was published in."""
