"""The one place every merge method is listed: name -> (pure function, declared hyperparameters).

A method is a pure function `fn(pretrained, finetuned, **hparams) -> MergedState` over state
dicts. Registering it with `@register(name, params={...})` declares its hyperparameters, so
`merge()` and the CLI can check ranges and parse `--set key=value` before any work starts.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor

from dgmerge.merging.validate import MergeError, Param, StateDict, check_models


class MergedState(dict):
    """The merged state dict (a plain `dict[str, Tensor]`) plus `.info` about how it was made.

    `info` holds method-specific diagnostics: thresholds and their estimation error (RHM,
    TIES), chosen ingredients (greedy soup), masks (LwPTV-style), fallbacks (TSV/SCORE).
    """

    def __init__(self, *args: Any, info: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info: dict[str, Any] = dict(info or {})


MergeFn = Callable[..., MergedState]


@dataclass
class MethodSpec:
    """A registered method: its function, declared parameters and defaults."""

    name: str
    fn: MergeFn
    params: dict[str, Param]
    defaults: dict[str, Any] = field(default_factory=dict)
    # Methods that wrap another method (dare, lwptv) forward unknown hparams to it.
    base_param: str | None = None

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def check_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Raise MergeError for unknown names, missing required ones or values out of range."""
        own = {k: v for k, v in hparams.items() if k in self.params}
        rest = {k: v for k, v in hparams.items() if k not in self.params}
        for name, param in self.params.items():
            if param.required and name not in own:
                raise MergeError(f"{self.name}: hyperparameter {name!r} is required ({param.help})")
        for name, value in own.items():
            self.params[name].check(self.name, name, value)
        if rest:
            if self.base_param is None:
                raise MergeError(f"{self.name}: unknown hyperparameter(s) {', '.join(sorted(rest))}; "
                                 f"accepted: {', '.join(sorted(self.params)) or 'none'}")
            base = own.get(self.base_param, self.defaults.get(self.base_param))
            base_spec = get_method(base)
            try:
                base_spec.check_hparams(rest)
            except MergeError as err:
                raise MergeError(f"{self.name} (base {base}): {err}") from None

    def param_for(self, name: str, hparams: Mapping[str, Any]) -> Param | None:
        """The declaration of `name`, looking through to the base method for wrappers."""
        if name in self.params:
            return self.params[name]
        if self.base_param is not None:
            base = hparams.get(self.base_param, self.defaults.get(self.base_param))
            if isinstance(base, str) and base in METHODS:
                return METHODS[base].param_for(name, hparams)
        return None


METHODS: dict[str, MethodSpec] = {}


def register(name: str, params: dict[str, Param] | None = None,
             base_param: str | None = None) -> Callable[[MergeFn], MergeFn]:
    """Class-free registration: `@register("ties", params={...})` above a merge function.

    The returned function checks its hyperparameters before running, so a direct call
    (`ties(pre, models, keep=2.0)`) fails as early as `merge("ties", ...)` does.
    """

    def add(fn: MergeFn) -> MergeFn:
        signature = inspect.signature(fn)
        defaults = {k: p.default for k, p in signature.parameters.items()
                    if p.default is not inspect.Parameter.empty}
        spec = MethodSpec(name, fn, dict(params or {}), defaults, base_param)

        @functools.wraps(fn)
        def checked(pretrained: StateDict, finetuned: Sequence[StateDict], **hparams: Any) -> MergedState:
            spec.check_hparams(hparams)
            return fn(pretrained, finetuned, **hparams)

        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = spec
        checked.spec = spec  # type: ignore[attr-defined]
        return checked

    return add


def available() -> list[str]:
    """Names of all registered merge methods, in registration order."""
    return list(METHODS)


def get_method(name: Any) -> MethodSpec:
    """The spec of a registered method, or a MergeError listing the valid names."""
    if not isinstance(name, str) or name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def run_unchecked(name: str, pretrained: StateDict, finetuned: Sequence[StateDict],
                  **hparams: Any) -> MergedState:
    """Run a method whose inputs and hyperparameters were already checked (for wrappers)."""
    return get_method(name).fn(pretrained, finetuned, **hparams)


def merge(method: str, pretrained: StateDict, finetuned: Sequence[StateDict],
          **hparams: Any) -> MergedState:
    """Merge fine-tuned state dicts that share the pretrained model `pretrained` (θ0).

    Checks hyperparameters first, then that every model has θ0's keys, shapes and dtypes and
    holds only finite values, then runs the method. Non-float tensors (integer buffers such
    as `num_batches_tracked`) are carried over from θ0. Returns a `MergedState` (a dict of
    tensors with an `.info` dict of diagnostics).
    """
    spec = get_method(method)
    spec.check_hparams(hparams)
    check_models(pretrained, list(finetuned))
    return spec.fn(pretrained, list(finetuned), **hparams)


__all__ = ["MergedState", "MethodSpec", "METHODS", "register", "available", "get_method", "merge",
           "run_unchecked", "Tensor"]
