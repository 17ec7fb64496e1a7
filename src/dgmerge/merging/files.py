"""File-level entry points used by the CLI: merge checkpoints on disk, inspect them, parse --set.

Reading and writing go through `dgmerge.files`; its ModelFileError (a ValueError naming the
file) passes through unchanged, beside this package's MergeError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from dgmerge.files import check_writable, open_state_dict, read_state_dict, save_state_dict
from dgmerge.merging.diagnostics import TaskVectorReport, task_vector_report
from dgmerge.merging.registry import MergedState, get_method
from dgmerge.merging.validate import MergeError, check_models


def parse_settings(method: str, settings: Sequence[str]) -> dict[str, Any]:
    """Turn CLI `key=value` strings into typed hyperparameters using the method's declarations.

    Wrapper methods (dare, lwptv) are parsed in two rounds: their own keys first (so the
    base method is known), then the keys that belong to the base method.
    """
    spec = get_method(method)
    pairs: list[tuple[str, str]] = []
    for item in settings:
        if "=" not in item:
            raise MergeError(f"--set {item!r}: expected key=value, e.g. --set keep=0.2")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    parsed: dict[str, Any] = {}
    for key, value in pairs:
        if key in spec.params:
            parsed[key] = spec.params[key].parse(method, key, value, read_state_dict)
    for key, value in pairs:
        if key in spec.params:
            continue
        param = spec.param_for(key, parsed)
        if param is None:
            accepted = sorted(spec.params)
            raise MergeError(f"{method}: unknown hyperparameter {key!r} in --set; accepted: {', '.join(accepted)}"
                             + (" (+ those of the base method)" if spec.base_param else ""))
        parsed[key] = param.parse(method, key, value, read_state_dict)
    return parsed


def _printable(hparams: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else f"<{type(v).__name__}>"
            for k, v in hparams.items()}


def load_models(pretrained: str | os.PathLike, models: Sequence[str | os.PathLike], lazy: bool = True):
    """Load θ0 and the fine-tuned checkpoints and check them against each other.

    θ0 is read into memory (every method reads it piece by piece); with `lazy`, fine-tuned
    .safetensors files are read tensor by tensor on access, so they cost no resident memory.
    """
    if not models:
        raise MergeError("no fine-tuned models given; pass them with --models A B ...")
    base = read_state_dict(pretrained)
    opener = open_state_dict if lazy else read_state_dict
    states = [opener(path) for path in models]
    check_models(base, states, names=[str(p) for p in models], pretrained_name=str(pretrained))
    return base, states


def merge_files(method: str, pretrained: str | os.PathLike, models: Sequence[str | os.PathLike],
                out: str | os.PathLike, *, force: bool = False, lazy: bool = True,
                **hparams: Any) -> MergedState:
    """Merge checkpoint files into `out` (safetensors or .pt by suffix), atomically.

    Everything cheap is checked before loading: the method name, its hyperparameters, that
    `out` does not exist (unless `force`). The method and its hyperparameters are recorded
    in the safetensors metadata. Fine-tuned .safetensors inputs are read lazily (`lazy`),
    so peak memory is about θ0 + the output, whatever N. Returns the merged state with `.info`.
    """
    spec = get_method(method)
    for name, param in spec.params.items():
        if param.kind == "callable" and param.required and name not in hparams:
            raise MergeError(f"{method} needs a Python callable {name}= ({param.help}); it runs only through "
                             f"the Python API: dgmerge.merging.merge({method!r}, ..., {name}=fn)")
    check_writable(out, force)
    spec.check_hparams(hparams)
    base, states = load_models(pretrained, models, lazy)
    merged = spec.fn(base, states, **hparams)
    metadata = {"dgmerge_method": method, "dgmerge_hparams": json.dumps(_printable(hparams)),
                "dgmerge_models": json.dumps([Path(p).name for p in models])}
    save_state_dict(out, merged, force=force, metadata=metadata)
    return merged


def inspect_files(pretrained: str | os.PathLike, models: Sequence[str | os.PathLike]) -> TaskVectorReport:
    """Task-vector diagnostics of checkpoint files (see `diagnostics.task_vector_report`)."""
    base, states = load_models(pretrained, models)
    return task_vector_report(base, states, names=[Path(p).stem for p in models])


@dataclass(frozen=True)
class FileMerge:
    """A merge of whole model files that needs more than their state dicts (a gate, Gram files...).

    run(pretrained, models, out, *, inputs, settings, force) -> a summary dict; `inputs` maps
    each declared input name to the files given for it, `settings` are the raw --set pairs.
    """

    name: str
    run: Callable[..., dict[str, Any]]
    summary: str
    inputs: tuple[str, ...] = ()


# Registered by the packages that define such merges (dgmerge.gating registers "gating").
FILE_MERGES: dict[str, FileMerge] = {}


def register_file_merge(name: str, run: Callable[..., dict[str, Any]], *, summary: str,
                        inputs: Sequence[str] = ()) -> FileMerge:
    """Make `dgmerge merge --method NAME` call `run` with the files given for each of `inputs`."""
    if name in FILE_MERGES and FILE_MERGES[name].run is not run:
        raise ValueError(f"a file merge {name!r} is already registered")
    FILE_MERGES[name] = FileMerge(name, run, summary, tuple(inputs))
    return FILE_MERGES[name]
