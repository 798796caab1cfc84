"""Readers: turn a source's annotations and images into :class:`~.records.Record` objects.

Every reader lists its items first (image ids, sorted, deterministic) and then reads any subset of
them, so executors can split the work into stable shards whatever the number of workers::

    reader = CocoReader("objects365_val.json", images="images/", source="objects365")
    ids = reader.items()                         # sorted image ids
    for record in reader.read_shard(3, 16):      # the 4th of 16 contiguous slices of ``ids``
        ...

Readers are the first step of a pipeline: ``reader.run(None, rank, world_size)`` yields the records
of shard ``rank`` of ``world_size``.

**Pixel grid.** Boxes come out in pixels on the EXIF-transposed grid (what ``PIL.ImageOps.exif_transpose``
and ``datasets.Image`` give). The image header is read for every record (``Image.open`` reads the
header and EXIF only, no pixel decode) and the annotation's ``width``/``height`` are reconciled with it:

* equal to the transposed size: boxes are used as they are;
* equal to the *raw* (stored, pre-rotation) size of an image whose EXIF orientation swaps the axes
  (orientations 5-8): the boxes were drawn on the raw grid and are mapped through the same
  transform (note ``boxes_exif_transposed``);
* otherwise, with ``on_size_mismatch="rescale"`` and the same aspect ratio (within 2 %) as the
  transposed (or raw) grid, boxes are scaled to it (note ``size_rescaled``): the annotation refers
  to a resized copy of the image;
* otherwise the image is dropped (``size_mismatch``): a different aspect ratio means a crop or a
  different image, and a rescale would put boxes in the wrong place.

For orientations 2-4 the raw and transposed sizes agree, so boxes are taken to be on the transposed
grid, as the dataset contract states.

**Bad input** is a policy, ``on_bad_input``: ``"skip"`` (default; counted by reason), ``"warn"``
(counted and logged) or ``"error"`` (raise ``BadInputError`` naming the value). Structurally broken
files (unparseable JSON, CSVs without the required columns) always raise. Counts:

* ``reader.stats.dropped``: images dropped whole (``missing_image``, ``unreadable_image``,
  ``size_mismatch``, ``duplicate_image_id``, ``malformed_line``, ...);
* ``reader.objects_dropped``: boxes / points dropped (``bbox_not_finite``, ``bbox_zero_area``,
  ``bbox_outside_image``, ``unknown_category``, ...);
* ``reader.notes``: fixes applied without a drop (``bbox_clipped``, ``size_rescaled``, ...).

Problems found while parsing the whole file (malformed lines, annotations of unknown images) are
counted once, with shard 0, so merged stats count each exactly once.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .base import Step
from .records import NUM_KEYPOINTS, Detections, Record

logger = logging.getLogger(__name__)

Policy = Literal["error", "warn", "skip"]
POLICIES: tuple[str, ...] = ("error", "warn", "skip")
SizePolicy = Literal["rescale", "drop"]
SOURCES: tuple[str, ...] = ("objects365", "openimages", "pixmo", "folder", "hf", "fiftyone")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ASPECT_TOLERANCE = 0.02  # relative aspect-ratio difference still treated as "the same image, resized"
_MAX_LOGGED_PER_REASON = 5  # "warn" logs the first few cases of each reason, then only counts
_EXIF_ORIENTATION = 0x0112


class BadInputError(ValueError):
    """Raised for bad input under ``on_bad_input="error"`` (and always for broken files)."""


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice of ``n`` sorted items for ``shard`` of ``num_shards`` (balanced within 1)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..num_shards-1, got shard={shard}, num_shards={num_shards}")
    return slice(shard * n // num_shards, (shard + 1) * n // num_shards)


# ---------------------------------------------------------------------------------------------
# Image headers and the EXIF transform
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """Size of an image file without decoding it: raw (stored) and EXIF-transposed."""

    raw_width: int
    raw_height: int
    orientation: int = 1

    @property
    def swaps_axes(self) -> bool:
        return self.orientation in (5, 6, 7, 8)

    @property
    def width(self) -> int:
        return self.raw_height if self.swaps_axes else self.raw_width

    @property
    def height(self) -> int:
        return self.raw_width if self.swaps_axes else self.raw_height


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Open ``path`` lazily (header and EXIF only) and return its sizes and EXIF orientation."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation not in range(1, 9):
        orientation = 1  # out-of-spec values are ignored by exif_transpose too
    return ImageHeader(width, height, int(orientation))


def exif_transform_points(xy: np.ndarray, orientation: int, raw_width: float, raw_height: float) -> np.ndarray:
    """Map points ``(..., 2)`` from the raw grid to the grid ``ImageOps.exif_transpose`` gives.

    Works on continuous coordinates (pixel edges), so box corners map exactly.
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    w, h = raw_width, raw_height
    mapping = {
        1: (x, y),
        2: (w - x, y),  # FLIP_LEFT_RIGHT
        3: (w - x, h - y),  # ROTATE_180
        4: (x, h - y),  # FLIP_TOP_BOTTOM
        5: (y, x),  # TRANSPOSE
        6: (h - y, x),  # ROTATE_270 (90 degrees clockwise)
        7: (h - y, w - x),  # TRANSVERSE
        8: (y, w - x),  # ROTATE_90 (90 degrees counter-clockwise)
    }
    if orientation not in mapping:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
    nx, ny = mapping[orientation]
    return np.stack([nx, ny], axis=-1)


