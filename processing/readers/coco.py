"""COCO-style JSON (Objects365 v1/v2), person keypoints when present."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import BadInputError, _coco_keypoints
from .json_stream import _JsonStream
from .table import _ISSUE_CODE, TableReader, _assemble, _Events, _images_table, _Rows

logger = logging.getLogger(__name__)

# COCO-style JSON (Objects365)


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
    id_field = "file_name"  # the id is the stem of file_name
    kind = "coco"

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.annotations = Path(annotations)

    def _inputs(self) -> list[Path]:
        return [self.annotations]

    def _walk(self, on_key: Callable[[str], Callable[[Any], None] | None]) -> dict[str, str]:
        with open(self.annotations, encoding="utf-8-sig") as f:  # -sig: a byte order mark is skipped
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
            if cat["id"] in categories and labels[categories[cat["id"]]] != name:
                # which name its boxes carry cannot be told: refused whatever the policy
                raise BadInputError(f"{path!r}: category id {cat['id']!r} is listed twice, as "
                                    f"{labels[categories[cat['id']]]!r} and as {name!r}")
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
            if width is None and height is None:
                pass  # no size given: the header decides
            elif not (_positive(width) and _positive(height)):  # "640", 0, -5, NaN: the boxes' grid is unknown
                events.add("image", "malformed_image_size", lambda: (
                    f"image {entry['file_name']!r} (id {entry['id']!r}) has width={width!r}, height={height!r}; "
                    "expected positive numbers"))
                by_coco_id[entry["id"]] = None  # its annotations go with it
                return
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
