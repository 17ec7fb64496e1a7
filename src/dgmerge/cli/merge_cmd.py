"""`dgmerge merge` and `dgmerge inspect` (owned by the merging library).

Both take the fine-tuned checkpoints as a list after `--models` (`--models A B C`); the flag
only marks where the list starts, the files themselves are positional arguments.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from dgmerge.cli.common import fail



def _method_help() -> str:
    from dgmerge.merging import FILE_MERGES, available

    state_dicts = [m for m in available() if m != "greedy_soup"]
    files = [f"{m.name} (needs {', '.join('--' + i for i in m.inputs)})" for m in FILE_MERGES.values()]
    return ("Merge method: " + ", ".join(state_dicts) + "; greedy_soup is Python API only"
            + (f"; or {', '.join(files)}" if files else "") + ". `dgmerge methods` lists them.")


def _check_model_args(models: List[Path]) -> None:
    if not models:
        fail("no fine-tuned models given; pass them after --models, e.g. --models a.safetensors b.safetensors")
    for path in models:
        if "=" in path.name and not path.exists():
            fail(f"{path}: looks like a setting, not a model file; pass each setting as --set {path}")


def _summary(value: Any, depth: int = 0) -> Any:
    """Info dicts can hold per-layer tables; keep the printed summary to a few lines."""
    if isinstance(value, dict):
        if "value" in value and "error" in value:  # a Threshold: its value and measured error suffice
            return {"value": _summary(value["value"]), "error": _summary(value["error"])}
        if depth >= 2 or len(value) > 12:
            return f"<{len(value)} entries>"
        return {k: _summary(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > 12:
            return f"<{len(value)} items>"
        return [_summary(v, depth + 1) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def register(app: typer.Typer) -> None:
    """Add the merging commands to the root app."""

    @app.command("merge")
    def merge_command(
        models: List[Path] = typer.Argument(None, metavar="MODELS...", show_default=False,
                                            help="Fine-tuned checkpoints (after --models)."),
        method: str = typer.Option(..., "--method", "-m", help=_method_help()),
        pretrained: Path = typer.Option(..., "--pretrained", "-p",
                                        help="The shared pretrained checkpoint θ0 (file or HF/open_clip directory)."),
        models_flag: bool = typer.Option(False, "--models", help="Marks the start of the fine-tuned checkpoints."),
        out: Path = typer.Option(..., "--out", "-o", help="Output file; .safetensors or .pt by suffix."),
        settings: Optional[List[str]] = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                                                     help="Method hyperparameter, repeatable: --set keep=0.2 --set scale=1"),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
        gate: Optional[Path] = typer.Option(None, "--gate", help="gating: the gate file (gate.safetensors of a "
                                            "gating run); models in its task order."),
        grams: Optional[List[Path]] = typer.Option(None, "--grams", help="gating with base=regmean: one Gram file "
                                                   "per model, repeatable, in the models' order."),
    ) -> None:
        """Merge fine-tuned checkpoints that share PRETRAINED into one model file.

        Merges of whole model files need more inputs: --method gating (Ye et al.) takes the gate
        (--gate) and writes a model with the gate, the gated modules' N weight copies and every
        model's head; settings: base=average|task_arithmetic|regmean, m, gate_norms,
        mode=sample|batch. `dgmerge evaluate` loads it.
        """
        from dgmerge.files import ModelFileError
        from dgmerge.merging import FILE_MERGES, MergeError, merge_files, parse_settings

        _check_model_args(list(models or []))
        start = time.perf_counter()
        if method in FILE_MERGES:
            inputs = {"gate": [gate] if gate else [], "grams": list(grams or [])}
            _merge_model_files(FILE_MERGES[method], pretrained, list(models), out, inputs, settings or [], force, quiet)
            return
        try:
            hparams = parse_settings(method, settings or [])
            merged = merge_files(method, pretrained, list(models), out, force=force, **hparams)
        except (MergeError, ModelFileError) as err:
            fail(str(err))
        if not quiet:
            typer.echo(f"merged {len(models)} models with {method} -> {out} "
                       f"({len(merged)} tensors, {time.perf_counter() - start:.1f} s)")
            if merged.info:
                typer.echo(json.dumps(_summary(merged.info), default=str))

    def _merge_model_files(spec: Any, pretrained: Path, models: List[Path], out: Path,
                           inputs: dict[str, list[Path]], settings: List[str], force: bool, quiet: bool) -> None:
        from dgmerge.files import ModelFileError
        from dgmerge.merging import MergeError

        unused = [f"--{name}" for name, files in inputs.items() if files and name not in spec.inputs]
        if unused:
            fail(f"--method {spec.name} takes no {', '.join(unused)}")
        start = time.perf_counter()
        try:
            summary = spec.run(pretrained, models, out, inputs=inputs, settings=settings, force=force)
        except (MergeError, ModelFileError, FileNotFoundError, ValueError) as err:
            fail(str(err))
        if not quiet:
            typer.echo(f"merged {len(models)} models with {spec.name} -> {out} ({time.perf_counter() - start:.1f} s)")
            typer.echo(json.dumps(_summary(summary), default=str))

    @app.command("inspect")
    def inspect_command(
        models: List[Path] = typer.Argument(None, metavar="MODELS...", show_default=False,
                                            help="Fine-tuned checkpoints (after --models)."),
        pretrained: Path = typer.Option(..., "--pretrained", "-p", help="The shared pretrained checkpoint θ0."),
        models_flag: bool = typer.Option(False, "--models", help="Marks the start of the fine-tuned checkpoints."),
        heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Save a PNG heatmap of cosine and per-layer norms."),
        max_layers: Optional[int] = typer.Option(None, "--max-layers", min=1, help="Print at most this many layers."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON."),
    ) -> None:
        """Per-layer task-vector norms, pairwise cosine similarity and sign-conflict rates."""
        from dgmerge.files import ModelFileError
        from dgmerge.merging import MergeError, format_report, inspect_files, save_heatmap

        _check_model_args(list(models or []))
        if heatmap is not None and heatmap.suffix.lower() != ".png":
            fail(f"{heatmap}: the heatmap is written as PNG; give a file name ending in .png")
        try:
            report = inspect_files(pretrained, list(models))
        except (MergeError, ModelFileError) as err:
            fail(str(err))
        typer.echo(format_report(report, max_layers))
        if heatmap is not None:
            heatmap.parent.mkdir(parents=True, exist_ok=True)
            save_heatmap(report, heatmap)
            typer.echo(f"heatmap -> {heatmap}")
        if json_out is not None:
            json_out.write_text(json.dumps(report.__dict__, indent=1))
            typer.echo(f"report -> {json_out}")
