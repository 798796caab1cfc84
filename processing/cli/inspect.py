"""CLI verbs to look at generated QA: ``fiftyone`` and ``preview``.

    spatialforge fiftyone spatialforge-o365/ --image-dir objects365=/data/o365 --name sf-o365 --launch
    spatialforge preview spatialforge-o365/ --image-dir objects365=/data/o365 --n 16

Exit status: 0 on success, 1 when nothing could be done (no row has its image), 2 on usage errors
(bad option values, dataset not found, a FiftyOne dataset of that name exists). Errors are one
line on stderr (``spatialforge -v ...`` shows the traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import EXIT_FAILED, EXIT_USAGE, fail, parse_image_dirs

_DATASET_HELP = "Generated dataset: a folder (data/<task>/*.parquet), a .parquet/.jsonl file or glob, or a Hub repo id."
_IMAGE_DIR_HELP = "SOURCE=DIR: where the images of rows with that `source` are (repeatable)."


def _run(ctx: typer.Context, fn):
    """Call ``fn``; turn expected errors into one line (the traceback with -v)."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, ImportError) as err:
        if ctx.find_root().params.get("verbose"):
            raise
        from ..inspect.rows import NoImagesFound

        code = EXIT_FAILED if isinstance(err, NoImagesFound) else EXIT_USAGE
        fail(f"{err} (-v shows the traceback)", code)


def register(app: typer.Typer) -> None:
    @app.command("fiftyone", short_help="Load generated QA into a FiftyOne dataset.")
    def fiftyone_cmd(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., metavar="DATASET", help=_DATASET_HELP, show_default=False),
        image_dir: list[str] = typer.Option([], "--image-dir", "-i", help=_IMAGE_DIR_HELP),
        name: Optional[str] = typer.Option(None, "--name", "-n", help="Name of the FiftyOne dataset to create (default: spatialforge-<folder name>)."),
        task: str = typer.Option("all", "--task", "-t", help="Only the rows of this task (default: all)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a FiftyOne dataset of the same name."),
        launch: bool = typer.Option(False, "--launch", help="Then serve the FiftyOne App on --address:--port until interrupted."),
        port: int = typer.Option(5151, "--port", min=1, max=65535, help="--launch: port of the App."),
        address: str = typer.Option("127.0.0.1", "--address", help="--launch: address the App listens on (loopback by default)."),
    ) -> None:
        """Load generated QA into a FiftyOne dataset: samples are images, each task a Detections field.

        Every QA pair's objects are Detections carrying its task, question, answer, role in the fact
        and verification evidence; images of a run with --keep-drops get their candidate drop
        reasons as `drop:<reason>` tags. Open it with `fiftyone app launch NAME` or --launch.
        """
        from ..inspect.fiftyone import export_qa, launch_app, read_drops
        from ..inspect.rows import load_qa

        dirs = parse_image_dirs(image_dir)
        ds_name = name or f"spatialforge-{Path(dataset.rstrip('/')).name or 'dataset'}"

        def export():
            qa = load_qa(dataset, dirs, task)
            qa.require_images(dataset, task)
            drops = read_drops(dataset) if Path(dataset).is_dir() else {}
            return qa, export_qa(qa, ds_name, overwrite=overwrite, drops=drops, progress=True)

        qa, fo_dataset = _run(ctx, export)
        rows = sum(len(i.rows) for i in qa.images)
        typer.echo(f"FiftyOne dataset {ds_name!r}: {len(qa.images):,} images, {rows:,} QA rows"
                   + (f"; left out (image not found): {qa.describe_missing()}" if qa.missing else ""))
        if not launch:
            typer.echo(f"open it with: fiftyone app launch {ds_name}")
            return

        def serve():
            try:
                return launch_app(ds_name, port=port, address=address)
            except Exception as err:  # FiftyOne's service errors (port taken, server too slow to start)
                if ctx.find_root().params.get("verbose"):
                    raise
                fail(f"could not serve the FiftyOne App on {address}:{port}: {type(err).__name__}: {err} "
                      f"(the dataset {ds_name!r} is kept: `fiftyone app launch {ds_name}`)")

        session = serve()
        typer.echo(f"FiftyOne App: {session.url} (Ctrl-C stops it)")
        try:
            session.wait()
        except KeyboardInterrupt:
            pass
        finally:
            session.close()

    @app.command("preview", short_help="Draw QA pairs on their images as PNGs.")
    def preview_cmd(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., metavar="DATASET", help=_DATASET_HELP, show_default=False),
        image_dir: list[str] = typer.Option([], "--image-dir", "-i", help=_IMAGE_DIR_HELP),
        n: int = typer.Option(16, "--n", min=1, help="Number of QA pairs to draw (tasks take turns)."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder of the PNGs (default: DATASET/previews, which the dataset card then embeds)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the choice of rows (same seed, same files)."),
        task: str = typer.Option("all", "--task", "-t", help="Only rows of this task (default: all)."),
        max_size: int = typer.Option(1024, "--max-size", min=16, help="Longest image side in pixels; larger images are downscaled."),
    ) -> None:
        """Draw QA pairs on their images (boxes, labels, question and answer) as PNG files."""
        from ..inspect.preview import write_previews

        dirs = parse_image_dirs(image_dir)
        report = _run(ctx, lambda: write_previews(dataset, dirs, out=out, n=n, seed=seed, task=task, max_size=max_size))
        typer.echo(f"wrote {len(report.files)} previews to {report.out}"
                   + (f"; the card {report.card} embeds the first ones" if report.card else ""))
        if report.missing:
            typer.echo("rows left out (image not found): " + ", ".join(f"{r}: {k}" for r, k in sorted(report.missing.items())))

