"""Account for the images that annotation rows point to: found, missing, unreadable, resized.

One pass over the ``(source, image_id, width, height)`` columns only (Parquet column projection,
record batches), then one cheap check per unique image (header + trailer, no decode; many rows share
one image). Check outcomes are stored in each root's index: a later scan only ``stat()``-s files that
did not change (see ``resolvers.py``). The builder runs it before yielding any row, so
``on_missing_image="error"`` fails early; ``spatialforge check-images`` prints the same report.

Example:
    >>> report = check_images("annotations/", {"objects365": "/data/o365"})   # doctest: +SKIP
    >>> report.sources["objects365"].missing                                  # doctest: +SKIP
    0
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain

import pyarrow.compute as pc

from .annotations import AnnotationShards, iter_batches, locate_shards
from .resolvers import MISSING, OK, UNREADABLE, ImageStatus, Resolver, get_resolver
from .schema import ALL_CONFIG
from .validate import COLUMN_OF, VALIDATED_COLUMNS, any_problem, file_tasks, first_ids, row_problems

logger = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.01
"""Relative aspect-ratio difference under which 0..1000 boxes stay valid on a resized image."""
_KEY_COLUMNS = ["source", "image_id", "width", "height"]


@dataclass
class SourceReport:
    """Counts for one source. Image counts are of unique images; ``rows*`` count annotation rows."""

    source: str
    root: str | None  # None: no image folder was given for this source
    rows: int = 0
    images: int = 0
    found: int = 0  # present and readable
    missing: int = 0
    unreadable: Counter = field(default_factory=Counter)  # reason -> images
    size_mismatch: int = 0  # readable images whose EXIF-transposed size differs from width/height
    aspect_mismatch: int = 0  # ... among them, those whose aspect ratio differs too (boxes are off)
    rows_affected: int = 0  # rows whose image is missing or unreadable

    @property
    def aspect_ok(self) -> bool:
        """True if every resized image kept its aspect ratio (normalized boxes stay valid)."""
        return self.aspect_mismatch == 0


@dataclass
class ImageReport:
    """Result of :func:`scan_images`: per-source counts and the images whose rows cannot be served."""

    sources: dict[str, SourceReport] = field(default_factory=dict)
    bad: dict[tuple[str, str], ImageStatus] = field(default_factory=dict)  # (source, image_id) -> status
    bad_rows: dict[tuple[str, str], int] = field(default_factory=dict)  # rows per bad image
    mismatched: dict[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)
    invalid: Counter = field(default_factory=Counter)  # rows that break the schema, by reason (validate.py)
    invalid_first: dict[str, list[str]] = field(default_factory=dict)  # reason -> first "file: row id"

    invalid_rows: int = 0  # rows that break the schema (a row with two problems counts once here)

    def describe_invalid(self) -> str:
        """``reason: n rows, column c (first: file: id, ...)`` for every reason, one clause each."""
        return "; ".join(
            f"{reason}: {n} rows, column {COLUMN_OF.get(reason, '?')} (first: {', '.join(self.invalid_first.get(reason, []))})"
            for reason, n in sorted(self.invalid.items())
        )

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sources.values())

    @property
    def rows_affected(self) -> int:
        return sum(s.rows_affected for s in self.sources.values())

    def rows_by_reason(self) -> dict[str, int]:
        """Rows whose image is bad, by reason (missing, zero_byte, not_image, truncated, too_many_pixels)."""
        out: Counter = Counter()
        for key, status in self.bad.items():
            out[status.status] += self.bad_rows.get(key, 0)
        return dict(sorted(out.items()))

    def missing_ids(self) -> list[tuple[str, str]]:
        return sorted(k for k, v in self.bad.items() if v.status == MISSING)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "rows_affected": self.rows_affected,
            "invalid_rows": self.invalid_rows,
            "invalid_rows_by_reason": dict(sorted(self.invalid.items())),
            "sources": {
                name: {
                    "root": s.root,
                    "rows": s.rows,
                    "images": s.images,
                    "found": s.found,
                    "missing": s.missing,
                    "unreadable": dict(sorted(s.unreadable.items())),
                    "size_mismatch": s.size_mismatch,
                    "aspect_mismatch": s.aspect_mismatch,
                    "rows_affected": s.rows_affected,
                }
                for name, s in sorted(self.sources.items())
            },
        }


def scan_images(
    shards: AnnotationShards,
    resolvers: Mapping[str, Resolver],
    max_pixels: int | None = None,
    aspect_tolerance: float = ASPECT_TOLERANCE,
    threads: int = 8,
    download_config=None,
    progress: bool = False,
    decode: bool = True,
) -> ImageReport:
    """Check every image referenced by ``shards`` against the resolvers' roots (``decode=False``:
    header and trailer only, see :func:`~.resolvers.inspect_image`).

    Raises ``ValueError`` if an ``image_id`` would escape its root (whatever the policy).
    """
    # 1. rows that break the schema (counted by reason, left out of the image accounting), then
    #    unique images with their row counts and recorded size (first row wins)
    seen: dict[tuple[str, str], list] = {}
    invalid: Counter = Counter()
    invalid_first: dict[str, list[str]] = {}
    invalid_rows = 0
    for k, (path, expected) in enumerate(zip(shards.files, file_tasks(shards))):
        for batch in iter_batches(
            path, shards.format, VALIDATED_COLUMNS, batch_size=8192, tasks=shards.task_filter, download_config=download_config,
            reader=shards.reader, rows=shards.range_of(k),
        ):
            problems = row_problems(batch, expected)
            if problems:
                for reason, mask in problems.items():
                    invalid[reason] += pc.sum(mask).as_py()
                    listed = invalid_first.setdefault(reason, [])
                    listed += [f"{path}: {i}" for i in first_ids(batch, mask, 3 - len(listed))] if len(listed) < 3 else []
                dropped = any_problem(problems)
                invalid_rows += pc.sum(dropped).as_py()
                batch = batch.filter(pc.invert(dropped))
            batch = batch.select(_KEY_COLUMNS)
            # Rows of one image are mostly adjacent: count them per batch in Arrow, then merge the
            # (far fewer) groups in Python. use_threads=False keeps "first" the first row's value.
            groups = batch.group_by(["source", "image_id"], use_threads=False).aggregate(
                [("width", "first"), ("height", "first"), ([], "count_all")]
            )
            columns = [groups.column(c).to_pylist() for c in ("source", "image_id", "count_all", "width_first", "height_first")]
            for source, image_id, n, w, h in zip(*columns):
                entry = seen.get((source, image_id))
                if entry is None:
                    seen[(source, image_id)] = [n, w, h]
                else:
                    entry[0] += n
    report = ImageReport(invalid=invalid, invalid_first=invalid_first, invalid_rows=invalid_rows)
    by_source: dict[str, list[str]] = {}
    for (source, image_id), (n, _, _) in seen.items():
        rep = report.sources.get(source)
        if rep is None:
            resolver = resolvers.get(source)
            rep = report.sources[source] = SourceReport(source, resolver.root if resolver else None)
        rep.rows += n
        rep.images += 1
        by_source.setdefault(source, []).append(image_id)

    # 2. resolve through the index, then one cheap check per unique image; the resolver reuses the
    #    checks stored in its index for files that did not change (one stat() each)
    for source, ids in by_source.items():
        rep = report.sources[source]
        resolver = resolvers.get(source)
        paths = resolver.resolve_many(ids) if resolver is not None else {}
        statuses = resolver.check_many(paths, max_pixels, threads=threads, progress=progress, decode=decode) if paths else iter(())
        absent = ((image_id, ImageStatus(MISSING)) for image_id in ids if image_id not in paths)
        for image_id, status in chain(statuses, absent):
            key = (source, image_id)
            if status.status == OK:
                rep.found += 1
                _, w, h = seen[key]
                if (status.width, status.height) != (w, h):
                    rep.size_mismatch += 1
                    report.mismatched[key] = ((w, h), (status.width, status.height))
                    if not w or not h or abs(status.width / status.height - w / h) > aspect_tolerance * (w / h):
                        rep.aspect_mismatch += 1
                continue
            report.bad[key] = status
            report.bad_rows[key] = seen[key][0]
            rep.rows_affected += seen[key][0]
            if status.status == MISSING:
                rep.missing += 1
            else:
                rep.unreadable[status.status] += 1
    return report


def check_images(
    annotations: str,
    image_dirs: Mapping[str, str],
    task: str = ALL_CONFIG,
    max_pixels: int | None = None,
    revision: str | None = None,
    progress: bool = False,
) -> ImageReport:
    """Locate ``annotations`` and check their images under ``image_dirs`` (source -> folder)."""
    shards = locate_shards(annotations, task, revision=revision)
    resolvers = {src: get_resolver(src, root) for src, root in image_dirs.items()}
    return scan_images(shards, resolvers, max_pixels=max_pixels, progress=progress)


def describe_bad(report: ImageReport, limit: int = 5) -> str:
    """Short human summary of the bad images: counts by reason and the first few ids."""
    reasons = Counter(s.status for s in report.bad.values())
    first = sorted(report.bad)[:limit]
    listed = ", ".join(f"{src}/{iid} ({report.bad[(src, iid)].status})" for src, iid in first)
    more = f" and {len(report.bad) - limit} more" if len(report.bad) > limit else ""
    return f"{dict(sorted(reasons.items()))}; first: {listed}{more}"


def describe_roots(report: ImageReport) -> str:
    return ", ".join(
        f"{name}={s.root!r}" if s.root else f"{name}=(no image dir given)" for name, s in sorted(report.sources.items())
    )


__all__ = [
    "ASPECT_TOLERANCE",
    "ImageReport",
    "SourceReport",
    "UNREADABLE",
    "check_images",
    "describe_bad",
    "describe_roots",
    "scan_images",
]