def transform_boxes(xyxy: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a point transform to ``(N, 4)`` boxes, returning axis-aligned ``x1<=x2, y1<=y2`` boxes."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    a = fn(xyxy[:, 0:2])
    b = fn(xyxy[:, 2:4])
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


def _same_aspect(w1: float, h1: float, w2: float, h2: float) -> bool:
    r1, r2 = w1 / h1, w2 / h2
    return abs(r1 - r2) <= ASPECT_TOLERANCE * r2


class ImageIndex:
    """Find image files under a root: by relative path (any suffix of it), else by file stem.

    The stem index (one ``os.walk``, sorted) is built only when a direct lookup fails, so datasets
    laid out as their annotations say cost nothing extra.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self._by_stem: dict[str, str] | None = None

    def _stems(self) -> dict[str, str]:
        if self._by_stem is None:
            index: dict[str, str] = {}
            if self.root is not None and self.root.is_dir():
                for dirpath, dirnames, filenames in os.walk(self.root):
                    dirnames.sort()
                    for name in sorted(filenames):
                        if name.startswith("."):
                            continue
                        p = Path(name)
                        suffix = p.suffix.lower()
                        # Pixmo images are often named by their sha256 with no extension.
                        stem = p.stem if suffix in IMAGE_EXTENSIONS else name
                        index.setdefault(stem, os.path.join(dirpath, name))
            self._by_stem = index
            logger.debug("indexed %d image files under %s", len(index), self.root)
        return self._by_stem

    def find(self, relpath: str | None = None, stem: str | None = None) -> str | None:
        if self.root is None:
            return None
        if relpath:
            parts = Path(relpath).parts
            # "images/v2/patch16/x.jpg" is found under root "images/v2", "images", or the patch dir.
            for i in range(len(parts)):
                candidate = self.root.joinpath(*parts[i:])
                if candidate.is_file():
                    return str(candidate)
        if stem:
            for ext in ("", ".jpg", ".jpeg", ".png"):
                candidate = self.root / f"{stem}{ext}"
                if candidate.is_file():
                    return str(candidate)
            return self._stems().get(stem)
        return None


# ---------------------------------------------------------------------------------------------
# Base reader
# ---------------------------------------------------------------------------------------------


_NOTE_ISSUES = frozenset({"keypoints_malformed"})


def _issue(raw: _Raw, reason: str) -> None:
    """Remember an annotation problem of one image (counted when the image is read, in its shard)."""
    if raw.issues is None:
        raw.issues = Counter()
    raw.issues[reason] += 1


@dataclass(slots=True)
class _Raw:
    """What a reader knows about one image before it looks at the file."""

    image_id: str
    relpath: str | None = None  # path relative to the images root, as the annotation names it
    path: str | None = None  # absolute path when already known
    width: float | None = None  # annotation's image size (None: take the header's)
    height: float | None = None
    relative: bool = False  # boxes in 0..1 (OpenImages): no size reconciliation needed
    boxes: list[tuple[Any, str]] | None = None  # (xyxy in pixels or 0..1, label)
    flags: list[dict[str, Any]] | None = None  # per box: is_group, is_depiction, ..., keypoints, score
    issues: Counter | None = None  # object-level problems found while parsing, counted at read time
    extra: dict[str, Any] | None = None


class Reader(Step):
    """Base class of readers. Subclasses override :meth:`_load` (parse once, return ``{id: _Raw}``).

    Args:
        images: root folder of the image files.
        source: source name written into every row (``objects365``, ``openimages``, ``pixmo`` or
            any name a user gives their own images).
        on_bad_input: ``"skip"`` | ``"warn"`` | ``"error"`` (see the module docstring).
        on_size_mismatch: ``"rescale"`` | ``"drop"``.
    """

    name = "reader"
    default_source = "unknown"

    def __init__(
        self,
        images: str | os.PathLike | None = None,
        source: str | None = None,
        on_bad_input: Policy = "skip",
        on_size_mismatch: SizePolicy = "rescale",
    ) -> None:
        super().__init__()
        if on_bad_input not in POLICIES:
            raise ValueError(f"on_bad_input must be one of {POLICIES}, got {on_bad_input!r}")
        if on_size_mismatch not in ("rescale", "drop"):
            raise ValueError(f"on_size_mismatch must be 'rescale' or 'drop', got {on_size_mismatch!r}")
        self.images = ImageIndex(images)
        self.source = source or self.default_source
        self.on_bad_input = on_bad_input
        self.on_size_mismatch = on_size_mismatch
        self.objects_dropped: Counter = Counter()
        self.notes: Counter = Counter()
        self._index: dict[str, _Raw] | None = None
        self._load_drops: Counter = Counter()  # image-level problems found at parse time
        self._load_object_drops: Counter = Counter()
        self._logged: Counter = Counter()

    # -- policy ------------------------------------------------------------------------------
    def _bad(self, reason: str, message: str, counter: Counter, n: int = 1) -> None:
        """Apply ``on_bad_input`` to one problem: raise, or count (and log under "warn")."""
        if self.on_bad_input == "error":
            raise BadInputError(f"{self.source}: {message} [{reason}]")
        counter[reason] += n
        if self.on_bad_input == "warn" and self._logged[reason] < _MAX_LOGGED_PER_REASON:
            self._logged[reason] += 1
            more = " (further cases are only counted)" if self._logged[reason] == _MAX_LOGGED_PER_REASON else ""
            logger.warning("%s: %s [%s]%s", self.source, message, reason, more)

    def bad_image(self, reason: str, message: str) -> None:
        self._bad(reason, message, self.stats.dropped)

    def bad_object(self, reason: str, message: str, n: int = 1) -> None:
        self._bad(reason, message, self.objects_dropped, n)

    # -- items and reading -------------------------------------------------------------------
    def _load(self) -> dict[str, _Raw]:
        raise NotImplementedError

    def index(self) -> dict[str, _Raw]:
        if self._index is None:
            self._index = self._load()
        return self._index

    def items(self) -> list[str]:
        """Every image id this reader can produce, sorted (the unit executors shard)."""
        return sorted(self.index())

    def read(self, items: Iterable[str]) -> Iterator[Record]:
        """Records of the given image ids (bad ones are counted and skipped, per policy)."""
        index = self.index()
        for image_id in items:
            self.stats.records_in += 1
            if image_id not in index:
                raise KeyError(f"{self.source}: unknown image id {image_id!r}")
            record = self._make_record(index[image_id])
            if record is not None:
                self.stats.records_out += 1
                yield record

    def read_shard(self, shard: int, num_shards: int) -> Iterator[Record]:
        """Records of the ``shard``-th contiguous slice of :meth:`items`."""
        items = self.items()
        if shard == 0:  # parse-time problems are counted once, with the first shard
            self.stats.dropped.update(self._load_drops)
            self.objects_dropped.update(self._load_object_drops)
        yield from self.read(items[shard_slice(len(items), shard, num_shards)])

    def run(self, records: Iterable[Record] | None = None, rank: int = 0, world_size: int = 1) -> Iterator[Record]:
        import time

        it = self.read_shard(rank, world_size)
        while True:
            start = time.perf_counter()
            record = next(it, None)
            self.stats.seconds += time.perf_counter() - start
            if record is None:
                return
            yield record

    # -- shared record building --------------------------------------------------------------
    def _resolve(self, raw: _Raw) -> str | None:
        if raw.path is not None:
            return raw.path if os.path.isfile(raw.path) else None
        return self.images.find(raw.relpath, raw.image_id)

    def _make_record(self, raw: _Raw) -> Record | None:
        path = self._resolve(raw)
        if path is None:
            self.bad_image("missing_image", f"image {raw.image_id!r} ({raw.relpath or raw.path or 'by id'}) not found under {self.images.root}")
            return None
        try:
            header = read_header(path)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for broken files
            self.bad_image("unreadable_image", f"cannot read image header of {path!r}: {err}")
            return None
        fn = self._grid_transform(raw, header)
        if fn is False:
            return None
        for reason, n in sorted((raw.issues or {}).items()):
            # a malformed keypoint list loses the keypoints, not the box: a note, not a dropped object
            counter = self.notes if reason in _NOTE_ISSUES else self.objects_dropped
            self._bad(reason, f"{n} annotation(s) of image {raw.image_id!r}: {reason}", counter, n)
        objects = self._objects(raw, header, fn)
        record = Record(
            source=self.source,
            image_id=raw.image_id,
            width=header.width,
            height=header.height,
            image_path=path,
            objects=objects,
        )
        self._finish(record, raw, header, fn)
        return record

    def _grid_transform(self, raw: _Raw, header: ImageHeader):
        """Point transform from annotation grid to transposed pixels; ``None`` = identity, ``False`` = drop."""
        if raw.relative or raw.width is None or raw.height is None:
            return None
        aw, ah = float(raw.width), float(raw.height)
        W, H = header.width, header.height
        if (aw, ah) == (W, H):
            return None
        rw, rh = header.raw_width, header.raw_height
        if header.swaps_axes and (aw, ah) == (rw, rh):
            self.notes["boxes_exif_transposed"] += 1
            return lambda xy: exif_transform_points(xy, header.orientation, rw, rh)
        if aw > 0 and ah > 0 and self.on_size_mismatch == "rescale":
            if _same_aspect(aw, ah, W, H):
                self.notes["size_rescaled"] += 1
                return lambda xy: np.asarray(xy, np.float64) * np.array([W / aw, H / ah])
            if header.swaps_axes and _same_aspect(aw, ah, rw, rh):
                self.notes["size_rescaled"] += 1
                self.notes["boxes_exif_transposed"] += 1
                return lambda xy: exif_transform_points(
                    np.asarray(xy, np.float64) * np.array([rw / aw, rh / ah]), header.orientation, rw, rh
                )
        self.bad_image(
            "size_mismatch",
            f"image {raw.image_id!r}: annotation size {raw.width}x{raw.height} does not match the image "
            f"({W}x{H} after EXIF orientation {header.orientation}, policy on_size_mismatch={self.on_size_mismatch!r})",
        )
        return False

    def _objects(self, raw: _Raw, header: ImageHeader, fn) -> Detections:
        if not raw.boxes:
            return Detections.empty()
        W, H = header.width, header.height
        xyxy = np.array([b for b, _ in raw.boxes], dtype=np.float64).reshape(-1, 4)
        labels = [label for _, label in raw.boxes]
        flags = raw.flags or [{} for _ in labels]
        if raw.relative:
            xyxy = xyxy * np.array([W, H, W, H], dtype=np.float64)
        elif fn is not None:
            xyxy = transform_boxes(xyxy, fn)
        keep = self.clean_boxes(xyxy, W, H, raw.image_id)
        xyxy = xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, W)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, H)
        idx = np.flatnonzero(keep)
        keypoints = np.full((len(idx), NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
        for out_i, i in enumerate(idx):
            kp = flags[i].get("keypoints")
            if kp is None:
                continue
            kp = np.array(kp, dtype=np.float64)
            if fn is not None:
                kp[:, :2] = fn(kp[:, :2])
            keypoints[out_i] = kp

        def col(key: str, default):
            return [flags[i].get(key, default) for i in idx]

        return Detections(
            xyxy=xyxy[idx],
            labels=[labels[i] for i in idx],
            scores=col("score", 1.0),
            is_group=col("is_group", False),
            is_depiction=col("is_depiction", False),
            is_occluded=col("is_occluded", False),
            is_truncated=col("is_truncated", False),
            keypoints=keypoints,
        )

    def clean_boxes(self, xyxy: np.ndarray, width: int, height: int, image_id: str) -> np.ndarray:
        """Mask of boxes to keep: non-finite, zero-area and fully-outside boxes are dropped (counted);
        partly-outside boxes are kept and clipped by the caller (noted ``bbox_clipped``)."""
        keep = np.ones(len(xyxy), dtype=bool)
        for i, box in enumerate(xyxy):
            x1, y1, x2, y2 = box
            if not np.isfinite(box).all():
                self.bad_object("bbox_not_finite", f"image {image_id!r}: box {box.tolist()} is not finite")
            elif x2 <= x1 or y2 <= y1:
                self.bad_object("bbox_zero_area", f"image {image_id!r}: box {box.tolist()} has no area")
            elif min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
                self.bad_object("bbox_outside_image", f"image {image_id!r}: box {box.tolist()} is outside the {width}x{height} image")
            else:
                if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                    self.notes["bbox_clipped"] += 1
                continue
            keep[i] = False
        return keep

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        """Hook for reader-specific fields (exhaustive labels, points)."""


def _xywh_to_xyxy(b: Sequence[Any]) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


def _as_bbox(value: Any) -> list[float] | None:
    """4 numbers (as floats, NaN kept), or ``None`` if ``value`` is not 4 numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _coco_keypoints(value: Any) -> np.ndarray | None:
    """COCO ``keypoints`` (17*3 numbers) -> ``(17, 3)``; unlabeled points (v=0) get NaN x, y."""
    if value is None:
        return None
    try:
        kp = np.asarray(value, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
    except (TypeError, ValueError):
        return None
    kp[kp[:, 2] <= 0, :2] = np.nan
    return kp


# ---------------------------------------------------------------------------------------------
# Annotation tables: parse a big annotation file once, read any shard of it
# ---------------------------------------------------------------------------------------------

CACHE_VERSION = 1  # bump when the table layout or the parsing changes: older caches are rebuilt
ROWS_PER_GROUP = 1024  # images per Parquet row group: the unit a worker reads
_CHUNK_ROWS = 1 << 16  # parsed boxes buffered as Python tuples before they become Arrow arrays
_META_KEY = b"spatialforge.annotations"
# problems of one image found while parsing (counted when the image is read, in its shard)
_ISSUES: tuple[str, ...] = ("unknown_category", "bbox_malformed", "keypoints_malformed", "malformed_points", "duplicate_row")
_ISSUE_CODE = {name: i + 1 for i, name in enumerate(_ISSUES)}  # kind 0 is a box


class _Events:
    """Problems found while parsing a whole file (counted once, with shard 0): count per reason and
    the first few messages, in order of first occurrence. Stored with the cache, so a reuse reports
    (and, under ``"warn"``/``"error"``, logs or raises) exactly what a fresh parse would."""

    def __init__(self, raise_as: str | None = None) -> None:
        self.items: dict[tuple[str, str], list] = {}  # (counter, reason) -> [count, messages]
        self.raise_as = raise_as  # source name: raise on the first problem (policy "error")

    def add(self, counter: Literal["image", "object"], reason: str, message: str | Callable[[], str], n: int = 1) -> None:
        entry = self.items.setdefault((counter, reason), [0, []])
        entry[0] += n
        if len(entry[1]) < _MAX_LOGGED_PER_REASON or self.raise_as is not None:
            text = message() if callable(message) else message  # built lazily: millions of problems may be counted
            if self.raise_as is not None:
                raise BadInputError(f"{self.raise_as}: {text} [{reason}]")
            entry[1].append(text)

    def to_json(self) -> list[list[Any]]:
        return [[counter, reason, n, messages] for (counter, reason), (n, messages) in self.items.items()]

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> _Events:
        out = cls()
        for counter, reason, n, messages in data:
            out.items[(counter, reason)] = [int(n), list(messages)]
        return out


class _Rows:
    """Boxes (and per-image problems) of a parse, in file order, as Arrow chunks rather than Python objects.

    ``img`` is an image's index in the parse's image list (int) or its id (str, OpenImages).
    """

    def __init__(self, img_type: Any) -> None:
        import pyarrow as pa

        self.schema = pa.schema([
            ("img", img_type), ("kind", pa.int8()),
            ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
            ("label", pa.int32()), ("is_group", pa.bool_()), ("is_depiction", pa.bool_()),
            ("is_occluded", pa.bool_()), ("is_truncated", pa.bool_()), ("score", pa.float64()),
            ("keypoints", pa.list_(pa.float64())),
        ])
        self._rows: list[tuple] = []
        self._batches: list[Any] = []

    def box(self, img: Any, xyxy: Sequence[float], label: int, is_group: bool = False, is_depiction: bool = False,
            is_occluded: bool = False, is_truncated: bool = False, score: float = 1.0, keypoints: list[float] | None = None) -> None:
        self._rows.append((img, 0, *xyxy, label, is_group, is_depiction, is_occluded, is_truncated, score, keypoints))
        if len(self._rows) >= _CHUNK_ROWS:
            self._flush()

    def issue(self, img: Any, reason: str, label: int = -1) -> None:
        self._rows.append((img, _ISSUE_CODE[reason], math.nan, math.nan, math.nan, math.nan, label, False, False, False, False, 1.0, None))
        if len(self._rows) >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            columns = list(zip(*self._rows))
            self._batches.append(pa.RecordBatch.from_arrays(
                [pa.array(col, type=field.type) for col, field in zip(columns, self.schema)], schema=self.schema))
            self._rows = []

    def table(self) -> Any:
        import pyarrow as pa

        self._flush()
        return pa.Table.from_batches(self._batches, schema=self.schema).combine_chunks()


def _offsets(rank: np.ndarray, n: int) -> Any:
    import pyarrow as pa

    return pa.array(np.concatenate([[0], np.cumsum(np.bincount(rank, minlength=n))]).astype(np.int32))


def _assemble(images: Any, rows: Any, labels: Sequence[str]) -> Any:
    """One row per image, sorted by image id, with its boxes and problem counts as list columns.

    ``images``: Arrow table (image_id, relpath, width, height, relative, optional extra columns),
    one row per image; ``rows``: :class:`_Rows` table with ``img`` an index into ``images``. The
    boxes of an image keep their file order (stable sort).
    """
    import pyarrow as pa

    n = images.num_rows
    order = np.asarray(images["image_id"].to_numpy(zero_copy_only=False).argsort(kind="stable")) if n else np.zeros(0, np.int64)
    images = images.take(pa.array(order, pa.int64()))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    img = rows["img"].to_numpy()
    kind = rows["kind"].to_numpy()
    r = rank[img] if len(img) else np.zeros(0, np.int64)

    box_rows = np.flatnonzero(kind == 0)
    perm = box_rows[np.argsort(r[box_rows], kind="stable")]
    boxes = rows.take(pa.array(perm, pa.int64())).combine_chunks()
    offsets = _offsets(r[perm], n)
    xyxy = np.stack([boxes[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1)
    label = pa.array(list(labels), pa.string()).take(boxes["label"].combine_chunks())  # boxes' labels are all known
    columns = {
        "xyxy": pa.FixedSizeListArray.from_arrays(pa.array(xyxy, pa.float64()), 4),
        "label": label,
        **{c: boxes[c].combine_chunks() for c in ("is_group", "is_depiction", "is_occluded", "is_truncated", "score", "keypoints")},
    }
    out = images
    for name, values in columns.items():
        out = out.append_column(name, pa.ListArray.from_arrays(offsets, values))

    problems = np.flatnonzero(kind != 0)
    key, count = np.unique(r[problems] * 16 + kind[problems], return_counts=True)
    reasons = np.array(("",) + _ISSUES, dtype=object)[key % 16]
    issue_offsets = _offsets(key // 16, n)
    out = out.append_column("issue_reason", pa.ListArray.from_arrays(issue_offsets, pa.array(reasons, pa.string())))
    return out.append_column("issue_count", pa.ListArray.from_arrays(issue_offsets, pa.array(count, pa.int64())))


def _images_table(image_id: Sequence[str] | Any, relpath: Sequence[str | None] | None = None, width=None, height=None,
                  relative: bool = False, **extra: Any) -> Any:
    import pyarrow as pa

    n = len(image_id)
    columns = {
        "image_id": pa.array(image_id, pa.string()),
        "relpath": pa.array(relpath if relpath is not None else [None] * n, pa.string()),
        "width": pa.array(width if width is not None else [None] * n, pa.float64()),
        "height": pa.array(height if height is not None else [None] * n, pa.float64()),
        "relative": pa.array([relative] * n, pa.bool_()),
        **extra,
    }
    return pa.table(columns)


def _num(v: float | None) -> float | int | None:
    """Sizes come back from Arrow as floats; integral ones print as the integers the file had."""
    return int(v) if v is not None and float(v).is_integer() else v


def _raw_from_row(row: dict[str, Any]) -> _Raw:
    """The :class:`_Raw` of one table row (the same boxes, flags and problems the parse found)."""
    flags: list[dict[str, Any]] = []
    for g, d, o, t, s, kp in zip(row["is_group"], row["is_depiction"], row["is_occluded"], row["is_truncated"], row["score"], row["keypoints"]):
        f: dict[str, Any] = {"is_group": g, "is_depiction": d, "is_occluded": o, "is_truncated": t, "score": s}
        if kp is not None:
            f["keypoints"] = np.asarray(kp, np.float64).reshape(NUM_KEYPOINTS, 3)
        flags.append(f)
    extra = json.loads(row["extra"]) if row.get("extra") else None
    if "verified" in row:
        extra = {**(extra or {}), "verified": row["verified"]}
    return _Raw(
        image_id=row["image_id"],
        relpath=row["relpath"],
        width=_num(row["width"]),
        height=_num(row["height"]),
        relative=row["relative"],
        boxes=list(zip(row["xyxy"], row["label"])),
        flags=flags,
        issues=Counter(dict(zip(row["issue_reason"], row["issue_count"]))) or None,
        extra=extra,
    )


class AnnotationTable:
    """The per-image annotation table of a reader: in memory, or a Parquet file read by row group.

    Rows are sorted by ``image_id``; a worker reads the row groups of its shard only, so its memory
    follows the shard (one row group at a time), not the dataset.
    """

    def __init__(self, table: Any = None, path: str | os.PathLike | None = None) -> None:
        if (table is None) == (path is None):
            raise ValueError("give an Arrow table or a Parquet path, not both or neither")
        self.path = Path(path) if path is not None else None
        self._table = table
        self._file = None
        if path is not None:
            import pyarrow.parquet as pq

            self._file = pq.ParquetFile(path)
            meta = self._file.metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.num_rows = meta.num_rows
        else:
            self.num_rows = table.num_rows
            sizes = [min(ROWS_PER_GROUP, self.num_rows - s) for s in range(0, self.num_rows, ROWS_PER_GROUP)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._group: tuple[int, list[dict[str, Any]]] | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        schema = self._file.schema_arrow if self._file is not None else self._table.schema
        return json.loads((schema.metadata or {})[_META_KEY])

    def image_ids(self) -> list[str]:
        if self._file is not None:
            return self._file.read(columns=["image_id"])["image_id"].to_pylist()
        return self._table["image_id"].to_pylist()

    def _read_group(self, g: int) -> list[dict[str, Any]]:
        if self._file is not None:
            return self._file.read_row_group(g).to_pylist()
        start = int(self._starts[g])
        return self._table.slice(start, int(self._starts[g + 1]) - start).to_pylist()

    def row(self, pos: int) -> dict[str, Any]:
        if not 0 <= pos < self.num_rows:
            raise IndexError(f"row {pos} is outside 0..{self.num_rows - 1}")
        g = int(np.searchsorted(self._starts, pos, side="right")) - 1
        if self._group is None or self._group[0] != g:
            self._group = (g, self._read_group(g))  # one row group in memory at a time
        return self._group[1][pos - int(self._starts[g])]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Exclusive lock on ``path`` (POSIX): workers that start together convert once, the others wait."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent converters each write their own tmp file; rename stays atomic
        yield False
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_parquet_atomic(path: Path, table: Any) -> None:
    """Write ``table`` to ``path`` through a tmp file + rename, so a kill never leaves a half file under ``path``."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, row_group_size=ROWS_PER_GROUP)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class TableReader(Reader):
    """A reader whose annotations are parsed once into an :class:`AnnotationTable`.

    Subclasses override :meth:`_inputs` (the files parsed) and :meth:`_convert` (parse them into
    the table). With ``cache_dir`` the table is a Parquet file named after the inputs' fingerprint
    (path, size, mtime of every input file): the first reader converts (under a file lock, written
    atomically), every later reader (other workers, reruns, resumes) reads only the row groups of its
    shard; a changed input gets a new fingerprint and is converted again. Without ``cache_dir`` the
    table is built in memory by each reader.

    Problems found while parsing (``_load_drops`` / ``_load_object_drops``) are stored with the table
    and counted once, with shard 0; problems of one image are counted when that image is read.
    """

    kind = "table"  # cache file prefix

    def __init__(self, images: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_path: Path | None = None  # the cache file in use
        self.cache_built = False  # True when this reader converted the input (False: reused, or in memory)
        self._table: AnnotationTable | None = None
        self._positions: dict[str, int] | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def _inputs(self) -> list[Path]:
        raise NotImplementedError

    def _convert(self, events: _Events) -> Any:
        """Parse the inputs into one Arrow table (see :func:`_assemble`); report problems to ``events``."""
        raise NotImplementedError

    # -- the table ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the inputs (absolute path, size, mtime) and of the table format."""
        inputs = []
        for p in self._inputs():
            st = p.stat()
            inputs.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        blob = json.dumps({"version": CACHE_VERSION, "reader": type(self).__name__, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def table(self) -> AnnotationTable:
        """The annotation table (converted, or opened from the cache); parse-time problems apply the policy here."""
        if self._table is None:
            if self.cache_dir is None:
                events = _Events(self.source if self.on_bad_input == "error" else None)
                table = AnnotationTable(self._convert(events))
            else:
                table, events = self._cached()
            self._replay(events)
            self._table = table
        return self._table

    def prepare(self) -> None:
        """Convert the input now (once, before workers start), unless a valid cache exists."""
        self.table()

    def _open_cache(self, path: Path, fingerprint: str) -> tuple[AnnotationTable, _Events] | None:
        if not path.is_file():
            return None
        import pyarrow as pa

        try:
            table = AnnotationTable(path=path)
            meta = table.metadata
            if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
                return None
            return table, _Events.from_json(meta["events"])
        except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as err:
            logger.warning("%s: ignoring unreadable annotation cache %s (%s); converting again", self.source, path, err)
            return None

    def _cached(self) -> tuple[AnnotationTable, _Events]:
        fingerprint = self.fingerprint()
        path = self.cache_dir / f"{self.kind}-{fingerprint}.parquet"
        self.cache_path = path
        opened = self._open_cache(path, fingerprint)
        if opened is not None:
            logger.info("%s: reusing the annotation table %s", self.source, path)
            return opened
        import time

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.cache_dir / f"{self.kind}.lock") as locked:
            opened = self._open_cache(path, fingerprint)  # another process may have converted while we waited
            if opened is not None:
                return opened
            if locked:  # only the lock holder writes: tmp files left by a kill, and tables of older inputs, go
                for stale in self.cache_dir.glob(f"{self.kind}-*"):
                    stale.unlink(missing_ok=True)
            start = time.perf_counter()
            events = _Events()  # recorded, not raised: the policy is applied on every use of the cache
            table = self._convert(events)
            meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "reader": type(self).__name__,
                    "inputs": [str(p) for p in self._inputs()], "events": events.to_json(),
                    "images": table.num_rows, "seconds": round(time.perf_counter() - start, 3)}
            table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
            _write_parquet_atomic(path, table)
            del table
            self.cache_built = True
            logger.info("%s: converted %s into %s (%d images, %.1f s)", self.source,
                        ", ".join(str(p) for p in self._inputs()), path, meta["images"], meta["seconds"])
            return AnnotationTable(path=path), events

    def _replay(self, events: _Events) -> None:
        """Apply the policy to parse-time problems (raise / log the stored messages) and count them."""
        for (counter_name, reason), (n, messages) in events.items.items():
            counter = self._load_drops if counter_name == "image" else self._load_object_drops
            for message in messages:
                self._bad(reason, message, counter)
            counter[reason] += n - len(messages)

    # -- reading -----------------------------------------------------------------------------
    def items(self) -> list[str]:
        return self.table().image_ids()

    def index(self) -> dict[str, _Raw]:
        """Every image's annotations (the whole table in memory: prefer :meth:`read_shard`)."""
        table = self.table()
        return {raw.image_id: raw for raw in (_raw_from_row(table.row(i)) for i in range(table.num_rows))}

    def _read_positions(self, positions: Iterable[int]) -> Iterator[Record]:
        table = self.table()
        for pos in positions:
            self.stats.records_in += 1
            record = self._make_record(_raw_from_row(table.row(pos)))
            if record is not None:
                self.stats.records_out += 1
                yield record

    def read(self, items: Iterable[str]) -> Iterator[Record]:
        table = self.table()
        if self._positions is None:
            self._positions = {image_id: i for i, image_id in enumerate(table.image_ids())}
        for image_id in items:
            pos = self._positions.get(image_id)
            if pos is None:
                self.stats.records_in += 1
                raise KeyError(f"{self.source}: unknown image id {image_id!r}")
            yield from self._read_positions([pos])

    def read_shard(self, shard: int, num_shards: int) -> Iterator[Record]:
        table = self.table()
        rows = shard_slice(table.num_rows, shard, num_shards)
        if shard == 0:  # parse-time problems are counted once, with the first shard
            self.stats.dropped.update(self._load_drops)
            self.objects_dropped.update(self._load_object_drops)
        yield from self._read_positions(range(rows.start, rows.stop))


# ---------------------------------------------------------------------------------------------
# Streaming JSON: the top-level arrays of a COCO file, one element at a time
# ---------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


class _JsonStream:
    """Decode a JSON document from a text file piece by piece (``json.JSONDecoder.raw_decode`` on a
    sliding buffer), so the elements of a several-GB top-level array are never all in memory."""

    def __init__(self, f, name: str, chunk_chars: int = 1 << 20) -> None:
        self.f, self.name, self.chunk = f, name, chunk_chars
        self.buf, self.pos, self.eof, self.dropped = "", 0, False, 0
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.dropped += self.pos
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def error(self, what: str) -> BadInputError:
        return BadInputError(f"{self.name!r} is not valid JSON: {what} (character {self.dropped + self.pos})")

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise self.error(f"expected one of {list(chars)}, got {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._fill():  # the value may continue in the next chunk
                    continue
                self.pos = err.pos
                raise self.error(err.msg) from err
            if isinstance(obj, (int, float)) and not isinstance(obj, bool) and not self.eof:
                # a number cut by the buffer's end decodes as a shorter number: decode it again
                # once a delimiter follows it
                after = _WS.match(self.buf, end).end()
                if after >= len(self.buf) or self.buf[after] not in ",]}:":
                    if self._fill():
                        continue
            self.pos = end
            return obj

    def _elements(self, callback: Callable[[Any], None] | None) -> None:
        """The elements of an array up to its ``]`` (the ``[`` is consumed)."""
        decode = self.decoder.raw_decode
        while True:
            buf, pos = self.buf, self.pos
            # fast path (compact JSON): an element followed, inside the buffer, by its delimiter
            if pos < len(buf) and buf[pos] not in " \t\n\r":
                try:
                    element, end = decode(buf, pos)
                except json.JSONDecodeError:
                    end = len(buf)
                if end < len(buf) and buf[end] in ",]":
                    self.pos = end + 1
                    if callback is not None:
                        callback(element)
                    if buf[end] == "]":
                        return
                    continue
            element = self.value()
            if callback is not None:
                callback(element)
            if self.expect(",]") == "]":
                return

    def walk_object(self, on_key: Callable[[str], Callable[[Any], None] | None]) -> dict[str, str]:
        """Walk the top-level object. For each key, ``on_key(key)`` returns a callback for the
        elements of an array value (or ``None``: the value is decoded and dropped). Returns
        ``{key: type of its value}`` ("list" for arrays)."""
        kinds: dict[str, str] = {}
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self.value()
                if not isinstance(key, str):
                    raise self.error(f"object keys must be strings, got {key!r}")
                self.expect(":")
                callback = on_key(key)
                if self.peek() == "[":
                    self.pos += 1
                    kinds[key] = "list"
                    if self.peek() == "]":
                        self.pos += 1
                    else:
                        self._elements(callback)
                else:
                    kinds[key] = type(self.value()).__name__
                if self.expect(",}") == "}":
                    break
        if self.peek():
            raise self.error("extra data after the top-level object")
        return kinds


# ---------------------------------------------------------------------------------------------
# Image folder
# ---------------------------------------------------------------------------------------------


class FolderReader(Reader):
    """Every image file under ``images`` (no boxes); ``image_id`` is the relative path without suffix.

    Example:
        >>> reader = FolderReader("my_photos/", source="my_photos")  # doctest: +SKIP
        >>> reader.items()[:2]                                        # doctest: +SKIP
        ['kitchen/0001', 'kitchen/0002']
    """

    default_source = "folder"

    def _load(self) -> dict[str, _Raw]:
        root = self.images.root
        if root is None or not root.is_dir():
            raise BadInputError(f"images folder {str(root)!r} does not exist")
        out: dict[str, _Raw] = {}
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(os.path.relpath(os.path.join(dirpath, name), root))
        for rel in sorted(Path(f).as_posix() for f in files):
            image_id = rel.rsplit(".", 1)[0]
            if image_id in out:
                self._bad(
                    "duplicate_image_id",
                    f"{rel!r} has the same id {image_id!r} as {out[image_id].relpath!r}; keeping the first",
                    self._load_drops,
                )
                continue
            out[image_id] = _Raw(image_id=image_id, path=str(root / rel), relpath=rel)
        return out


# ---------------------------------------------------------------------------------------------
# COCO-style JSON (Objects365)
# ---------------------------------------------------------------------------------------------


class CocoReader(TableReader):
    """COCO-style detection JSON as Objects365 ships it.

    ``images`` [id, file_name, width, height], ``annotations`` [image_id, category_id, bbox
    ``[x, y, w, h]``, iscrowd, optional 17*3 ``keypoints``], ``categories`` [id, name]. ``image_id`` is
    the file stem; files are found by ``file_name`` relative to ``images`` (any trailing part of it)
    or by stem anywhere under ``images``. ``iscrowd`` becomes ``is_group``; Objects365's ``isfake``
    (a depiction) becomes ``is_depiction``. COCO annotations are exhaustive:
    ``exhaustive_labels=None``.

    The file is decoded one array element at a time (never ``json.load`` of the whole file): peak
    memory of the conversion is the image list as Python objects (about 0.5 KB per image) plus the
    boxes as Arrow columns (about 60 bytes per box, twice while sorting), e.g. about 4 GB for
    Objects365 v2 train (1.7M images, 25M boxes) where ``json.load`` alone needs several times the
    file size. Categories may come anywhere; when ``annotations`` comes before ``images`` in the
    file, the file is read twice.
    """

    default_source = "objects365"
    kind = "coco"

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.annotations = Path(annotations)

    def _inputs(self) -> list[Path]:
        return [self.annotations]

    def _walk(self, on_key: Callable[[str], Callable[[Any], None] | None]) -> dict[str, str]:
        with open(self.annotations, encoding="utf-8") as f:
            stream = _JsonStream(f, str(self.annotations))
            if stream.peek() not in ("{", ""):
                # not an object: decode it (small or broken anyway) to name what it is
                value = stream.value()
                raise BadInputError(
                    f"{str(self.annotations)!r} must be a COCO-style object with lists 'images', 'annotations' and "
                    f"'categories', got keys {type(value).__name__}"
                )
            return stream.walk_object(on_key)

    def _convert(self, events: _Events) -> Any:
        import pyarrow as pa

        path = str(self.annotations)
        labels: list[str] = []
        label_code: dict[str, int] = {}
        categories: dict[Any, int] = {}
        stems: list[str] = []
        relpaths: list[str] = []
        widths: list[float | None] = []
        heights: list[float | None] = []
        by_coco_id: dict[Any, int | None] = {}  # image entry id -> index in stems (None: a dropped duplicate)
        seen_stems: set[str] = set()
        category_refs: dict[Any, int] = {}  # category_id values of annotations -> small ints
        rows = _Rows(pa.int64())

        def on_category(cat: Any) -> None:
            if not isinstance(cat, dict) or "id" not in cat or not cat.get("name"):
                raise BadInputError(f"{path!r}: category entries need 'id' and 'name', got {cat!r}")
            name = str(cat["name"])
            categories[cat["id"]] = label_code.setdefault(name, len(label_code))
            if label_code[name] == len(labels):
                labels.append(name)

        def on_image(entry: Any) -> None:
            if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
                events.add("image", "malformed_image_entry", lambda: f"image entry needs 'id' and 'file_name', got {entry!r}")
                return
            stem = Path(entry["file_name"]).stem
            if entry["id"] in by_coco_id or stem in seen_stems:
                events.add("image", "duplicate_image_id", lambda: (
                    f"image {entry['file_name']!r} (id {entry['id']!r}) repeats an image id or file stem; keeping the first"))
                by_coco_id.setdefault(entry["id"], None)
                return
            width, height = entry.get("width"), entry.get("height")
            if not (_positive(width) and _positive(height)):
                width = height = None  # unknown size: the header decides
            by_coco_id[entry["id"]] = len(stems)
            seen_stems.add(stem)
            stems.append(stem)
            relpaths.append(entry["file_name"])
            widths.append(width)
            heights.append(height)

        def on_annotation(ann: Any) -> None:
            if not isinstance(ann, dict):
                events.add("object", "malformed_annotation", lambda: f"annotation must be an object, got {ann!r}")
                return
            img = by_coco_id.get(ann.get("image_id"), -1)
            if img == -1:
                events.add("object", "annotation_unknown_image",
                           lambda: f"annotation {ann.get('id')!r} refers to unknown image_id {ann.get('image_id')!r}")
                return
            if img is None:  # annotation of a duplicate image entry that was dropped whole
                return
            # categories may come after the annotations (as in COCO's own files): rows carry the
            # category id (interned) and are resolved after the walk, with the same precedence as
            # checking it first (unknown_category wins over bbox_malformed / keypoints_malformed)
            category = ann.get("category_id")
            try:
                ref = category_refs.setdefault(category, len(category_refs))
            except TypeError:  # unhashable id (a list): never a known category
                ref = category_refs.setdefault(_UNHASHABLE, len(category_refs))
            bbox = ann.get("bbox")
            try:
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                    raise TypeError
                x, y, w, h = float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])
            except (TypeError, ValueError):
                rows.issue(img, "bbox_malformed", ref)
                return
            keypoints = None
            if "keypoints" in ann and ann["keypoints"]:
                kp = _coco_keypoints(ann["keypoints"])
                if kp is None:
                    rows.issue(img, "keypoints_malformed", ref)  # the box is kept, without keypoints
                else:
                    keypoints = kp.reshape(-1).tolist()
            rows.box(img, (x, y, x + w, y + h), ref, is_group=bool(ann.get("iscrowd", 0)),
                     is_depiction=bool(ann.get("isfake", 0)), keypoints=keypoints)

        handlers = {"images": on_image, "categories": on_category}
        seen: set[str] = set()
        deferred: list[bool] = []

        def on_key(key: str) -> Callable[[Any], None] | None:
            images_done = "images" in seen  # a key seen before this one was read completely
            seen.add(key)
            if key == "annotations":
                if images_done:
                    return on_annotation
                deferred.append(True)  # images come later: a second pass reads the annotations
                return None
            return handlers.get(key)

        kinds = self._walk(on_key)
        if any(kinds.get(k) != "list" for k in ("images", "annotations", "categories")):
            raise BadInputError(
                f"{path!r} must be a COCO-style object with lists 'images', 'annotations' and 'categories', got keys "
                f"{sorted(kinds)}"
            )
        if deferred:
            self._walk(lambda key: on_annotation if key == "annotations" else None)
        images = _images_table(stems, relpaths, widths, heights)
        del stems, relpaths, widths, heights, by_coco_id, seen_stems
        return _assemble(images, _resolve_categories(rows.table(), category_refs, categories), labels)


_UNHASHABLE = object()


def _resolve_categories(rows: Any, refs: dict[Any, int], categories: dict[Any, int]) -> Any:
    """Replace interned category ids by label codes; rows of unknown categories become ``unknown_category``."""
    import pyarrow as pa

    code = np.full(len(refs), -1, np.int32)
    for value, ref in refs.items():
        if value is not _UNHASHABLE:
            code[ref] = categories.get(value, -1)
    label = code[rows["label"].to_numpy()] if rows.num_rows else np.zeros(0, np.int32)
    kind = rows["kind"].to_numpy().copy()
    unknown = label < 0
    keep = ~(unknown & (kind == _ISSUE_CODE["keypoints_malformed"]))  # no box, so no keypoints to lose
    kind[unknown] = _ISSUE_CODE["unknown_category"]
    rows = rows.set_column(rows.schema.get_field_index("kind"), "kind", pa.array(kind, pa.int8()))
    rows = rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(label, pa.int32()))
    return rows.filter(pa.array(keep))


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# ---------------------------------------------------------------------------------------------
# OpenImages CSVs
# ---------------------------------------------------------------------------------------------

_OI_REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
_OI_FLAGS = {"IsGroupOf": "is_group", "IsDepiction": "is_depiction", "IsOccluded": "is_occluded", "IsTruncated": "is_truncated"}


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """OpenImages class descriptions CSV (``MID,name``, with or without a header row)."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2:
                continue
            if i == 0 and not row[0].startswith("/"):
                continue  # header ("LabelName,DisplayName")
            out[row[0]] = row[1]
    if not out:
        raise BadInputError(f"class descriptions {str(path)!r} hold no 'MID,name' rows")
    return out


class OpenImagesReader(TableReader):
    """OpenImages box CSVs (coordinates in ``0..1``) + class descriptions; images ``<ImageID>.jpg``.

    OpenImages boxes are not exhaustive per image. With ``image_labels`` (the human-verified
    image-level labels CSV: ImageID, Source, LabelName, Confidence), ``exhaustive_labels`` is the set
    of labels verified present (Confidence 1) in the image, whose instances the OpenImages protocol
    boxed (crowds as IsGroupOf boxes). Without it, ``exhaustive_labels`` is the empty set, so no
    counting question is asked about the image.

    The CSVs are streamed (``csv`` module, one row at a time) into Arrow columns: peak memory of the
    conversion is about 100 bytes per box row (twice while sorting), e.g. about 3 GB for the 14.6M
    rows of OpenImages v7 train, never the rows as Python objects.
    """

    default_source = "openimages"
    kind = "openimages"

    def __init__(
        self,
        annotations: str | os.PathLike | Sequence[str | os.PathLike],
        images: str | os.PathLike | None = None,
        class_descriptions: str | os.PathLike | None = None,
        image_labels: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        super().__init__(images, **kwargs)
        if class_descriptions is None:
            raise ValueError("OpenImages needs class_descriptions (the 'MID,name' CSV), got None")
        paths = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
        self.annotations = [Path(p) for p in paths]
        self.class_descriptions = Path(class_descriptions)
        self.image_labels = Path(image_labels) if image_labels is not None else None

    def _inputs(self) -> list[Path]:
        return [*self.annotations, self.class_descriptions, *([self.image_labels] if self.image_labels is not None else [])]

    def _convert(self, events: _Events) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        names = read_class_descriptions(self.class_descriptions)
        labels = list(dict.fromkeys(names.values()))
        code = {label: i for i, label in enumerate(labels)}
        mid_code = {mid: code[name] for mid, name in names.items()}
        rows = _Rows(pa.string())
        for path in self.annotations:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                missing = [c for c in _OI_REQUIRED if header is None or c not in header]
                if missing:
                    raise BadInputError(f"box CSV {str(path)!r} lacks columns {missing} (header {header!r})")
                col = {name: i for i, name in enumerate(header)}
                i_id, i_label = col["ImageID"], col["LabelName"]
                i_box = [col[c] for c in ("XMin", "YMin", "XMax", "YMax")]
                i_flags = [col.get(c) for c in _OI_FLAGS]  # is_group, is_depiction, is_occluded, is_truncated
                i_conf = col.get("Confidence")
                for line_no, row in enumerate(reader, start=2):
                    if len(row) != len(header):
                        events.add("image", "malformed_row",
                                   lambda: f"{path.name}:{line_no}: {len(row)} fields, expected {len(header)}: {row!r}")
                        continue
                    image_id = row[i_id]
                    label = mid_code.get(row[i_label])
                    if label is None:
                        rows.issue(image_id, "unknown_category")
                        continue
                    try:
                        xyxy = [float(row[i]) for i in i_box]
                    except ValueError:
                        rows.issue(image_id, "bbox_malformed")
                        continue
                    flags = [i is not None and row[i].strip() == "1" for i in i_flags]
                    score = 1.0
                    if i_conf is not None:
                        try:
                            score = float(row[i_conf])
                        except ValueError:
                            score = 1.0
                    rows.box(image_id, xyxy, label, *flags, score=score)
        table = rows.table()
        ids = pc.unique(table["img"].combine_chunks())
        table = table.set_column(0, "img", pc.index_in(table["img"], value_set=ids).cast(pa.int64()))
        images = _images_table(ids, relative=True)
        out = _assemble(images, table, labels)
        if self.image_labels is not None:
            out = out.append_column("verified", self._verified(out["image_id"].combine_chunks(), names))
        return out

    def _verified(self, image_ids: Any, names: dict[str, str]) -> Any:
        """Per image (sorted ids), the labels verified present, as a list column."""
        import pyarrow as pa
        import pyarrow.compute as pc

        chunks: list[tuple[Any, Any]] = []
        ids: list[str] = []
        labels: list[str] = []
        with open(self.image_labels, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            need = ("ImageID", "LabelName", "Confidence")
            if header is None or any(c not in header for c in need):
                raise BadInputError(f"image-labels CSV {str(self.image_labels)!r} needs columns {need}, got {header!r}")
            col = {name: i for i, name in enumerate(header)}  # the last of repeated names, as csv.DictReader
            i_id, i_label, i_conf = col["ImageID"], col["LabelName"], col["Confidence"]
            for row in reader:
                if not row:
                    continue  # blank line (csv.DictReader skips them)
                try:
                    present = float(row[i_conf]) >= 1.0
                except (IndexError, ValueError):
                    present = False
                if present and i_label < len(row) and i_id < len(row) and row[i_label] in names:
                    ids.append(row[i_id])
                    labels.append(names[row[i_label]])
                    if len(ids) >= _CHUNK_ROWS:
                        chunks.append((pa.array(ids, pa.string()), pa.array(labels, pa.string())))
                        ids, labels = [], []
        chunks.append((pa.array(ids, pa.string()), pa.array(labels, pa.string())))
        img = pa.concat_arrays([c[0] for c in chunks])
        lab = pa.concat_arrays([c[1] for c in chunks])
        pos = pc.index_in(img, value_set=image_ids)
        keep = pc.is_valid(pos)
        pos = pos.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)
        lab = lab.filter(keep)
        order = np.argsort(pos, kind="stable")
        return pa.ListArray.from_arrays(_offsets(pos[order], len(image_ids)), lab.take(pa.array(order, pa.int64())))

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        verified = (raw.extra or {}).get("verified") if self.image_labels is not None else None
        record.exhaustive_labels = set(verified or ())


# ---------------------------------------------------------------------------------------------
# Pixmo rows (points, not boxes)
# ---------------------------------------------------------------------------------------------


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
    with open(path, encoding="utf-8") as f:
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


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


class HFDatasetReader(Reader):
    """A Hugging Face dataset with an image column (a ``save_to_disk`` folder or a local dataset folder).

    Images that exist as files are read in place; images stored as bytes are written once to
    ``cache_dir`` (named by image id, written atomically). Boxes come from an ``objects`` column in
    COCO-like form (``bbox`` as ``[x, y, w, h]``, or ``[x1, y1, x2, y2]`` with ``bbox_format="xyxy"``;
    ``category`` as ``ClassLabel`` ints or strings; also ``label``/``labels``/``category_id``).
    ``image_id`` is the ``image_id`` or ``id`` column, else the row index (8 digits).
    """

    default_source = "hf"

    def __init__(
        self,
        path: str | os.PathLike,
        cache_dir: str | os.PathLike,
        split: str = "train",
        image_column: str | None = None,
        bbox_format: Literal["xywh", "xyxy"] = "xywh",
        **kwargs,
    ) -> None:
        super().__init__(None, **kwargs)
        if bbox_format not in ("xywh", "xyxy"):
            raise ValueError(f"bbox_format must be 'xywh' or 'xyxy', got {bbox_format!r}")
        self.path = str(path)
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.image_column = image_column
        self.bbox_format = bbox_format
        self._ds = None
        self._rows: dict[str, int] = {}

    def _dataset(self):
        if self._ds is None:
            import datasets

            p = Path(self.path)
            if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(self.path)
                if isinstance(ds, datasets.DatasetDict):
                    if self.split not in ds:
                        raise BadInputError(f"{self.path!r} has splits {sorted(ds)}, not {self.split!r}")
                    ds = ds[self.split]
            else:
                ds = datasets.load_dataset(self.path, split=self.split)
            column = self.image_column or next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
            if column is None or column not in ds.features:
                raise BadInputError(f"{self.path!r} has no image column (features {list(ds.features)})")
            self.image_column = column
            self._ds = ds.cast_column(column, datasets.Image(decode=False))
        return self._ds

    def _load(self) -> dict[str, _Raw]:
        ds = self._dataset()
        id_col = next((c for c in ("image_id", "id") if c in ds.column_names), None)
        ids = [str(v) for v in ds[id_col]] if id_col else [f"{i:08d}" for i in range(len(ds))]
        out: dict[str, _Raw] = {}
        for i, image_id in enumerate(ids):
            if image_id in out:
                self._bad("duplicate_image_id", f"row {i} repeats image id {image_id!r}; keeping the first", self._load_drops)
                continue
            out[image_id] = _Raw(image_id=image_id)
            self._rows[image_id] = i
        return out

    def _resolve(self, raw: _Raw) -> str | None:
        row = self._dataset()[self._rows[raw.image_id]]
        image = row[self.image_column] or {}
        if image.get("path") and os.path.isfile(image["path"]):
            path = image["path"]
        elif image.get("bytes"):
            path = self._cache(raw.image_id, image["bytes"])
        else:
            return None
        self._fill(raw, row)
        return path

    def _cache(self, image_id: str, data: bytes) -> str:
        from PIL import Image
        import io

        safe = hashlib.sha256(image_id.encode()).hexdigest()[:16] + "-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in image_id)[-64:]
        with Image.open(io.BytesIO(data)) as im:
            ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(im.format or "", ".img")
        target = self.cache_dir / f"{safe}{ext}"
        if not target.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return str(target)

    def _fill(self, raw: _Raw, row: dict[str, Any]) -> None:
        """Size and boxes from the row (done when the row is read, not at listing time)."""
        if _positive(row.get("width")) and _positive(row.get("height")):
            raw.width, raw.height = row["width"], row["height"]
        objects = row.get("objects")
        raw.boxes, raw.flags, raw.issues = [], [], None
        if not objects:
            return
        if isinstance(objects, dict):  # datasets' Sequence of a dict: a dict of lists
            keys = list(objects)
            objects = [dict(zip(keys, vals)) for vals in zip(*(objects[k] for k in keys))]
        names = self._class_names()
        for obj in objects:
            bbox = _as_bbox(obj.get("bbox"))
            label = next((obj[k] for k in ("category", "label", "labels", "category_id") if k in obj), None)
            if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                label = names[label] if names is not None and 0 <= label < len(names) else None
            if label is None or label == "":
                _issue(raw, "unknown_category")
                continue
            if bbox is None:
                _issue(raw, "bbox_malformed")
                continue
            raw.boxes.append((_xywh_to_xyxy(bbox) if self.bbox_format == "xywh" else bbox, str(label)))
            raw.flags.append({"is_group": bool(obj.get("iscrowd", False))})

    def _class_names(self) -> list[str] | None:
        import datasets

        feat = self._dataset().features.get("objects")
        if feat is None:
            return None
        inner = feat.feature if hasattr(feat, "feature") else feat
        if isinstance(inner, list):
            inner = inner[0]
        if isinstance(inner, dict):
            for key in ("category", "label", "labels", "category_id"):
                f = inner.get(key)
                f = getattr(f, "feature", f)
                if isinstance(f, datasets.ClassLabel):
                    return f.names
        return None
