"""CLI verbs that talk to servers: ``push`` (a dataset folder to the Hub) and ``download-pixmo``.

    spatialforge push sf-o365 --repo-id my-org/sf-o365 --private
    spatialforge download-pixmo --rows pixmo-count/train.parquet --out /data/pixmo --workers 16

Exit status: 0 on success; 1 when the push failed or some images could not be downloaded (the
report says which and why); 2 on bad input (options, a missing or malformed rows file or dataset
folder). Errors are one line on stderr; ``-v`` (before the
verb: ``spatialforge -v push ...``) or ``--verbose`` shows the traceback.
"""

from __future__ import annotations

from typing import NoReturn

import typer

from .common import EXIT_FAILED, EXIT_USAGE, fail


def _verbose(ctx: typer.Context, verbose: bool) -> bool:
    return verbose or bool(ctx.find_root().params.get("verbose"))


def _expected(err: BaseException) -> bool:
    """Errors of the input, the settings or the servers (one line), as opposed to bugs (a traceback)."""
    from huggingface_hub.errors import HfHubHTTPError

    from ..hub.push import PushError, _transport_errors

    return isinstance(err, (PushError, HfHubHTTPError, ValueError, OSError, *_transport_errors()))


def _fail(err: BaseException) -> NoReturn:
    """One line; exit 2 for bad input (a missing file, a malformed value), 1 when the work failed."""
    message = " ".join(str(err).split()) or type(err).__name__
    bad_input = isinstance(err, (ValueError, FileNotFoundError))
    fail(f"{message} (--verbose shows the traceback)", EXIT_USAGE if bad_input else EXIT_FAILED)


def register(app: typer.Typer) -> None:
    @app.command("push", short_help="Publish a dataset folder to a Hub dataset repo.")
    def push_cmd(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., metavar="DATASET", show_default=False, help="Dataset folder written by `spatialforge generate` (README.md, stats.json, data/)."),
        repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, ORG/NAME (or NAME: your user). Created if missing."),
        private: bool = typer.Option(False, "--private", help="Create the repo private (no effect on an existing repo)."),
        revision: str = typer.Option("main", "--revision", help="Branch to commit to; created from main if missing."),
        token: str | None = typer.Option(None, "--token", help="Hub token with write access (default: the one saved by `hf auth login`, or HF_TOKEN)."),
        commit_message: str = typer.Option("Upload SpatialForge dataset", "--commit-message", help="Title of the commits (several commits get '(part i of n)')."),
        files_per_commit: int = typer.Option(100, "--files-per-commit", min=1, help="Most files one commit carries; a killed push redoes at most the commit in progress, without re-sending content already uploaded."),
        max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of a call that failed transiently (429, 5xx, dropped connection), with backoff and jitter."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
        verbose: bool = typer.Option(False, "--verbose", help="Show the traceback of an error."),
    ) -> None:
        """Publish a dataset folder to a Hub dataset repo: the card, stats.json and data/ only.

        Checks the folder, the token and the repo before uploading anything; uploads in several
        commits; a rerun after a kill or an error uploads only what is missing. Run state
        (.spatialforge/) and every other file stay local. Exit status: 0 pushed, 1 failed.
        """
        from ..hub.push import RetryPolicy, push

        try:
            result = push(dataset, repo_id, private=private, revision=revision, token=token,
                          commit_message=commit_message, files_per_commit=files_per_commit,
                          retry=RetryPolicy(max_attempts=max_retries + 1), progress=progress)
        except Exception as err:
            if not _expected(err) or _verbose(ctx, verbose):
                raise
            _fail(err)
        typer.echo(f"pushed {result.summary()}")
        typer.echo(f"load it with: datasets.load_dataset({result.repo_id!r}, CONFIG"
                   + (f", revision={result.revision!r}" if result.revision != "main" else "") + ")")

    @app.command("download-pixmo", short_help="Download Pixmo images by URL, checked by sha256.")
    def download_pixmo_cmd(
        ctx: typer.Context,
        rows: str = typer.Option(..., "--rows", help="Pixmo rows with image_url and image_sha256: a .jsonl / .parquet file or a folder of them."),
        out: str = typer.Option(..., "--out", help="Image folder to fill: files named <image_sha256>.<ext>, where the pixmo resolver finds them (--image-dir pixmo=OUT)."),
        workers: int = typer.Option(8, "--workers", min=1, help="Concurrent downloads."),
        timeout: float = typer.Option(20.0, "--timeout", min=0.001, help="Seconds to connect, and between two received chunks."),
        max_seconds: float = typer.Option(300.0, "--max-seconds", min=0.001, help="Most seconds one download may take (slow senders are cut off: timeout)."),
        max_bytes: int = typer.Option(50 * 2**20, "--max-bytes", min=1, help="Size cap of one image in bytes (larger: too_large)."),
        retries: int = typer.Option(3, "--retries", min=0, help="Retries of a transient failure (timeout, connection error, 429, 5xx), with backoff and jitter."),
        on_hash_mismatch: str = typer.Option("keep", "--on-hash-mismatch", help="keep: save an image whose sha256 differs from image_sha256 under the row's id (its points may still fit it) and report it; drop: do not save it. The actual hash is recorded either way."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Also retry images an earlier run found missing (404/410), not images, too large or dropped for their hash."),
        report: str | None = typer.Option(None, "--report", help="Write the JSON report here (default: OUT/.pixmo-download-report.json)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        verbose: bool = typer.Option(False, "--verbose", help="Show the traceback of an error."),
    ) -> None:
        """Download Pixmo images by URL (http and https only), checked against their sha256.

        Resumable: images already in OUT and verified are skipped. Prints counts by outcome and
        failure reason. Exit status: 0 when every image is there, 1 when some failed.
        """
        from ..download.pixmo import DownloadSettings, download_pixmo

        try:
            settings = DownloadSettings(workers=workers, timeout=timeout, max_seconds=max_seconds, max_bytes=max_bytes,
                                        retries=retries, on_hash_mismatch=on_hash_mismatch, retry_failed=retry_failed)
        except ValueError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        try:
            result = download_pixmo(rows, out, settings, report_path=report, progress=progress)
        except Exception as err:
            if not _expected(err) or _verbose(ctx, verbose):
                raise
            _fail(err)
        for line in result.summary_lines():
            typer.echo(line)
        typer.echo(f"report: {result.report_path}")
        if result.failed:
            raise typer.Exit(EXIT_FAILED)
