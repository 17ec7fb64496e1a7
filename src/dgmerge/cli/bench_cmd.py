"""`dgmerge bench NAME`: named, versioned benchmarks shipped with the package.

Each benchmark module adds its own subcommand to `bench_app`; this module only assembles them.
"""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    name="bench",
    help="Run a named benchmark (data root and weights default to ../shared when present).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Attach `dgmerge bench` and every benchmark subcommand to the main app."""
    from dgmerge.cli import bench_pacs_cmd
    from dgmerge.cli import bench_gating_cmd

    bench_pacs_cmd.register(bench_app)
    bench_gating_cmd.register(bench_app)
    app.add_typer(bench_app, name="bench")
