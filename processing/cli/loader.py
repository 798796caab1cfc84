"""CLI verbs of the loader: ``index`` and ``check-images``.

    spatialforge index --source objects365 --image-dir /data/o365
    spatialforge check-images sf10m/ --image-dir objects365=/data/o365 \\
        --image-dir pixmo=/data/pixmo --missing-out missing.txt --task near_far

Exit status (so ``check-images`` can gate CI): 0 on success, 1 when the check fails (images missing
or unreadable, size mismatches under ``--strict``, ids refused as escaping their root), 2 on bad
input (option values, folders or annotations not found, rows that break the schema). Errors are one
line on stderr. Old spellings (``index --root``, ``check-images --annotations``) still work, with a
warning.
"""

from __future__ import annotations

import typer

from .common import EXIT_FAILED, EXIT_USAGE, deprecated, fail, parse_image_dirs, usage


def register(app: typer.Typer) -> None:
    @app.command("index", short_help="Build or refresh the image index of a folder.")
    def index(
        source: str = typer.Option(..., "--source", "-s", help="Image source: objects365, openimages, pixmo or any name."),
        image_dir: str | None = typer.Option(None, "--image-dir", "-i", metavar="DIR", help="Folder holding that source's images."),
        root: str | None = typer.Option(None, "--root", "-r", hidden=True, help="Deprecated spelling of --image-dir."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the index is up to date."),
    ) -> None:
        """Build (or refresh) the persistent image index of one source folder.

        The index lives in $SPATIALFORGE_CACHE/index (default ~/.cache/spatialforge/index). Exit
        status: 0 on success; 2 if --image-dir is not a folder.
        """
        root = deprecated(image_dir, root, "--root", "--image-dir")
        if root is None:
            usage("--image-dir", "the folder of the images is required")
        from spatialforge.builders.resolvers import get_resolver

        try:
            resolver = get_resolver(source, root)
        except ValueError as err:
            usage("--image-dir", str(err))
        if resolver.is_fresh() and not force:
            typer.echo(f"index of {source} under {resolver.root} is up to date: {resolver.index_path}")
            return
        stats = resolver.build_index(progress=True)
        typer.echo(
            f"indexed {stats.files} {source} image files under {resolver.root} in {stats.seconds:.1f}s "
            f"({stats.duplicates} duplicate ids, {stats.outside_links} links out of the root, "
            f"{stats.symlinked_dirs} symlinked folders followed, {stats.skipped_links} skipped as already walked, "
            f"{stats.checks_kept} image checks kept) -> {resolver.index_path}"
        )

    @app.command("check-images", short_help="Report the images a dataset needs.")
    def check_images_cmd(
        dataset: str | None = typer.Argument(None, metavar="DATASET", help="SpatialForge dataset: a folder, a .parquet/.jsonl glob or a Hub repo id.", show_default=False),
        annotations: str | None = typer.Option(None, "--annotations", "-a", hidden=True, help="Deprecated spelling of DATASET."),
        image_dir: list[str] = typer.Option([], "--image-dir", "-i", metavar="SOURCE=DIR", help="SOURCE=DIR (e.g. objects365=/data/o365), once per source."),
        task: str = typer.Option("all", "--task", "-t", help="Task to check: grounding | referring | counting | near_far | left_right | perspective | all."),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) when DATASET is a repo id."),
        missing_out: str | None = typer.Option(None, "--missing-out", help="Write missing 'source<TAB>image_id' lines to this file."),
        max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, help="Decompression-bomb limit in pixels (default: PIL's, about 89 million)."),
        threads: int = typer.Option(8, "--threads", min=1, help="Threads for the per-image checks (the loader's check_threads)."),
        image_check: str = typer.Option("decode", "--image-check", help="decode (every image decoded once; results kept in the index) | header (header and end marker only)."),
        strict: bool = typer.Option(False, "--strict", help="Also fail (exit 1) when an image differs in size from the recorded width/height."),
    ) -> None:
        """Count, per source, the images the annotations need: found, missing, unreadable, resized.

        Exit status (to gate CI):

        0: every image is found and readable (size mismatches are reported but pass, unless --strict).

        1: an image is missing or unreadable, or differs in size under --strict, or an id escapes its root.

        2: bad input (bad --task, an --image-dir that is not a folder or names a source the dataset
        does not have, DATASET not found, rows that break the schema).
        """
        if image_check not in ("decode", "header"):
            usage("--image-check", f"must be decode or header, got {image_check!r}")
        annotations = deprecated(dataset, annotations, "--annotations", "DATASET")
        if annotations is None:
            usage("DATASET", "the dataset to check is required (a folder, a .parquet/.jsonl glob or a Hub repo id)")
        from spatialforge.builders.annotations import locate_shards
        from spatialforge.builders.check import scan_images
        from spatialforge.builders.resolvers import get_resolver
        from spatialforge.builders.schema import ALL_CONFIG, KNOWN_SOURCES, TASKS
        from spatialforge.builders.validate import ShardError

        if task not in TASKS + (ALL_CONFIG,):
            usage("--task", f"task must be one of {TASKS + (ALL_CONFIG,)}, got {task!r}")
        if missing_out:
            import os

            folder = os.path.dirname(os.path.abspath(missing_out))
            if not os.path.isdir(folder):
                usage("--missing-out", f"folder {folder!r} of {missing_out!r} does not exist")
        resolvers = {}
        for source, root in parse_image_dirs(image_dir).items():
            try:
                resolvers[source] = get_resolver(source, root)
            except ValueError as err:
                usage("--image-dir", str(err))
        try:
            shards = locate_shards(annotations, task, revision=revision)
        except (FileNotFoundError, ValueError) as err:
            usage("DATASET", str(err))
        try:
            report = scan_images(shards, resolvers, max_pixels=max_pixels, threads=threads, progress=True,
                                 decode=image_check == "decode")
        except ShardError as err:
            fail(str(err), EXIT_USAGE)
        except ValueError as err:  # an image_id escaping its root: refused, whatever the options
            fail(str(err))
        unused = sorted(set(resolvers) - set(report.sources) - set(KNOWN_SOURCES))  # a typo such as o365
        if unused:
            usage("--image-dir", f"source(s) {unused} have no rows in {annotations!r} (its sources: {sorted(report.sources)})")
        header = f"{'source':<12} {'rows':>9} {'images':>8} {'found':>8} {'missing':>8} {'unreadable':>10} {'resized':>8}  aspect"
        typer.echo(header)
        for name, s in sorted(report.sources.items()):
            aspect = "n/a" if not s.size_mismatch else ("kept" if s.aspect_ok else f"CHANGED x{s.aspect_mismatch}")
            typer.echo(
                f"{name:<12} {s.rows:>9} {s.images:>8} {s.found:>8} {s.missing:>8} {sum(s.unreadable.values()):>10} "
                f"{s.size_mismatch:>8}  {aspect}"
            )
            if s.root is None:
                typer.echo(f"  {name}: no --image-dir given")
            for reason, n in sorted(s.unreadable.items()):
                typer.echo(f"  {name}: {n} {reason}")
        if any(not s.aspect_ok for s in report.sources.values()):
            typer.echo("boxes are normalized to 0..1000: they stay valid on resized images only if the aspect ratio holds")
        if missing_out:
            ids = report.missing_ids()
            with open(missing_out, "w") as f:
                f.writelines(f"{s}\t{i}\n" for s, i in ids)
            typer.echo(f"wrote {len(ids)} missing ids to {missing_out}")
        typer.echo(f"rows whose image is missing or unreadable: {report.rows_affected} of {report.rows}")
        if report.invalid_rows:
            fail(f"{report.invalid_rows} rows break the schema ({report.describe_invalid()}); the loader refuses them "
                 "unless on_invalid_row='skip' or 'warn'", EXIT_USAGE)
        problems = []
        if report.bad:
            problems.append(f"{len(report.bad)} images are missing or unreadable ({report.rows_affected} of {report.rows} rows)")
        if strict and report.mismatched:
            problems.append(f"{len(report.mismatched)} images differ in size from the recorded width/height (--strict)")
        if problems:
            fail("; ".join(problems), EXIT_FAILED)
