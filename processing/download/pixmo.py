"""Download Pixmo images by URL into the folder the ``pixmo`` resolver reads, checked and resumable.

Pixmo rows (``allenai/pixmo-count``, ``pixmo-points``, ...) name their image by ``image_url`` and
``image_sha256``; the images themselves are not redistributed. :func:`download_pixmo` fetches each
distinct image once and writes it as ``OUT/<image_id>.<ext>`` (``image_id`` = ``image_sha256``, or
the sha256 of the URL for a row without one, as :class:`~spatialforge.processing.readers.PixmoReader`
names it; ``ext`` from the decoded format), so ``--images OUT`` / ``--image-dir pixmo=OUT`` find it::

    OUT/
      3f2a...e9.jpg                    one file per image, named by its id
      .pixmo-manifest.jsonl            one line per finished image: outcome, actual sha256, size, mtime
      .pixmo-download-report.json      the last run's counts and failures
      .3f2a...e9.part                  a download in progress (hidden: resolvers skip dot files)

Rules, per image:

* **Schemes**: only ``http`` and ``https``, for the row's URL and for every redirect (at most
  ``max_redirects``); anything else is ``bad_scheme``, never fetched.
* **Limits**: ``timeout`` to connect and between two chunks, ``max_seconds`` for the whole body
  (a sender that trickles bytes is cut off as ``timeout``), ``max_bytes`` (a larger
  ``Content-Length`` is refused before reading; a body that grows past it is cut off): ``too_large``.
* **Retries**: timeouts, connection errors and HTTP 408 / 429 / 5xx are retried ``retries`` times
  with exponential backoff and full jitter (many workers failing together on one host must not
  retry in lockstep; a ``Retry-After`` header is honored). 404 and 410 are ``not_found`` at once.
* **Checks**: the bytes must be an image (header and end-of-file marker, as the loader checks
  them: ``not_image`` otherwise) and their sha256 must equal ``image_sha256``.
* **Hash mismatch** (its own outcome, ``hash_mismatch``): published Pixmo hashes are reported not to
  match re-downloaded bytes that still match their annotations (allenai/pixmo-count, discussion #2:
  hosts re-encode images). ``on_hash_mismatch="keep"`` (default) saves the image under the row's
  id, so it joins its annotations, and lists it in the report with the actual hash; ``"drop"``
  saves nothing (for users who accept only the exact published bytes). Either way the actual
  sha256 is recorded in the manifest and the report; a kept image is verified against it later.
* **Resumable**: an image already in ``OUT`` and verified is skipped (against the manifest's size,
  mtime and hash, or, without a manifest entry, by hashing a file named by its id); a killed run
  leaves only ``.part`` files, which the next run discards. Permanent failures of an earlier run
  (``not_found``, ``not_image``, ``too_large``, ``bad_scheme``, a dropped mismatch, ...) are not
  fetched again unless ``retry_failed``; transient ones (``timeout``, ``connection_error``,
  ``http_error``) are.

Example:
    >>> result = download_pixmo("pixmo-count/train.parquet", "/data/pixmo")   # doctest: +SKIP
    >>> result.counts                                                         # doctest: +SKIP
    Counter({'downloaded': 35_911, 'not_found': 1_204, 'hash_mismatch': 87, ...})
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

logger = logging.getLogger(__name__)

MANIFEST = ".pixmo-manifest.jsonl"
REPORT = ".pixmo-download-report.json"
PART_SUFFIX = ".part"
SCHEMES = ("http", "https")
HASH_POLICIES = ("keep", "drop")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16
_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}

# Outcomes. Saved: the image is in OUT.
DOWNLOADED, PRESENT, HASH_MISMATCH = "downloaded", "present", "hash_mismatch"
NOT_FOUND, TIMEOUT, CONNECTION_ERROR, HTTP_ERROR = "not_found", "timeout", "connection_error", "http_error"
NOT_IMAGE, TOO_LARGE, BAD_SCHEME, TOO_MANY_REDIRECTS, BAD_ROW = (
    "not_image", "too_large", "bad_scheme", "too_many_redirects", "bad_row")
TRANSIENT = frozenset({TIMEOUT, CONNECTION_ERROR, HTTP_ERROR})  # worth another try, now or in a rerun
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DownloadSettings:
    """How :func:`download_pixmo` fetches (see the module docstring for what each rule does)."""

    workers: int = 8  # concurrent downloads (threads)
    timeout: float = 20.0  # seconds to connect, and between two received chunks
    max_seconds: float = 300.0  # most seconds one attempt may take
    max_bytes: int = 50 * 2**20  # size cap of one image
    retries: int = 3  # retries of a transient failure
    backoff: float = 1.0  # base delay of the retries (doubling, full jitter, capped at max_backoff)
    max_backoff: float = 30.0
    max_redirects: int = 5
    on_hash_mismatch: str = "keep"  # keep | drop
    retry_failed: bool = False  # also refetch permanent failures of an earlier run
    seed: int | None = None  # seeds the jitter (tests)

    def __post_init__(self) -> None:
        if self.on_hash_mismatch not in HASH_POLICIES:
            raise ValueError(f"on_hash_mismatch must be one of {HASH_POLICIES}, got {self.on_hash_mismatch!r}")
        for name in ("workers", "max_bytes", "max_redirects"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "max_redirects" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        for name in ("timeout", "max_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Image:
    """One distinct image to fetch: its id (file name stem), URL and the published sha256 (or None)."""

    image_id: str
    url: str
    sha256: str | None


@dataclass
class Outcome:
    """What happened to one image."""

    image: Image
    outcome: str
    detail: str = ""
    file: str | None = None  # file name in OUT, when saved
    actual_sha256: str | None = None
    size: int | None = None
    attempts: int = 0
    previous: bool = False  # taken from an earlier run's manifest, nothing fetched

    @property
    def saved(self) -> bool:
        return self.file is not None


@dataclass
class DownloadResult:
    """Counts by outcome (``downloaded``, ``present``, ``hash_mismatch`` and each failure reason)."""

    out: Path
    counts: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    hash_mismatches: list[dict[str, Any]] = field(default_factory=list)
    unverified: int = 0  # saved without a published hash to check
    retries: int = 0
    bad_rows: int = 0
    policy: str = "keep"
    report_path: Path | None = None  # where the JSON report was written

    @property
    def failed(self) -> int:
        """Images not in ``OUT`` after the run."""
        kept = len([m for m in self.hash_mismatches if m["kept"]])
        return sum(self.counts.values()) - self.counts[DOWNLOADED] - self.counts[PRESENT] - kept

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "on_hash_mismatch": self.policy, "counts": dict(sorted(self.counts.items())),
                "failed": self.failed, "unverified": self.unverified, "retries": self.retries,
                "bad_rows": self.bad_rows, "hash_mismatches": self.hash_mismatches, "failures": self.failures}

    def summary_lines(self) -> list[str]:
        lines = [f"{n:>10,}  {name}" for name, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        kept = sum(1 for m in self.hash_mismatches if m["kept"])
        if self.counts[HASH_MISMATCH]:
            lines.append(f"hash mismatches: {self.counts[HASH_MISMATCH]:,} ({kept:,} kept, actual sha256 in the report)")
        if self.unverified:
            lines.append(f"{self.unverified:,} images had no image_sha256 to check")
        if self.bad_rows:
            lines.append(f"{self.bad_rows:,} rows without a usable image_url or image_sha256 (bad_row)")
        lines.append(f"{self.failed:,} images not in {self.out} (retries: {self.retries:,})")
        return lines


class _Failure(Exception):
    def __init__(self, outcome: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.retry_after = outcome, detail, retry_after


# -- input -----------------------------------------------------------------------------------------
def read_images(rows: str | os.PathLike) -> tuple[list[Image], Counter]:
    """The distinct images of Pixmo ``rows`` (JSONL / Parquet file or folder), first URL of each, in
    row order; and the rows that cannot be fetched, by reason (``bad_row``)."""
    from ..readers.base import BadInputError
    from ..readers.pixmo import _iter_table_rows

    path = Path(rows)
    if not path.exists():
        raise FileNotFoundError(f"Pixmo rows {str(rows)!r} do not exist")
    seen: dict[str, Image] = {}
    bad: Counter = Counter()

    def on_bad(reason: str, message: str) -> None:
        bad[BAD_ROW] += 1
        logger.warning("bad row (%s): %s", reason, message)

    try:
        for row in _iter_table_rows(path, on_bad):
            url, sha = row.get("image_url"), row.get("image_sha256")
            sha = str(sha) if sha else None  # the id exactly as PixmoReader takes it; compared in lower case
            if not url or (sha is not None and not _SHA256.match(sha.lower())):
                on_bad("no_url" if not url else "bad_sha256", f"image_url={url!r} image_sha256={sha!r}")
                continue
            image_id = sha or hashlib.sha256(str(url).encode()).hexdigest()
            seen.setdefault(image_id, Image(image_id, str(url), sha.lower() if sha else None))
    except BadInputError as err:
        raise ValueError(str(err)) from err
    return list(seen.values()), bad


# -- one download ----------------------------------------------------------------------------------
class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirections`` redirects, to http(s) URLs only."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.max_redirections = self.max_repeats = limit

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 (urllib's signature)
        target = headers.get("location") or headers.get("uri")
        if target:
            newurl = urljoin(req.full_url, target)
            if urlsplit(newurl).scheme.lower() not in SCHEMES:
                fp.close()
                raise _Failure(BAD_SCHEME, f"redirect to {newurl!r}: only http and https are fetched")
        if sum(getattr(req, "redirect_dict", {}).values()) >= self.max_redirections:
            fp.close()
            raise _Failure(TOO_MANY_REDIRECTS, f"more than {self.max_redirections} redirects to {req.full_url!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _classify(err: BaseException) -> _Failure:
    if isinstance(err, _Failure):
        return err
    if isinstance(err, urllib.error.HTTPError):
        if err.code in (404, 410):
            return _Failure(NOT_FOUND, f"HTTP {err.code}")
        retry_after = err.headers.get("Retry-After") if err.headers else None
        try:
            after = float(retry_after) if retry_after is not None else None
        except ValueError:
            after = None
        return _Failure(HTTP_ERROR, f"HTTP {err.code}", after)
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, _Failure):
        return reason
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return _Failure(TIMEOUT, f"{type(reason).__name__}: {reason}")
    return _Failure(CONNECTION_ERROR, f"{type(reason).__name__}: {reason}")


def _fetch(image: Image, part: Path, settings: DownloadSettings) -> tuple[str, int]:
    """Stream the image into ``part``; return ``(sha256, size)``. Raises :class:`_Failure`."""
    scheme = urlsplit(image.url).scheme.lower()
    if scheme not in SCHEMES:
        raise _Failure(BAD_SCHEME, f"{image.url!r}: only http and https are fetched")
    opener = urllib.request.build_opener(_Redirects(settings.max_redirects))
    request = urllib.request.Request(image.url, headers={"User-Agent": "spatialforge-download-pixmo"})
    started = time.monotonic()
    try:
        with opener.open(request, timeout=settings.timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > settings.max_bytes:
                raise _Failure(TOO_LARGE, f"Content-Length {int(length):,} > {settings.max_bytes:,} bytes")
            digest, size = hashlib.sha256(), 0
            with open(part, "wb") as f:
                while True:
                    if time.monotonic() - started > settings.max_seconds:
                        raise _Failure(TIMEOUT, f"body not received within {settings.max_seconds:g}s")
                    chunk = response.read1(_CHUNK)  # one receive at most: the deadline is checked between them
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > settings.max_bytes:
                        raise _Failure(TOO_LARGE, f"body larger than {settings.max_bytes:,} bytes")
                    digest.update(chunk)
                    f.write(chunk)
            if length is not None and length.isdigit() and size != int(length):
                raise _Failure(CONNECTION_ERROR, f"connection closed after {size:,} of {int(length):,} bytes")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise _classify(err) from err
    return digest.hexdigest(), size


def _image_format(path: Path) -> tuple[str | None, str]:
    """``(file extension, "")`` for a valid image, ``(None, reason detail)`` otherwise."""
    from PIL import Image as PILImage

    from ...builders.resolvers import OK, TOO_MANY_PIXELS, inspect_image

    status = inspect_image(str(path))
    if status.status == TOO_MANY_PIXELS:
        return None, f"{TOO_LARGE}: {status.detail}"
    if status.status != OK:
        return None, f"{status.status}: {status.detail}"
    with PILImage.open(path) as im:
        return _EXT.get(im.format or "", f".{(im.format or 'img').lower()}"), ""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the run ---------------------------------------------------------------------------------------
class _Manifest:
    """``OUT/.pixmo-manifest.jsonl``: the last line of an image wins; appended under a lock, flushed per line."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: that image is simply done again
                        continue
                    if isinstance(entry, dict) and "image_id" in entry:
                        self.entries[entry["image_id"]] = entry
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  closed by close()

    def record(self, outcome: Outcome, out: Path) -> None:
        entry: dict[str, Any] = {"image_id": outcome.image.image_id, "url": outcome.image.url,
                                 "outcome": outcome.outcome, "file": outcome.file,
                                 "sha256": outcome.actual_sha256, "size": outcome.size}
        if outcome.file:
            entry["mtime_ns"] = (out / outcome.file).stat().st_mtime_ns
        if outcome.detail:
            entry["detail"] = outcome.detail
        with self._lock:
            self._file.write(json.dumps(entry, sort_keys=True) + "\n")
            self._file.flush()
            self.entries[entry["image_id"]] = entry

    def close(self) -> None:
        self._file.close()


