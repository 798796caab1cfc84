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

import csv
import hashlib
import json
import logging
import math
import os
from collections import Counter, defaultdict
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
SOURCES: tuple[str, ...] = ("objects365", "openimages", "pixmo", "folder", "hf")
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


class CocoReader(Reader):
    """COCO-style detection JSON as Objects365 ships it.

    ``images`` [id, file_name, width, height], ``annotations`` [image_id, category_id, bbox
    ``[x, y, w, h]``, iscrowd, optional 17*3 ``keypoints``], ``categories`` [id, name]. ``image_id`` is
    the file stem; files are found by ``file_name`` relative to ``images`` (any trailing part of it)
    or by stem anywhere under ``images``. ``iscrowd`` becomes ``is_group``; Objects365's ``isfake``
    (a depiction) becomes ``is_depiction``. COCO annotations are exhaustive:
    ``exhaustive_labels=None``.
    """

    default_source = "objects365"

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.annotations = Path(annotations)

    def _load(self) -> dict[str, _Raw]:
        try:
            with open(self.annotations, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise BadInputError(f"{str(self.annotations)!r} is not valid JSON: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise BadInputError(
                f"{str(self.annotations)!r} must be a COCO-style object with lists 'images', 'annotations' and "
                f"'categories', got keys {keys}"
            )
        categories: dict[Any, str] = {}
        for cat in data["categories"]:
            if not isinstance(cat, dict) or "id" not in cat or not cat.get("name"):
                raise BadInputError(f"{str(self.annotations)!r}: category entries need 'id' and 'name', got {cat!r}")
            categories[cat["id"]] = str(cat["name"])

        out: dict[str, _Raw] = {}
        by_coco_id: dict[Any, _Raw | None] = {}
        for entry in data["images"]:
            if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
                self._bad("malformed_image_entry", f"image entry needs 'id' and 'file_name', got {entry!r}", self._load_drops)
                continue
            stem = Path(entry["file_name"]).stem
            if entry["id"] in by_coco_id or stem in out:
                self._bad(
                    "duplicate_image_id",
                    f"image {entry['file_name']!r} (id {entry['id']!r}) repeats an image id or file stem; keeping the first",
                    self._load_drops,
                )
                by_coco_id.setdefault(entry["id"], None)
                continue
            width, height = entry.get("width"), entry.get("height")
            if not (_positive(width) and _positive(height)):
                width = height = None  # unknown size: the header decides
            raw = _Raw(image_id=stem, relpath=entry["file_name"], width=width, height=height, boxes=[], flags=[])
            out[stem] = raw
            by_coco_id[entry["id"]] = raw

        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                self._bad("malformed_annotation", f"annotation must be an object, got {ann!r}", self._load_object_drops)
                continue
            raw = by_coco_id.get(ann.get("image_id"), "missing")
            if raw == "missing":
                self._bad(
                    "annotation_unknown_image",
                    f"annotation {ann.get('id')!r} refers to unknown image_id {ann.get('image_id')!r}",
                    self._load_object_drops,
                )
                continue
            if raw is None:  # annotation of a duplicate image entry that was dropped whole
                continue
            label = categories.get(ann.get("category_id"))
            if label is None:
                _issue(raw, "unknown_category")
                continue
            bbox = _as_bbox(ann.get("bbox"))
            if bbox is None:
                _issue(raw, "bbox_malformed")
                continue
            flags: dict[str, Any] = {"is_group": bool(ann.get("iscrowd", 0)), "is_depiction": bool(ann.get("isfake", 0))}
            if "keypoints" in ann and ann["keypoints"]:
                kp = _coco_keypoints(ann["keypoints"])
                if kp is None:
                    _issue(raw, "keypoints_malformed")  # the box is kept, without keypoints
                else:
                    flags["keypoints"] = kp
            raw.boxes.append((_xywh_to_xyxy(bbox), label))
            raw.flags.append(flags)
        return out


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


class OpenImagesReader(Reader):
    """OpenImages box CSVs (coordinates in ``0..1``) + class descriptions; images ``<ImageID>.jpg``.

    OpenImages boxes are not exhaustive per image. With ``image_labels`` (the human-verified
    image-level labels CSV: ImageID, Source, LabelName, Confidence), ``exhaustive_labels`` is the set
    of labels verified present (Confidence 1) in the image, whose instances the OpenImages protocol
    boxed (crowds as IsGroupOf boxes). Without it, ``exhaustive_labels`` is the empty set, so no
    counting question is asked about the image.
    """

    default_source = "openimages"

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
        self._verified: dict[str, set[str]] | None = None

    def _load(self) -> dict[str, _Raw]:
        names = read_class_descriptions(self.class_descriptions)
        out: dict[str, _Raw] = {}
        for path in self.annotations:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                missing = [c for c in _OI_REQUIRED if header is None or c not in header]
                if missing:
                    raise BadInputError(f"box CSV {str(path)!r} lacks columns {missing} (header {header!r})")
                col = {name: i for i, name in enumerate(header)}
                for line_no, row in enumerate(reader, start=2):
                    if len(row) != len(header):
                        self._bad("malformed_row", f"{path.name}:{line_no}: {len(row)} fields, expected {len(header)}: {row!r}", self._load_drops)
                        continue
                    image_id = row[col["ImageID"]]
                    raw = out.get(image_id)
                    if raw is None:
                        raw = out[image_id] = _Raw(image_id=image_id, relative=True, boxes=[], flags=[])
                    label = names.get(row[col["LabelName"]])
                    if label is None:
                        _issue(raw, "unknown_category")
                        continue
                    try:
                        x1, x2, y1, y2 = (float(row[col[c]]) for c in ("XMin", "XMax", "YMin", "YMax"))
                    except ValueError:
                        _issue(raw, "bbox_malformed")
                        continue
                    flags: dict[str, Any] = {key: row[col[c]].strip() == "1" for c, key in _OI_FLAGS.items() if c in col}
                    if "Confidence" in col:
                        try:
                            flags["score"] = float(row[col["Confidence"]])
                        except ValueError:
                            flags["score"] = 1.0
                    raw.boxes.append(([x1, y1, x2, y2], label))
                    raw.flags.append(flags)
        if self.image_labels is not None:
            self._verified = self._load_verified(names)
        return out

    def _load_verified(self, names: dict[str, str]) -> dict[str, set[str]]:
        verified: dict[str, set[str]] = defaultdict(set)
        with open(self.image_labels, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = ("ImageID", "LabelName", "Confidence")
            if reader.fieldnames is None or any(c not in reader.fieldnames for c in need):
                raise BadInputError(f"image-labels CSV {str(self.image_labels)!r} needs columns {need}, got {reader.fieldnames!r}")
            for row in reader:
                try:
                    present = float(row["Confidence"]) >= 1.0
                except (TypeError, ValueError):
                    present = False
                if present and row["LabelName"] in names:
                    verified[row["ImageID"]].add(names[row["LabelName"]])
        return dict(verified)

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        record.exhaustive_labels = set(self._verified.get(raw.image_id, ())) if self._verified is not None else set()


# ---------------------------------------------------------------------------------------------
# Pixmo rows (points, not boxes)
# ---------------------------------------------------------------------------------------------


def _iter_table_rows(path: Path, bad: Callable[[str, str], None]) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL or Parquet file (or a folder of them, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise BadInputError(f"no .jsonl or .parquet files under {str(path)!r}")
        for p in files:
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


class PixmoReader(Reader):
    """Pixmo rows (JSONL or Parquet: ``image_url``, ``image_sha256``, ``label``, ``points`` in pixels).

    Points are not boxes: they are kept in ``record.meta["points"]`` (``[{"label", "x", "y"}]`` on the
    transposed pixel grid) and ``record.meta["point_counts"]`` (``{label: number of points}``);
    ``record.objects`` stays empty (a detector may add boxes) and ``exhaustive_labels`` is empty,
    so box-based counting is not asked from points. Images are named by ``image_sha256`` (with or
    without an extension) under ``images``; ``image_id`` is the sha256, or the sha256 of the URL
    when a row has none. Several rows of one image are merged; exact repeats are counted
    (``duplicate_row``) and ignored.
    """

    default_source = "pixmo"

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.annotations = Path(annotations)

    def _load(self) -> dict[str, _Raw]:
        if not self.annotations.exists():
            raise BadInputError(f"Pixmo rows {str(self.annotations)!r} do not exist")
        out: dict[str, _Raw] = {}
        seen: set[tuple[str, str, tuple]] = set()

        def bad(reason: str, message: str) -> None:
            self._bad(reason, message, self._load_drops)

        for row in _iter_table_rows(self.annotations, bad):
            sha, url = row.get("image_sha256"), row.get("image_url")
            if sha:
                image_id = str(sha)
            elif url:
                image_id = hashlib.sha256(str(url).encode()).hexdigest()
            else:
                bad("malformed_row", f"row has neither image_sha256 nor image_url: {str(row)[:120]}")
                continue
            raw = out.get(image_id)
            if raw is None:
                raw = out[image_id] = _Raw(image_id=image_id, issues=Counter(), extra={"rows": [], "url": url})
            label = row.get("label")
            points = _points_xy(row.get("points"))
            if not label or points is None:
                _issue(raw, "malformed_points")
                continue
            key = (image_id, str(label), tuple(points))
            if key in seen:
                _issue(raw, "duplicate_row")
                continue
            seen.add(key)
            raw.extra["rows"].append((str(label), points, row.get("count")))
        return out

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        W, H = header.width, header.height
        points: list[dict[str, Any]] = []
        counts: Counter = Counter()
        for label, pts, _count in raw.extra["rows"]:
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
