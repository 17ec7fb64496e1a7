"""Data errors whose messages say what is wrong, with which file, and how to fix it."""

from __future__ import annotations


class DataError(Exception):
    """Base class of every data-layer error."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset directory does not exist."""


class EmptyDomainError(DataError, ValueError):
    """A domain folder holds no images (or the dataset no domains)."""


class UnknownDomainError(DataError, ValueError):
    """A requested domain is not one of the dataset's domains."""


class BadImageError(DataError, RuntimeError):
    """An image file that cannot be opened or decoded."""
