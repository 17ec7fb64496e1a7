"""`dgmerge methods`: the experiment methods a config can list, and the merge methods, with their settings."""

from __future__ import annotations

import typer

from dgmerge.merging import FILE_MERGES, available, get_method
from dgmerge.methods import EXPERIMENTS, experiment_names


def methods_text() -> str:
    """Both registries as plain text: one line per method, then its settings indented."""
    lines = ["Experiment methods (`methods:` in a config; run in this order in every cell):"]
    for name in experiment_names():
        method = EXPERIMENTS[name]
        if name != method.name:
            continue  # an alias: listed with its method
        aliases = f" (also: {', '.join(method.aliases)})" if method.aliases else ""
        lines.append(f"  {name:<16} {method.summary}{aliases}")
        if method.settings:
            lines.append(f"  {'':<16} settings: {', '.join(method.settings)}")
    lines += ["", "Merge methods (`merges:` entries, `ham.merge_method`, `dgmerge merge --method`):"]
    for name in available():
        spec = get_method(name)
        lines.append(f"  {name:<16} {spec.summary}")
        params = [f"{p}={spec.defaults[p]!r}" if p in spec.defaults else f"{p} ({spec.params[p].range_text()})"
                  for p in spec.params]
        if params:
            lines.append(f"  {'':<16} hyperparameters: {', '.join(params)}")
    if FILE_MERGES:
        lines += ["", "Merges of whole model files (`dgmerge merge --method`, with more inputs than state dicts):"]
        for merge in FILE_MERGES.values():
            inputs = ", ".join(f"--{name}" for name in merge.inputs)
            lines.append(f"  {merge.name:<16} {merge.summary}" + (f" (inputs: {inputs})" if inputs else ""))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add `dgmerge methods` to the root app."""

    @app.command("methods")
    def methods() -> None:
        """List the experiment methods and the merge methods, with one-line summaries and settings."""
        typer.echo(methods_text())