class _Downloader:
    def __init__(self, out: Path, settings: DownloadSettings, manifest: _Manifest) -> None:
        self.out, self.settings, self.manifest = out, settings, manifest
        self.rng = random.Random(settings.seed)
        self.rng_lock = threading.Lock()
        self.retries = 0
        self.stop = threading.Event()

    def _existing(self, image: Image) -> Outcome | None:
        """The image, if it is already in OUT and verified; or an earlier permanent failure to keep."""
        entry = self.manifest.entries.get(image.image_id)
        if entry is not None and entry.get("file"):
            path = self.out / entry["file"]
            if path.is_file():
                st = path.stat()
                same = st.st_size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns")
                if same or _sha256_file(path) == entry.get("sha256"):
                    return Outcome(image, PRESENT, file=entry["file"], actual_sha256=entry.get("sha256"),
                                   size=st.st_size, previous=True)
        elif (entry is not None and entry.get("outcome") not in TRANSIENT and not self.settings.retry_failed
              and entry.get("url") == image.url):
            return Outcome(image, entry["outcome"], detail=entry.get("detail", ""), actual_sha256=entry.get("sha256"),
                           previous=True)
        if image.sha256 is not None:  # a file named by its id, from an earlier tool or a copy
            for path in sorted(self.out.glob(f"{image.image_id}*")):
                if path.name.startswith(".") or path.name.endswith(PART_SUFFIX):
                    continue
                if path.stem == image.image_id or path.name == image.image_id:
                    if _sha256_file(path) == image.sha256:
                        outcome = Outcome(image, PRESENT, file=path.name, actual_sha256=image.sha256,
                                          size=path.stat().st_size)
                        self.manifest.record(outcome, self.out)
                        return outcome
        return None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self.rng_lock:
            wait = self.rng.uniform(0, min(self.settings.max_backoff, self.settings.backoff * 2**attempt))
        return max(wait, retry_after or 0.0)

    def run(self, image: Image) -> Outcome:
        existing = self._existing(image)
        if existing is not None:
            return existing
        part = self.out / f".{image.image_id}{PART_SUFFIX}"
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    sha, size = _fetch(image, part, self.settings)
                    break
                except _Failure as failure:
                    if failure.outcome not in TRANSIENT or attempts > self.settings.retries or self.stop.is_set():
                        return self._finish(Outcome(image, failure.outcome, failure.detail, attempts=attempts))
                    with self.rng_lock:
                        self.retries += 1
                    wait = self._delay(attempts - 1, failure.retry_after)
                    logger.debug("%s: %s (%s); retry %d in %.2fs", image.url, failure.outcome, failure.detail,
                                 attempts, wait)
                    time.sleep(wait)
            ext, problem = _image_format(part)
            if ext is None:
                reason = TOO_LARGE if problem.startswith(TOO_LARGE) else NOT_IMAGE
                return self._finish(Outcome(image, reason, problem, actual_sha256=sha, size=size, attempts=attempts))
            outcome = DOWNLOADED
            if image.sha256 is not None and sha != image.sha256:
                outcome = HASH_MISMATCH
                if self.settings.on_hash_mismatch == "drop":
                    return self._finish(Outcome(image, outcome, f"sha256 {sha} (dropped)", actual_sha256=sha,
                                                size=size, attempts=attempts))
            name = f"{image.image_id}{ext}"
            for old in [self.out / image.image_id, *self.out.glob(f"{image.image_id}.*")]:
                if old.name != name and old.is_file():  # an older copy (bare, or another extension) would shadow it
                    old.unlink()
            os.replace(part, self.out / name)
            detail = f"sha256 {sha} (kept)" if outcome == HASH_MISMATCH else ""
            return self._finish(Outcome(image, outcome, detail, file=name, actual_sha256=sha, size=size,
                                        attempts=attempts))
        finally:
            part.unlink(missing_ok=True)

    def _finish(self, outcome: Outcome) -> Outcome:
        self.manifest.record(outcome, self.out)
        return outcome


