"""CLI verbs of training: ``export``.

    spatialforge export demo-out/exact --format llava --image-dir objects365=demo-out/objects365 \\
        --to train/llava --group-by-image

Exit status: 0 on success, 1 when images are missing or unreadable under ``--on-missing-image
error`` (nothing is written), 2 on usage errors. Errors are one line on stderr (traceback with -v).
"""

from __future__ import annotations

import logging

import typer

from .common import EXIT_BAD_INPUT, EXIT_FAILED, fail, parse_image_dirs, usage

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    from ..training.export import EXPORT_FORMATS, POLICIES
    from ..training.formats import MODEL_FAMILIES

    formats = ", ".join(EXPORT_FORMATS)

    @app.command("export", short_help="Write rows in training-framework formats.")
    def export_cmd(
        dataset: str = typer.Argument(..., metavar="DATASET", help="Dataset folder, .parquet/.jsonl file or glob, or Hub repo id.", show_default=False),
        format: str = typer.Option(..., "--format", "-f", help=f"Training format: {formats} (the files each framework reads are in the README)."),
        image_dir: list[str] = typer.Option([], "--image-dir", "-i", help="SOURCE=DIR, repeatable: where each source's images are."),
        to: str = typer.Option(..., "--to", help="Folder to write the files into (created; files are replaced)."),
        model_family: str | None = typer.Option(None, "--model-family", help=f"Box text for: {', '.join(MODEL_FAMILIES)} (default: internvl for --format internvl, else qwen3-vl)."),
        media_root: str | None = typer.Option(None, "--media-root", help="Write image paths relative to this folder (default: absolute paths)."),
        group_by_image: bool = typer.Option(False, "--group-by-image", help="All QA pairs of one image in one multi-turn sample (the image decoded once)."),
        task: str = typer.Option("all", "--task", "-t", help="Task to export (default: all)."),
        on_missing_image: str = typer.Option("error", "--on-missing-image", help=f"Rows whose image is missing or unreadable: {'|'.join(POLICIES)} (always listed in missing_rows.tsv)."),
        structured: bool = typer.Option(True, "--structured/--no-structured", help="Also write each sample's rows without their text (key 'spatialforge'), so import gives back the same rows."),
    ) -> None:
        """Write a dataset's rows as the files Qwen-VL, LLaVA, InternVL, LLaMA-Factory or ms-swift train on."""
        from spatialforge.builders.schema import ALL_CONFIG, TASKS

        from ..training.export import MissingImagesError, export_dataset

        if format not in EXPORT_FORMATS:
            usage("--format", f"format must be one of {sorted(EXPORT_FORMATS)}, got {format!r}")
        if model_family is not None and model_family not in MODEL_FAMILIES:
            usage("--model-family", f"model family must be one of {sorted(MODEL_FAMILIES)}, got {model_family!r}")
        if task not in TASKS + (ALL_CONFIG,):
            usage("--task", f"task must be one of {TASKS + (ALL_CONFIG,)}, got {task!r}")
        if on_missing_image not in POLICIES:
            usage("--on-missing-image", f"must be one of {POLICIES}, got {on_missing_image!r}")
        dirs = parse_image_dirs(image_dir)
        try:
            report = export_dataset(dataset, format, dirs, to, model_family=model_family, media_root=media_root,
                                    group_by_image=group_by_image, task=task, on_missing_image=on_missing_image,
                                    structured_rows=structured, progress=True)
        except (OSError, ValueError) as err:
            if logger.isEnabledFor(logging.DEBUG):
                logger.exception("export failed")
            # images missing or an unwritable --to: the export failed (1); bad input: usage (2)
            bad_input = isinstance(err, ValueError) or (isinstance(err, FileNotFoundError) and not isinstance(err, MissingImagesError))
            fail(str(err) if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: {err}",
                  EXIT_BAD_INPUT if bad_input else EXIT_FAILED)
        dropped = sum(report.dropped.values())
        typer.echo(
            f"wrote {report.samples} {format} samples ({report.rows_written} of {report.rows} rows, "
            f"model family {report.model_family}) to {to}: {', '.join(report.files)}"
        )
        if dropped:
            typer.echo(f"left out {dropped} rows: {dict(sorted(report.dropped.items()))} (listed in {to}/missing_rows.tsv)")
