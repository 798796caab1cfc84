"""Pixmo rows: points, not boxes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..records import Record
from .base import BadInputError, _Raw
from .images import ImageHeader
from .table import TableReader, _assemble, _Events, _images_table, _Rows

logger = logging.getLogger(__name__)

# Pixmo rows (points, not boxes)


def _table_files(path: Path) -> list[Path]:
    """The JSONL / Parquet files of ``path`` (itself, or the ones under the folder, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise BadInputError(f"no .jsonl or .parquet files under {str(path)!r}")
        return files
    return [path]


def _iter_table_rows(path: Path, bad: Callable[[str, str], None]) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (or a folder of them, sorted)."""
    if path.is_dir():
        for p in _table_files(path):
            yield from _iter_table_rows(p, bad)
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad("malformed_line", f"{path.name}:{line_no}: not JSON ({err}): {line[:80]!r}")
                continue
            if not isinstance(row, dict):
                bad("malformed_line", f"{path.name}:{line_no}: expected an object, got {line[:80]!r}")
                continue
            yield row


def _points_xy(points: Any) -> list[tuple[float, float]] | None:
    """Pixmo points as ``[(x, y), ...]``: a list of ``{x, y}`` or a dict of lists ``{x: [...], y: [...]}``."""
    if points is None:
        return []
    try:
        if isinstance(points, dict):
            return [(float(x), float(y)) for x, y in zip(points["x"], points["y"], strict=True)]
        return [(float(p["x"]), float(p["y"])) for p in points]
    except (KeyError, TypeError, ValueError):
        return None


class PixmoReader(TableReader):
    """Pixmo rows (JSONL or Parquet: ``image_url``, ``image_sha256``, ``label``, ``points`` in pixels).

    Points are not boxes: they are kept in ``record.meta["points"]`` (``[{"label", "x", "y"}]`` on the
    transposed pixel grid) and ``record.meta["point_counts"]`` (``{label: number of points}``);
    ``record.objects`` stays empty (a detector may add boxes) and ``exhaustive_labels`` is empty,
    so box-based counting is not asked from points. Images are named by ``image_sha256`` (with or
    without an extension) under ``images``; ``image_id`` is the sha256, or the sha256 of the URL
    when a row has none. Several rows of one image are merged; exact repeats are counted
    (``duplicate_row``) and ignored. Rows are streamed; the conversion holds the points of every
    image (and a set of row keys to find repeats) in memory once.
    """

    default_source = "pixmo"
    id_field = "image_sha256"
    kind = "pixmo"

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.annotations = Path(annotations)

    def _inputs(self) -> list[Path]:
        if not self.annotations.exists():
            raise BadInputError(f"Pixmo rows {str(self.annotations)!r} do not exist")
        return _table_files(self.annotations)

    def _convert(self, events: _Events) -> Any:
        import pyarrow as pa

        if not self.annotations.exists():
            raise BadInputError(f"Pixmo rows {str(self.annotations)!r} do not exist")
        index: dict[str, int] = {}
        extras: list[dict[str, Any]] = []
        seen: set[tuple[str, str, tuple]] = set()
        rows = _Rows(pa.int64())

        def bad(reason: str, message: str) -> None:
            events.add("image", reason, message)

        for row in _iter_table_rows(self.annotations, bad):
            sha, url = row.get("image_sha256"), row.get("image_url")
            if sha:
                image_id = str(sha)
            elif url:
                image_id = hashlib.sha256(str(url).encode()).hexdigest()
            else:
                bad("malformed_row", f"row has neither image_sha256 nor image_url: {str(row)[:120]}")
                continue
            img = index.get(image_id)
            if img is None:
                img = index[image_id] = len(extras)
                extras.append({"rows": [], "url": url})
            label = row.get("label")
            points = _points_xy(row.get("points"))
            if not label or points is None:
                rows.issue(img, "malformed_points")
                continue
            key = (image_id, str(label), tuple(points))
            if key in seen:
                rows.issue(img, "duplicate_row")
                continue
            seen.add(key)
            extras[img]["rows"].append((str(label), points))
        images = _images_table(list(index), extra=pa.array([json.dumps(e) for e in extras], pa.string()))
        return _assemble(images, rows.table(), [])

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        W, H = header.width, header.height
        points: list[dict[str, Any]] = []
        counts: Counter = Counter()
        for label, pts in raw.extra["rows"]:
            counts[label] += 0
            for x, y in pts:
                if not (math.isfinite(x) and math.isfinite(y)):
                    self.bad_object("point_not_finite", f"image {raw.image_id!r}: point ({x}, {y}) of {label!r} is not finite")
                elif not (0 <= x <= W and 0 <= y <= H):
                    self.bad_object("point_outside_image", f"image {raw.image_id!r}: point ({x}, {y}) of {label!r} is outside the {W}x{H} image")
                else:
                    points.append({"label": label, "x": x, "y": y})
                    counts[label] += 1
        record.meta["points"] = points
        record.meta["point_counts"] = dict(sorted(counts.items()))
        if raw.extra.get("url"):
            record.meta["image_url"] = raw.extra["url"]
        record.exhaustive_labels = set()