def download_pixmo(
    rows: str | os.PathLike,
    out: str | os.PathLike,
    settings: DownloadSettings | None = None,
    *,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> DownloadResult:
    """Download the images of Pixmo ``rows`` into ``out`` (see the module docstring); write the report
    (``out/.pixmo-download-report.json`` unless ``report_path``) and return it as a :class:`DownloadResult`."""
    from tqdm.auto import tqdm

    settings = settings or DownloadSettings()
    images, bad = read_images(rows)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".*{PART_SUFFIX}"):  # left by a killed run
        stale.unlink()
    manifest = _Manifest(root)
    downloader = _Downloader(root, settings, manifest)
    result = DownloadResult(out=root, bad_rows=bad[BAD_ROW], policy=settings.on_hash_mismatch)
    logger.info("%d images to check or fetch into %s (%d workers)", len(images), root, settings.workers)
    bar = tqdm(total=len(images), unit="img", desc="download-pixmo", disable=not progress)
    try:
        with ThreadPoolExecutor(settings.workers, thread_name_prefix="pixmo") as pool:
            try:
                for outcome in _ordered(pool, downloader, images):
                    _account(result, outcome)
                    bar.update(1)
                    bar.set_postfix(failed=result.failed)
            except BaseException:
                downloader.stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()
        manifest.close()
    result.retries = downloader.retries
    path = Path(report_path) if report_path else root / REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    result.report_path = path
    logger.info("download-pixmo: %s; report in %s", dict(result.counts), path)
    return result


def _ordered(pool: ThreadPoolExecutor, downloader: _Downloader, images: list[Image]) -> Iterator[Outcome]:
    """Outcomes in input order, with at most a few batches of work queued at once (bounded memory)."""
    window = max(64, 4 * downloader.settings.workers)
    futures = []
    for image in images:
        futures.append(pool.submit(downloader.run, image))
        if len(futures) >= window:
            yield futures.pop(0).result()
    for future in futures:
        yield future.result()


def _account(result: DownloadResult, outcome: Outcome) -> None:
    result.counts[outcome.outcome] += 1
    image = outcome.image
    if outcome.outcome == HASH_MISMATCH:
        result.hash_mismatches.append({"image_id": image.image_id, "url": image.url, "published_sha256": image.sha256,
                                       "actual_sha256": outcome.actual_sha256, "kept": outcome.saved,
                                       "previous_run": outcome.previous})
    elif not outcome.saved:
        result.failures.append({"image_id": image.image_id, "url": image.url, "reason": outcome.outcome,
                                "detail": outcome.detail, "attempts": outcome.attempts,
                                "previous_run": outcome.previous})
    elif image.sha256 is None and outcome.outcome == DOWNLOADED:
        result.unverified += 1
