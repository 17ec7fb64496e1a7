"""The `dgmerge` command: wires every command module into one typer app."""

from __future__ import annotations

import typer

from dgmerge import __version__

app = typer.Typer(
    name="dgmerge",
    help="Domain generalization by harmonizing and merging source models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dgmerge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Domain generalization by harmonizing and merging source models."""


def _register_commands() -> None:
    # Each module adds its own commands; importing here keeps `dgmerge --help` the one
    # place where the full command list is assembled. Importing the method packages fills
    # the registries the commands read (experiment methods, gated model files, file merges).
    import dgmerge.gating  # noqa: F401
    import dgmerge.methods  # noqa: F401
    from dgmerge.cli import (bench_cmd, data_cmd, demo_cmd, evaluate_cmd, figures_cmd, merge_cmd, methods_cmd,
                             report_cmd, run_cmd, sweep_cmd)

    data_cmd.register(app)
    demo_cmd.register(app)
    run_cmd.register(app)
    evaluate_cmd.register(app)
    sweep_cmd.register(app)
    report_cmd.register(app)
    merge_cmd.register(app)
    figures_cmd.register(app)
    methods_cmd.register(app)
    bench_cmd.register(app)


_register_commands()


def main() -> None:
    """Entry point of the `dgmerge` console script."""
    app()


if __name__ == "__main__":
    main()
