"""CLI verbs of the loader: ``index`` and ``check-images``.

    spatialforge index --source objects365 --root /data/o365
    spatialforge check-images --annotations sf10m/ --image-dir objects365=/data/o365 \\
        --image-dir pixmo=/data/pixmo --missing-out missing.txt --task near_far

Exit status (so ``check-images`` can gate CI): 0 on success, 1 when the check fails (images missing
or unreadable, size mismatches under ``--strict``, ids refused as escaping their root), 2 on usage
errors (bad option values, folders or annotations not found). Errors are one line on stderr.
"""

from __future__ import annotations

from typing import NoReturn

import typer

EXIT_FAILED = 1  # the check ran and found problems
EXIT_USAGE = 2  # what click uses for bad parameters


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _usage(option: str, message: str) -> NoReturn:
    # One line, like click's "Error: Invalid value for '--x': ...", without the usage block and
    # without rich's multi-line panel (what typer.BadParameter prints when rich is installed).
    _fail(f"Invalid value for {option!r}: {message}", EXIT_USAGE)


def _parse_image_dirs(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        source, sep, root = value.partition("=")
        if not sep or not source or not root:
            _usage("--image-dir", f"--image-dir must look like SOURCE=DIR, got {value!r}")
        out[source] = root
    return out


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index(
        source: str = typer.Option(..., "--source", "-s", help="Image source: objects365, openimages, pixmo or any name."),
        root: str = typer.Option(..., "--root", "-r", help="Folder holding that source's images."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the index is up to date."),
    ) -> None:
        """Build (or refresh) the persistent image index of one source folder.

        Exit status: 0 on success; 2 if --root is not a folder.
        """
        from spatialforge.builders.resolvers import get_resolver

        try:
            resolver = get_resolver(source, root)
        except ValueError as err:
            _usage("--root", str(err))
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

    @app.command("check-images")
    def check_images_cmd(
        annotations: str = typer.Option(..., "--annotations", "-a", help="Dataset folder, .parquet/.jsonl glob or Hub repo id."),
        image_dir: list[str] = typer.Option([], "--image-dir", "-i", help="SOURCE=DIR, repeatable."),
        task: str = typer.Option("all", "--task", "-t", help="Task to check (default: all)."),
        missing_out: str | None = typer.Option(None, "--missing-out", help="Write missing 'source<TAB>image_id' lines here."),
        max_pixels: int | None = typer.Option(None, "--max-pixels", help="Decompression-bomb limit (default: PIL's)."),
        strict: bool = typer.Option(False, "--strict", help="Also fail (exit 1) when an image differs in size from the recorded width/height."),
    ) -> None:
        """Count, per source, the images the annotations need: found, missing, unreadable, resized.

        Exit status (to gate CI):

        0: every image is found and readable (size mismatches are reported but pass, unless --strict).

        1: an image is missing or unreadable, or differs in size under --strict, or an id escapes its root.

        2: usage error (bad --task, an --image-dir that is not a folder, annotations not found).
        """
        from spatialforge.builders.annotations import locate_shards
        from spatialforge.builders.check import scan_images
        from spatialforge.builders.resolvers import get_resolver
        from spatialforge.builders.schema import ALL_CONFIG, TASKS

        if task not in TASKS + (ALL_CONFIG,):
            _usage("--task", f"task must be one of {TASKS + (ALL_CONFIG,)}, got {task!r}")
        resolvers = {}
        for source, root in _parse_image_dirs(image_dir).items():
            try:
                resolvers[source] = get_resolver(source, root)
            except ValueError as err:
                _usage("--image-dir", str(err))
        try:
            shards = locate_shards(annotations, task)
        except (FileNotFoundError, ValueError) as err:
            _usage("--annotations", str(err))
        try:
            report = scan_images(shards, resolvers, max_pixels=max_pixels, progress=True)
        except ValueError as err:  # an image_id escaping its root: refused, whatever the options
            _fail(str(err))
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
        problems = []
        if report.bad:
            problems.append(f"{len(report.bad)} images are missing or unreadable ({report.rows_affected} of {report.rows} rows)")
        if strict and report.mismatched:
            problems.append(f"{len(report.mismatched)} images differ in size from the recorded width/height (--strict)")
        if problems:
            _fail("; ".join(problems))
