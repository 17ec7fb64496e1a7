"""What every config schema shares: strict pydantic models and one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


__all__ = ["ConfigError", "StrictModel"]
