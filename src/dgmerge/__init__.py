"""dgmerge: domain generalization by harmonizing and merging source models."""

__version__ = "0.1.0"
