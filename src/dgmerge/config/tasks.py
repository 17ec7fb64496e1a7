"""Multi-task experiments (the `tasks:` section): sources with their own label spaces and heads.

Without `tasks:` an experiment is leave-one-domain-out: every cell holds one domain out and
the sources share one label space and head. With it, every cell is a combination of tasks
(Ye et al.'s multi-task setting): each task is a domain of `data.dataset` or a built-in task
(`digits`: scikit-learn's 8×8 digits, no download), split in/out 80/20 like a domain; its
expert trains on the in-split under its own frozen probe head, and it is scored on its
out-split. Nothing is held out of training, so no out-split is ever used to choose a model:
experts keep their final weights.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dgmerge.config.base import StrictModel

BUILTIN_TASKS = ("digits",)


class TasksConfig(StrictModel):
    """Which task combinations to merge, and how much of each out-split to score."""

    combos: list[list[str]] = Field(min_length=1)
    # Score a seeded random subset of at most this many images of each task's out-split (the
    # same subset for every method); None = all of it.
    max_test: int | None = Field(default=None, gt=0)

    @field_validator("combos")
    @classmethod
    def _distinct_pairs_at_least(cls, value: list[list[str]]) -> list[list[str]]:
        for combo in value:
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(f"combo {combo}: give at least two different tasks")
        names = ["+".join(c) for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"combos repeat: {names}")
        return value

    def names(self) -> list[str]:
        """Every task named by some combination, in first-use order."""
        return list(dict.fromkeys(t for combo in self.combos for t in combo))
