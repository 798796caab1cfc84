"""Generated QA rows joined to their image files, grouped by image (what the inspect tools draw).

Example:
    >>> qa = load_qa("spatialforge-o365/", {"objects365": "/data/o365"})   # doctest: +SKIP
    >>> qa.images[0].path, len(qa.images[0].rows), qa.missing             # doctest: +SKIP
    ('/data/o365/val/patch3/objects365_v1_00012345.jpg', 4, Counter())
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...builders.annotations import iter_batches, locate_shards
from ...builders.resolvers import get_resolver
from ...builders.schema import ALL_CONFIG

logger = logging.getLogger(__name__)

NO_IMAGE_DIR = "no_image_dir"  # the row's source has no --image-dir
MISSING_IMAGE = "missing_image"  # the resolver found no file for the row's image id


class NoImagesFound(ValueError):
    """No row of the dataset has its image under the given folders: there is nothing to show."""


@dataclass
class QAImage:
    """One image and its QA rows (in the dataset's row order)."""

    source: str
    image_id: str
    path: str
    width: int
    height: int
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class QAImages:
    """The images of a dataset that were found, and the rows left out (by reason) because theirs was not."""

    images: list[QAImage]
    rows: int  # rows read
    missing: Counter = field(default_factory=Counter)  # rows without an image file, by reason
    missing_images: Counter = field(default_factory=Counter)  # distinct images without a file, by reason

    def describe_missing(self) -> str:
        return ", ".join(f"{n} rows ({self.missing_images[r]} images): {r}" for r, n in sorted(self.missing.items()))

    def require_images(self, dataset: str, task: str = ALL_CONFIG) -> None:
        """Raise :class:`NoImagesFound` (naming the dataset and what was missing) when no image was found."""
        if not self.images:
            raise NoImagesFound(f"no row of {dataset!r} (task {task}) has its image under the given --image-dir "
                                f"folders ({self.rows} rows; {self.describe_missing() or 'none'})")


def read_rows(dataset: str, task: str = ALL_CONFIG, revision: str | None = None) -> list[dict[str, Any]]:
    """Every row of ``task`` in ``dataset`` (folder, file / glob or Hub repo id), in shard order."""
    shards = locate_shards(dataset, task, revision=revision)
    rows: list[dict[str, Any]] = []
    for path in shards.files:
        for table in iter_batches(path, shards.format, tasks=shards.task_filter):
            rows.extend(table.to_pylist())
    return rows


def group_rows(rows: list[dict[str, Any]], image_dirs: Mapping[str, str]) -> QAImages:
    """Group ``rows`` by ``(source, image_id)`` (first appearance order) and find each image's file."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["source"], row["image_id"]), []).append(row)
    paths: dict[tuple[str, str], str] = {}
    by_source: dict[str, list[str]] = {}
    for source, image_id in groups:
        by_source.setdefault(source, []).append(image_id)
    out = QAImages(images=[], rows=len(rows))
    for source, ids in by_source.items():
        root = image_dirs.get(source)
        if root is None:
            continue
        found = get_resolver(source, root).resolve_many(ids)
        paths.update({(source, i): p for i, p in found.items()})
    for (source, image_id), group in groups.items():
        path = paths.get((source, image_id))
        if path is None:
            reason = NO_IMAGE_DIR if source not in image_dirs else MISSING_IMAGE
            out.missing[reason] += len(group)
            out.missing_images[reason] += 1
            continue
        first = group[0]
        out.images.append(QAImage(source, image_id, path, int(first["width"]), int(first["height"]), group))
    if out.missing:
        logger.warning("left out rows whose image was not found: %s (image dirs: %s)", out.describe_missing(),
                       ", ".join(f"{s}={d}" for s, d in sorted(image_dirs.items())) or "none")
    return out


def load_qa(dataset: str, image_dirs: Mapping[str, str], task: str = ALL_CONFIG, revision: str | None = None) -> QAImages:
    """The rows of ``dataset`` grouped by image, with the images' files under ``image_dirs`` (source -> folder)."""
    return group_rows(read_rows(dataset, task, revision), image_dirs)
