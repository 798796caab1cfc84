"""Precomputed detections in the COCO detection-results format, used as a detector model's output.

A results file is what COCO-style evaluation tools read and what detection toolkits write (one
entry per box)::

    [{"image_id": 42, "category_id": 18, "bbox": [x, y, w, h], "score": 0.87}, ...]

``image_id`` is the ``id`` of an image entry of the source COCO JSON (``--annotations``), or an
image id as the rows write it (the file stem; for a folder of images the relative path without
its suffix); ``category_id`` is an ``id`` of the source JSON's
``categories``; ``category_name`` may be given instead (or as well: then both must agree).
``bbox`` is in pixels on the grid of the annotations (an image whose annotations the reader rescales
gets its detections rescaled the same way).

:func:`load_results` validates the file (one-line errors naming the file, the entry and what is
wrong) and keeps the boxes per image; entries of images the input does not have, and of labels the
source does not know, are counted by reason (``unknown_image_id``, ``unknown_category_id``,
``unknown_category_name``) and left out. :class:`DetectionsFromFile` then hands each record its
boxes through the same code as a detector model
(:func:`~.detection.detections_from_transformers`: score threshold, clipping, degenerate boxes;
:func:`~.detection.attach_detections`: beside source annotations into
``record.meta["detector_objects"]``, where the tasks drop what the detector contradicts). An image
the file lists no box for was looked at and nothing was found: it gets no detector boxes.

The file is converted once, in the calling process, into ``<cache>/detections.npz`` (boxes grouped
by image) that every worker loads; the counts go to ``detections.json`` beside it.

Example:
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = path.write_text(json.dumps([{"image_id": "img1", "category_name": "cup", "bbox": [1, 2, 3, 4], "score": 0.9}]))
    >>> res = load_results(path, image_ids=["img1"])
    >>> res.boxes["img1"].tolist(), res.labels["img1"], res.dropped
    ([[1.0, 2.0, 4.0, 6.0]], ['cup'], {})
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Step
from ..readers.base import BadInputError
from ..readers.images import same_aspect
from ..readers.json_stream import _JsonStream
from ..records import Record
from .detection import attach_result

logger = logging.getLogger(__name__)

CACHE_NPZ = "detections.npz"
CACHE_JSON = "detections.json"


@dataclass
class SourceImages:
    """What the source COCO JSON says about its images and categories."""

    stems: dict[Any, str] = field(default_factory=dict)  # image entry id -> image id (file stem)
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)  # image id -> declared (width, height)
    categories: dict[Any, str] = field(default_factory=dict)  # category id -> name


def read_coco_images(path: str | os.PathLike) -> SourceImages:
    """Image ids, declared sizes and categories of a COCO-style JSON (its annotations are skipped)."""
    out = SourceImages()

    def on_image(entry: Any) -> None:
        if isinstance(entry, dict) and "id" in entry and isinstance(entry.get("file_name"), str):
            stem = Path(entry["file_name"]).stem
            out.stems.setdefault(_key(entry["id"]), stem)
            w, h = entry.get("width"), entry.get("height")
            if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
                out.sizes.setdefault(stem, (float(w), float(h)))

    def on_category(cat: Any) -> None:
        if isinstance(cat, dict) and "id" in cat and cat.get("name"):
            out.categories.setdefault(_key(cat["id"]), str(cat["name"]))

    handlers = {"images": on_image, "categories": on_category}
    with open(path, encoding="utf-8-sig") as f:
        stream = _JsonStream(f, str(path))
        if stream.peek() != "{":
            raise BadInputError(f"{str(path)!r} must be a COCO-style object with 'images' and 'categories'")
        stream.walk_object(handlers.get)
    return out


def _key(value: Any) -> Any:
    """Ids compare as JSON writes them: 7 and 7.0 are one id; strings stay strings."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class DetectionResults:
    """Boxes per image id (``xyxy`` pixels on the annotation grid), their labels and scores, and
    the entries left out by reason."""

    boxes: dict[str, np.ndarray]
    labels: dict[str, list[str]]
    scores: dict[str, np.ndarray]
    dropped: dict[str, int]
    entries: int = 0
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)  # declared annotation grid per image

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``detections.npz`` (and the counts as ``detections.json``) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.boxes)
        vocab = sorted({label for k in keys for label in self.labels[k]})
        code = {label: i for i, label in enumerate(vocab)}
        counts = np.array([len(self.labels[k]) for k in keys], np.int64)
        arrays = {
            "keys": np.array(keys, dtype=str),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "xyxy": np.concatenate([self.boxes[k] for k in keys]).reshape(-1, 4) if keys else np.zeros((0, 4)),
            "scores": np.concatenate([self.scores[k] for k in keys]).astype(np.float32) if keys else np.zeros(0, np.float32),
            "labels": np.array([code[label] for k in keys for label in self.labels[k]], np.int32),
            "vocabulary": np.array(vocab, dtype=str),
            "size_keys": np.array(sorted(self.sizes), dtype=str),
            "sizes": np.array([self.sizes[k] for k in sorted(self.sizes)], np.float64).reshape(-1, 2),
        }
        tmp = folder / f".{CACHE_NPZ}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, folder / CACHE_NPZ)
        (folder / CACHE_JSON).write_text(json.dumps({"entries": self.entries, "dropped": self.dropped}, sort_keys=True))
        return folder / CACHE_NPZ


