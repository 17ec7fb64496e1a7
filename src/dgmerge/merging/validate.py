"""Checks that run before any merging work: compatible models, finite tensors, sane hyperparameters.

Every failure raises `MergeError` with one line that names the offending model, tensor or
hyperparameter, so the CLI can print it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

StateDict = Mapping[str, Tensor]

# Lists of offending keys are cut here so a wholesale mismatch stays a readable one-liner.
_SHOW = 8


class MergeError(ValueError):
    """A merge input or hyperparameter is invalid; the message says which one and how to fix it."""


def is_float(tensor: Tensor) -> bool:
    """True for tensors a merge method combines; everything else is carried over from θ0."""
    return tensor.is_floating_point()


def tensor_meta(state: StateDict, key: str) -> tuple[torch.Size, torch.dtype]:
    """Shape and dtype of one entry, from a lazy file's header when it has one (no data read)."""
    meta = getattr(state, "meta", None)
    if meta is not None:
        return meta(key)
    tensor = state[key]
    return tensor.shape, tensor.dtype


def _listing(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return shown + more


def check_compatible(pretrained: StateDict, finetuned: Sequence[StateDict],
                     names: Sequence[str] | None = None, pretrained_name: str = "pretrained") -> None:
    """Raise if any fine-tuned model differs from θ0 in key set, shapes or dtypes."""
    if len(finetuned) == 0:
        raise MergeError("no fine-tuned models given; pass at least one model to merge")
    names = list(names) if names is not None else [f"finetuned[{i}]" for i in range(len(finetuned))]
    base_keys = set(pretrained.keys())
    for name, state in zip(names, finetuned):
        keys = set(state.keys())
        missing, extra = base_keys - keys, keys - base_keys
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} key(s) of {pretrained_name}: {_listing(list(missing))}")
            if extra:
                parts.append(f"{len(extra)} key(s) not in {pretrained_name}: {_listing(list(extra))}")
            raise MergeError(f"{name}: key sets differ ({'; '.join(parts)}); "
                             "all models must share the architecture of the pretrained model")
        metas = {k: (tensor_meta(state, k), tensor_meta(pretrained, k)) for k in pretrained}
        bad_shapes = [f"{k} {tuple(m[0])} vs {tuple(b[0])}" for k, (m, b) in metas.items() if m[0] != b[0]]
        if bad_shapes:
            raise MergeError(f"{name}: shapes differ from {pretrained_name} at {len(bad_shapes)} key(s): "
                             f"{_listing(bad_shapes)}")
        bad_dtypes = [f"{k} {m[1]} vs {b[1]}" for k, (m, b) in metas.items() if m[1] != b[1]]
        if bad_dtypes:
            raise MergeError(f"{name}: dtypes differ from {pretrained_name} at {len(bad_dtypes)} key(s): "
                             f"{_listing(bad_dtypes)}; convert the checkpoints to one dtype first")


def check_finite(state: StateDict, name: str) -> None:
    """Raise naming the first tensor of `state` that holds NaN or Inf."""
    for key, tensor in state.items():
        if is_float(tensor) and not bool(torch.isfinite(tensor).all()):
            n_nan = int(torch.isnan(tensor).sum())
            n_inf = int(torch.isinf(tensor).sum())
            raise MergeError(f"{name}: tensor {key!r} contains {n_nan} NaN and {n_inf} Inf value(s); "
                             "the checkpoint is corrupt or diverged, merge a finite one")


def check_models(pretrained: StateDict, finetuned: Sequence[StateDict],
                 names: Sequence[str] | None = None, pretrained_name: str = "pretrained") -> None:
    """All input checks: compatibility first (cheap), then finiteness of every float tensor."""
    check_compatible(pretrained, finetuned, names, pretrained_name)
    names = list(names) if names is not None else [f"finetuned[{i}]" for i in range(len(finetuned))]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # element-wise scan; see task_vectors.one_thread for why
    try:
        check_finite(pretrained, pretrained_name)
        for name, state in zip(names, finetuned):
            check_finite(state, name)
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Param:
    """A declared hyperparameter: its kind, allowed range or choices, and a one-line help.

    kind: "float", "int", "bool", "str", "floats" (list of floats), "states" (list of state
    dicts, given on the CLI as comma-separated files), "callable" (Python API only) or "any".
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    required: bool = False
    optional: bool = False  # None is an accepted value
    help: str = ""

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is None and self.high is None:
            return self.kind
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

    def check(self, method: str, name: str, value: Any) -> None:
        """Raise MergeError if `value` is not a valid setting of this parameter."""
        where = f"{method}: {name}={value!r}"
        if value is None:
            if self.optional:
                return
            raise MergeError(f"{where} is not allowed; {name} must be {self.range_text()}")
        if self.kind in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MergeError(f"{where} is not a number; {name} must be {self.range_text()}")
            if self.kind == "int" and not float(value).is_integer():
                raise MergeError(f"{where} is not an integer")
            if not math.isfinite(float(value)):
                raise MergeError(f"{where} is not finite; {name} must be {self.range_text()}")
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if too_low or too_high:
                raise MergeError(f"{where} is outside {self.range_text()}" + (f" ({self.help})" if self.help else ""))
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise MergeError(f"{where} must be true or false")
        elif self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise MergeError(f"{where} must be {self.range_text()}")
        elif self.kind == "floats":
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise MergeError(f"{where} must be a list of finite numbers")
            if self.low is not None and any(v < self.low for v in value):
                raise MergeError(f"{where} has values below {self.low:g}")
        elif self.kind == "states":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
                raise MergeError(f"{where} must be a list of state dicts (one per fine-tuned model)")
        elif self.kind == "callable":
            if not callable(value):
                raise MergeError(f"{where} must be a callable")

    def parse(self, method: str, name: str, text: str,
              load_states: Callable[[str], StateDict] | None = None) -> Any:
        """Turn the text of a CLI `--set name=text` into a value of this parameter's kind."""
        where = f"{method}: --set {name}={text}"
        if self.optional and text.lower() in ("none", "null", ""):
            return None
        try:
            if self.kind == "float":
                return float(text)
            if self.kind == "int":
                return int(text)
            if self.kind == "bool":
                lowered = text.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.kind == "floats":
                return [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise MergeError(f"{where}: cannot read {text!r} as {self.kind}; expected {self.range_text()}") from None
        if self.kind == "states":
            if load_states is None:
                raise MergeError(f"{where}: statistics files cannot be loaded here")
            return [load_states(part.strip()) for part in text.split(",") if part.strip()]
        if self.kind in ("callable", "any"):
            raise MergeError(f"{where}: {name} is a Python callable; use the Python API "
                             "(dgmerge.merging.merge) for this method")
        return text


def check_fractions_sum(method: str, name: str, values: Sequence[float], count: int) -> None:
    """Per-model weight lists must have one entry per model and a positive total."""
    if len(values) != count:
        raise MergeError(f"{method}: {name} has {len(values)} entries for {count} fine-tuned models")
    if sum(values) <= 0:
        raise MergeError(f"{method}: {name} must have a positive sum")
