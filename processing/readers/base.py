"""The base :class:`Reader`: policies, shard slices, and the shared record assembly of every source.

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
  ``size_mismatch``, ``duplicate_image_id``, ``malformed_line``, ``path_outside_root`` for a
  ``file_name`` / id that would name a file outside ``images``: see :mod:`spatialforge.builders.paths`, ...);
* ``reader.objects_dropped``: boxes / points dropped (``bbox_not_finite``, ``bbox_zero_area``,
  ``bbox_outside_image``, ``unknown_category``, ...);
* ``reader.notes``: fixes applied without a drop (``bbox_clipped``, ``size_rescaled``, ...).

Problems found while parsing the whole file (malformed lines, annotations of unknown images) are
counted once, with shard 0, so merged stats count each exactly once.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ...builders.paths import PATH_OUTSIDE_ROOT, PathOutsideRoot, contained
from ..base import Step
from ..records import NUM_KEYPOINTS, Detections, Record
from .images import (
    ImageHeader,
    ImageIndex,
    TooManyPixels,
    same_aspect,
    exif_transform_points,
    read_header,
    transform_boxes,
)

logger = logging.getLogger(__name__)

Policy = Literal["error", "warn", "skip"]
POLICIES: tuple[str, ...] = ("error", "warn", "skip")
SizePolicy = Literal["rescale", "drop"]
SOURCES: tuple[str, ...] = ("objects365", "openimages", "pixmo", "folder", "hf", "fiftyone")
_MAX_LOGGED_PER_REASON = 5  # "warn" logs the first few cases of each reason, then only counts


class BadInputError(ValueError):
    """Raised for bad input under ``on_bad_input="error"`` (and always for broken files)."""


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice of ``n`` sorted items for ``shard`` of ``num_shards`` (balanced within 1)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..num_shards-1, got shard={shard}, num_shards={num_shards}")
    return slice(shard * n // num_shards, (shard + 1) * n // num_shards)

# Base reader


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
    id_field = "image_id"  # the input field image ids come from, and relative paths (named when one is refused)
    path_field = "file_name"

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
        self.inputs_used: set[str] = set()  # image files read (the executor records them per shard)

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
        # values of the input name files under the images root: never outside it (raises PathOutsideRoot)
        if raw.relpath:
            contained(raw.relpath, self.images.root, what=self.path_field)
        contained(raw.image_id, self.images.root, what=self.id_field)
        return self.images.find(raw.relpath, raw.image_id)

    def _make_record(self, raw: _Raw) -> Record | None:
        try:
            path = self._resolve(raw)
        except PathOutsideRoot as err:
            self.bad_image(PATH_OUTSIDE_ROOT, str(err))
            return None
        if path is None:
            self.bad_image("missing_image", f"image {raw.image_id!r} ({raw.relpath or raw.path or 'by id'}) not found under {self.images.root}")
            return None
        self.inputs_used.add(path)
        try:
            header = read_header(path)
        except TooManyPixels as err:
            self.bad_image("too_many_pixels", f"image {raw.image_id!r}: {err}")
            return None
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
        if header.focal_px is not None:  # the perspective check's camera (verify.Scene.focal_lengths)
            record.meta["focal_px"], record.meta["focal_source"] = header.focal_px, header.focal_source
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
            if same_aspect(aw, ah, W, H):
                self.notes["size_rescaled"] += 1
                return lambda xy: np.asarray(xy, np.float64) * np.array([W / aw, H / ah])
            if header.swaps_axes and same_aspect(aw, ah, rw, rh):
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
            if fn is None and isinstance(kp, np.ndarray):  # already an array (the annotation table's): no copy
                keypoints[out_i] = kp
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
        x1, y1, x2, y2 = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).T
        with np.errstate(invalid="ignore"):
            if ((x1 >= 0) & (y1 >= 0) & (x2 <= width) & (y2 <= height) & (x2 > x1) & (y2 > y1)).all():
                return keep  # every box finite, with an area, inside the image: nothing to drop or note
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
