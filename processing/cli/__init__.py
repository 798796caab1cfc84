"""The ``spatialforge`` command (typer), in the style of huggingface_hub's ``hf``.

Verbs live next to the code they drive and register themselves here; heavy imports happen inside
the verbs so ``spatialforge --help`` stays fast. Errors and exit statuses: :mod:`.common`.
"""

from __future__ import annotations

import logging

import typer

from .common import SpatialForgeGroup

app = typer.Typer(
    name="spatialforge",
    cls=SpatialForgeGroup,
    help=(
        "SpatialForge: load, rebuild and inspect 3D spatial-reasoning QA built from 2D images.\n\n"
        "Exit status of every verb: 0 success; 1 images missing or unreadable (check-images); "
        "2 bad input (an option, a file, annotations, a model that cannot be found). Errors are one "
        "line naming the flag, file or id; -v shows the traceback."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: wrapped to the terminal, never cut off (rich's tables crop narrow columns)
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"spatialforge {version('spatialforge')}")
        except PackageNotFoundError:  # running from a source tree that is not installed
            typer.echo("spatialforge (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages; show the traceback of an error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    from . import demo, hub, inspect, loader, pipeline, train

    loader.register(app)
    pipeline.register(app)
    demo.register(app)
    train.register(app)
    inspect.register(app)
    hub.register(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
