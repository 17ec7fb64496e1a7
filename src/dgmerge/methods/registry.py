"""The one place every experiment method is listed: name -> `run(cell) -> rows`.

An experiment method is what a config names under `methods:`. The experiment loop
(`dgmerge.pipeline.experiment`) builds one `Cell` per (seed, test domain) and calls each
requested method's `run` on it, in the registered order, blind to what the method does —
the way DomainBed's training script does not know which algorithm it trains. A new method
is one file that decorates its `run` with `@register_experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: the cell module imports this registry
    from dgmerge.config import ExperimentConfig
    from dgmerge.methods.cell import Cell

Row = dict[str, Any]
RunFn = Callable[["Cell"], list[Row]]
# (config, trial seed, method names already in results.jsonl for the cell) -> nothing left to do?
DoneFn = Callable[["ExperimentConfig", int, set[str]], bool]
# Raises ValueError naming the setting when a config cannot run the method (before any work).
CheckFn = Callable[["ExperimentConfig"], None]


@dataclass(frozen=True)
class ExperimentMethod:
    """A registered experiment method: how it runs, when it is done, how it is described."""

    name: str
    run: RunFn
    summary: str
    # Position in a cell: methods that others reuse (single_source's models, HAM's training)
    # run first, so every method sees what it needs already in the cell.
    order: int
    # Config fields the method reads (dotted), shown by `dgmerge methods`.
    settings: tuple[str, ...] = ()
    done: DoneFn | None = None
    # Other names for the same method (old configs keep working).
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Whether the method runs on multi-task cells, whose sources have their own label spaces.
    any_label_space: bool = False
    check: CheckFn | None = None

    def is_done(self, cfg: "ExperimentConfig", seed: int, finished: set[str]) -> bool:
        """Whether a cell with these finished rows/groups needs this method no more."""
        if self.done is not None:
            return self.done(cfg, seed, finished)
        return self.name in finished


EXPERIMENTS: dict[str, ExperimentMethod] = {}


def register_experiment(name: str, *, summary: str, order: int, settings: tuple[str, ...] = (),
                        done: DoneFn | None = None, aliases: tuple[str, ...] = (),
                        any_label_space: bool = False, check: CheckFn | None = None) -> Callable[[RunFn], RunFn]:
    """Decorator adding `run(cell) -> rows` to EXPERIMENTS as `name` (and its aliases).

    any_label_space: the method also runs on multi-task cells (`tasks:`), where every source
    has its own label space and head; the others need one head shared by every source.
    check: raises ValueError when a config cannot run the method, before any cell is built.
    """

    def add(run: RunFn) -> RunFn:
        method = ExperimentMethod(name, run, summary, order, tuple(settings), done, tuple(aliases), any_label_space,
                                  check)
        for key in (name, *aliases):
            if key in EXPERIMENTS and EXPERIMENTS[key].run is not run:
                raise ValueError(f"experiment method {key!r} is already registered by {EXPERIMENTS[key].run}")
            EXPERIMENTS[key] = method
        return run

    return add


def get_experiment(name: str) -> ExperimentMethod:
    """The registered method `name`; ValueError listing the registered ones otherwise."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment method {name!r}; registered: {', '.join(experiment_names())}") from None


def experiment_names() -> list[str]:
    """Every registered name (aliases included), in run order."""
    return sorted(EXPERIMENTS, key=lambda n: (EXPERIMENTS[n].order, n))


def in_run_order(names: list[str]) -> list[str]:
    """`names` sorted into the order a cell runs them (each name must be registered)."""
    return sorted(names, key=lambda n: (get_experiment(n).order, n))
