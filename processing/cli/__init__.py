"""The ``spatialforge`` command (typer), in the style of huggingface_hub's ``hf``.

Verbs live next to the code they drive and register themselves here; heavy imports happen inside
the verbs so ``spatialforge --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="spatialforge",
    help="SpatialForge: load, rebuild and inspect 3D spatial-reasoning QA built from 2D images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    from . import demo, inspect, loader, pipeline, train

    loader.register(app)
    pipeline.register(app)
    demo.register(app)
    train.register(app)
    inspect.register(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
