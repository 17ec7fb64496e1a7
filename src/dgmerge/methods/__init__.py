"""Experiment methods: each one file with a registered `run(cell) -> rows`.

Importing this package registers every method; `experiments()` lists them. To add one,
write `methods/<name>.py` with a function decorated by `@register_experiment(...)`, import
it below, and add its test under tests/methods/.
"""

from dgmerge.methods import (diwa, erm, erm_ma, frozen_head, gating, ham, ham_soup, ham_variants, merge,  # noqa: F401
                             single_source, swad)
from dgmerge.methods.cell import Cell, SourceRun
from dgmerge.methods.registry import (
    EXPERIMENTS,
    ExperimentMethod,
    experiment_names,
    get_experiment,
    in_run_order,
    register_experiment,
)
from dgmerge.methods.build import build_cell

__all__ = ["EXPERIMENTS", "Cell", "ExperimentMethod", "SourceRun", "build_cell", "experiment_names",
           "get_experiment", "in_run_order", "register_experiment"]