def load_results(
    path: str | os.PathLike,
    image_ids: Iterable[str] | None = None,
    source: SourceImages | None = None,
) -> DetectionResults:
    """Parse and validate a COCO detection-results file.

    ``image_ids``: the ids of the input's images (entries of other images are counted as
    ``unknown_image_id``; None: every id is kept); ``source``: the source COCO JSON's image and
    category ids (:func:`read_coco_images`), which numeric ids and ``category_id`` refer to.
    Raises :class:`BadInputError` (one line: file, entry number, what is wrong) for a file that is
    not a JSON list of such entries.
    """
    name = str(path)
    known = None if image_ids is None else set(image_ids)
    categories = source.categories if source is not None else {}
    by_name = {str(n).lower(): str(n) for n in categories.values()}
    stems = source.stems if source is not None else {}
    boxes: dict[str, list[list[float]]] = {}
    labels: dict[str, list[str]] = {}
    scores: dict[str, list[float]] = {}
    dropped: Counter = Counter()
    index = [0]

    def bad(entry: Any, what: str) -> BadInputError:
        text = json.dumps(entry)[:120] if isinstance(entry, (dict, list)) else repr(entry)
        return BadInputError(f"--detections {name!r}: entry {index[0]} {what}, got {text}")

    def on_entry(entry: Any) -> None:
        try:
            check(entry)
        finally:
            index[0] += 1

    def check(entry: Any) -> None:
        if not isinstance(entry, dict):
            raise bad(entry, "must be an object with image_id, category_id or category_name, bbox and score")
        for key in ("image_id", "bbox", "score"):
            if key not in entry:
                raise bad(entry, f"has no {key!r}")
        if "category_id" not in entry and "category_name" not in entry:
            raise bad(entry, "has neither 'category_id' nor 'category_name'")
        bbox, score = entry["bbox"], entry["score"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            raise bad(entry, "needs 'bbox' as 4 finite numbers [x, y, width, height]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise bad(entry, "has a negative bbox width or height")
        if not _number(score) or not 0.0 <= score <= 1.0:
            raise bad(entry, "needs 'score' as a number in [0, 1]")
        image = entry["image_id"]
        if isinstance(image, bool) or not isinstance(image, (int, float, str)):
            raise bad(entry, "needs 'image_id' as a number or a string")
        label = _label(entry, categories, by_name, bad)
        stem = stems.get(_key(image), image if isinstance(image, str) else None)
        if stem is None or (known is not None and stem not in known):
            dropped["unknown_image_id"] += 1
            return
        if label is None:
            dropped["unknown_category_id" if "category_id" in entry and categories else "unknown_category_name"] += 1
            return
        x, y, w, h = (float(v) for v in bbox)
        boxes.setdefault(stem, []).append([x, y, x + w, y + h])
        labels.setdefault(stem, []).append(label)
        scores.setdefault(stem, []).append(float(score))

    with open(path, encoding="utf-8-sig") as f:
        stream = _JsonStream(f, name)
        first = stream.peek()
        if first != "[":
            raise BadInputError(
                f"--detections {name!r} must be a JSON list of {{image_id, category_id, bbox, score}} entries "
                f"(the COCO detection-results format), got {'an empty file' if not first else repr(first) + ' first'}")
        stream.pos += 1
        if stream.peek() == "]":
            stream.pos += 1
        else:
            stream._elements(on_entry)
        if stream.peek():
            raise stream.error("extra data after the top-level list")
    sizes = dict(source.sizes) if source is not None else {}
    return DetectionResults(
        boxes={k: np.array(v, np.float64).reshape(-1, 4) for k, v in boxes.items()},
        labels=labels,
        scores={k: np.array(v, np.float32) for k, v in scores.items()},
        dropped=dict(sorted(dropped.items())),
        entries=index[0],
        sizes={k: sizes[k] for k in boxes if k in sizes},
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(entry: Mapping[str, Any], categories: Mapping[Any, str], by_name: Mapping[str, str], bad) -> str | None:
    """The entry's label (the source's spelling), or None when the source does not know it."""
    name = entry.get("category_name")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise bad(entry, "needs 'category_name' as a non-empty string")
    if "category_id" in entry:
        cid = entry["category_id"]
        if isinstance(cid, bool) or not isinstance(cid, (int, float, str)):
            raise bad(entry, "needs 'category_id' as a number or a string")
        if not categories:
            if name is None:
                raise bad(entry, "has a 'category_id' but the source has no category list (give 'category_name')")
        else:
            label = categories.get(_key(cid))
            if label is not None and name is not None and label.lower() != name.strip().lower():
                raise bad(entry, f"names category {name!r} but category_id {cid!r} is {label!r}")
            if label is not None or name is None:
                return label
    name = name.strip()
    if not by_name:
        return name  # no category list to check against: the name is the label
    return by_name.get(name.lower())


def convert(path: str | os.PathLike, cache_dir: str | os.PathLike, image_ids: Iterable[str],
            annotations: str | os.PathLike | None = None) -> dict[str, Any]:
    """Parse ``path`` once (ids and categories of the COCO JSON ``annotations`` when given), write
    the per-image cache into ``cache_dir``; return ``{"entries": n, "dropped": {reason: n}}``."""
    source = read_coco_images(annotations) if annotations is not None else None
    results = load_results(path, image_ids, source)
    results.save(cache_dir)
    if results.dropped:
        logger.warning("--detections %s: %d of %d entries left out: %s", path, sum(results.dropped.values()),
                       results.entries, ", ".join(f"{n} {r}" for r, n in results.dropped.items()))
    return {"entries": results.entries, "dropped": results.dropped}


def cached_counts(cache_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The counts :func:`convert` wrote, or None before a conversion."""
    path = Path(cache_dir) / CACHE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


class DetectionsFromFile(Step):
    """Hand each record the boxes a results file holds for it, as a detector model step would.

    Args:
        cache_dir: where :func:`convert` wrote ``detections.npz``.
        name_of_file: the file's name, kept as the boxes' ``box_source`` (``file:<name>``).
        threshold, min_size: as :class:`~.detection.DetectionStep` applies them (beside annotations
            the threshold is at most :data:`~.detection.BESIDE_MIN_SCORE`).
        nms_iou: class-wise NMS; default None: a results file holds a detector's final boxes (its
            own NMS has run), and a second one would remove an instance half hidden behind another
            of its label, which is what the boxes beside the annotations are there to find.
        beside: records with source annotations get the boxes in ``record.meta["detector_objects"]``.

    Counts (``objects_dropped``): ``grid_mismatch``, boxes of an image whose annotation grid the
    image does not match in aspect (they would land in the wrong place). Per-record drops:
    ``detection_low_score``, ``detection_degenerate_box``, ``detection_nms``.
    """

    name = "detections"

    def __init__(self, cache_dir: str | os.PathLike, name_of_file: str, threshold: float = 0.3,
                 nms_iou: float | None = None, min_size: float = 1.0, beside: bool = True) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        self.box_source = f"file:{name_of_file}"
        self.threshold, self.nms_iou, self.min_size, self.beside = threshold, nms_iou, min_size, beside
        self.objects_dropped: Counter = Counter()
        self._index: dict[str, int] | None = None

    def setup(self) -> None:
        if self._index is not None:
            return
        with np.load(self.cache_dir / CACHE_NPZ) as z:
            self._arrays = {k: z[k] for k in z.files}
        self._index = {str(k): i for i, k in enumerate(self._arrays["keys"].tolist())}
        self._sizes = {str(k): tuple(s) for k, s in zip(self._arrays["size_keys"].tolist(), self._arrays["sizes"].tolist())}
        self._vocab = [str(v) for v in self._arrays["vocabulary"].tolist()]

    def process(self, record: Record) -> Record:
        i = self._index.get(record.image_id)
        a = self._arrays
        lo, hi = (int(a["offsets"][i]), int(a["offsets"][i + 1])) if i is not None else (0, 0)
        xyxy = a["xyxy"][lo:hi].astype(np.float64)
        if hi > lo:
            grid = self._sizes.get(record.image_id)
            if grid is not None and grid != (float(record.width), float(record.height)):
                aw, ah = grid
                if not same_aspect(aw, ah, record.width, record.height):
                    self.objects_dropped["grid_mismatch"] += hi - lo
                    return record
                xyxy = xyxy * np.array([record.width / aw, record.height / ah] * 2)
        result = {"boxes": xyxy, "scores": a["scores"][lo:hi], "text_labels": [self._vocab[c] for c in a["labels"][lo:hi]]}
        attach_result(record, result, self.box_source, threshold=self.threshold, beside=self.beside,
                      nms_iou=self.nms_iou, min_size=self.min_size)
        return record
