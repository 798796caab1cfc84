"""The SpatialForge row schema, declared once.

Every other part derives from :data:`FEATURES`: the builder's ``_info``, the Parquet writer's Arrow
schema (:func:`arrow_schema`) and the dataset card's ``dataset_info`` block. One row is one QA pair.

Coordinates: ``bbox`` is ``[x1, y1, x2, y2]`` as integers in ``0..1000`` on the EXIF-transposed
pixel grid of an image of ``width`` x ``height`` pixels (Qwen3-VL convention), see
:func:`normalize_bbox`.

Example:
    >>> from spatialforge.builders.schema import FEATURES, validate_row
    >>> sorted(FEATURES)[:3]
    ['answer', 'count', 'fact']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
from datasets import Features, List, Value

TASKS: tuple[str, ...] = ("grounding", "referring", "counting", "near_far", "left_right", "perspective")
"""The six tasks, perception first (paper order)."""

RELATION_TASKS: tuple[str, ...] = ("near_far", "left_right", "perspective")
PREDICATES: tuple[str, ...] = ("nearer_than", "farther_than", "left_of", "right_of")
FRAMES: tuple[str, ...] = ("camera", "person")
KNOWN_SOURCES: tuple[str, ...] = ("objects365", "openimages", "pixmo")
BBOX_SCALE = 1000
ALL_CONFIG = "all"
"""Name of the config that holds every task (the dataset card's default config)."""
DATA_DIR = "data"
"""Parquet shards live under ``data/<task>/`` in a dataset folder or Hub repo."""

OBJECT = {"label": Value("string"), "bbox": List(Value("int32"), length=4)}

# The fact that holds, as indices into ``objects``: "objects[subject] <predicate> objects[object]"
# seen from ``frame``. For frame="person", ``object`` is the person whose viewpoint is used.
FACT = {
    "subject": Value("int32"),
    "predicate": Value("string"),
    "object": Value("int32"),
    "frame": Value("string"),
}

# Evidence that admitted the row. Fields a task does not use are null.
VERIFICATION = {
    "checks": List(Value("string")),  # names of the checks that passed, in the order they ran
    "depth_margin": Value("float32"),  # near_far: relative depth margin between the two objects
    "depth_subject": Value("float32"),  # near_far: robust depth of objects[fact.subject] (depth map units)
    "depth_object": Value("float32"),  # near_far: robust depth of objects[fact.object]
    "box_gap": Value("float32"),  # left_right / perspective: horizontal gap, fraction of image width
    "overlap_iou": Value("float32"),  # IoU of the two boxes of a relation
    "min_box_area": Value("float32"),  # smallest box of the row, fraction of the image area
    "facing": Value("string"),  # perspective: toward_camera | away_from_camera
    "facing_confidence": Value("float32"),  # perspective: confidence of the facing estimate
    "facing_max_turn_deg": Value("float32"),  # perspective: how far the person may be turned from facing (keypoints)
    "focal_source": Value("string"),  # perspective with depth: "exif:<tag>" or "prior:hfov<lo>-<hi>" (focal lengths tried)
    "depth_source": Value("string"),  # e.g. "file:depth" (measured), "file:depth:estimated", "model:depth-anything/...:inverse_depth"
    "box_source": Value("string"),  # "annotation" or "model:<detector id>"
}

FEATURES = Features(
    {
        "id": Value("string"),
        "source": Value("string"),
        "image_id": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
        "task": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "objects": List(OBJECT),
        "fact": FACT,
        "count": Value("int32"),
        "verification": VERIFICATION,
    }
)
COLUMNS: tuple[str, ...] = tuple(FEATURES)


def arrow_schema():
    """The Arrow schema Parquet shards are written with (derived from :data:`FEATURES`)."""
    return FEATURES.arrow_schema


def features_with_image() -> Features:
    """Schema of the builder's rows: every annotation column plus a decoded ``image``."""
    return Features({"image": datasets.Image(), **FEATURES})


def normalize_bbox(xyxy: Sequence[float], width: int, height: int) -> list[int]:
    """Pixel ``[x1, y1, x2, y2]`` -> integers in ``0..1000`` (``round(px / size * 1000)``, clamped).

    >>> normalize_bbox([10, 20, 110, 220], width=200, height=400)
    [50, 50, 550, 550]
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    if len(xyxy) != 4 or not all(math.isfinite(float(v)) for v in xyxy):
        raise ValueError(f"bbox must be 4 finite numbers, got {list(xyxy)!r}")
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    if x1 > x2 or y1 > y2:
        raise ValueError(f"bbox must have x1<=x2 and y1<=y2, got {list(xyxy)!r}")
    return normalize_bboxes([[x1, y1, x2, y2]], width, height)[0]


def normalize_bboxes(xyxy, width: int, height: int) -> list[list[int]]:
    """:func:`normalize_bbox` of ``(N, 4)`` pixel boxes at once (the same float ops and
    round-half-even, so the same ints); boxes must be finite with ``x1 <= x2``, ``y1 <= y2``
    (as :class:`~spatialforge.processing.records.Detections` guarantees).

    >>> normalize_bboxes([[10, 20, 110, 220], [0, 0, 250, 400]], width=200, height=400)
    [[50, 50, 550, 550], [0, 0, 1000, 1000]]
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    size = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    # np.minimum / np.maximum instead of np.clip: the same ints, without np.clip's Python wrapper
    return np.minimum(np.maximum(np.round(boxes / size * BBOX_SCALE), 0), BBOX_SCALE).astype(int).tolist()


def object_error(label: str, bbox: Sequence[int]) -> str | None:
    """What makes one entry of a row's ``objects`` break the schema (``"bbox ..."`` or
    ``"label ..."``), or None. :func:`validate_row` raises it; the task step asks it once per
    object of a record instead of once per row."""
    if len(bbox) != 4 or any(not isinstance(v, int) or not 0 <= v <= BBOX_SCALE for v in bbox):
        return f"bbox must be 4 ints in 0..1000, got {bbox!r}"
    if bbox[0] > bbox[2] or bbox[1] > bbox[3]:
        return f"bbox must have x1<=x2, y1<=y2, got {bbox!r}"
    if not label:
        return "label is empty"
    return None


def fact_error(task: str, fact: Mapping[str, Any] | None, n_objects: int) -> str | None:
    """What makes a row's ``fact`` wrong for ``task`` with ``n_objects`` objects, or None."""
    if task in RELATION_TASKS:
        if fact is None:
            return f"task {task!r} needs a fact"
        if fact["predicate"] not in PREDICATES or fact["frame"] not in FRAMES:
            return f"bad fact {fact!r}"
        for key in ("subject", "object"):
            if not 0 <= fact[key] < n_objects:
                return f"fact.{key}={fact[key]} is not an index into {n_objects} objects"
        want_frame = "person" if task == "perspective" else "camera"
        if fact["frame"] != want_frame:
            return f"task {task!r} needs frame {want_frame!r}, got {fact['frame']!r}"
    elif fact is not None:
        return f"task {task!r} must not carry a fact"
    return None


def size_ok(width: Any, height: Any) -> bool:
    """Whether ``width`` and ``height`` are positive ints, as the schema wants them."""
    return isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0


def denormalize_bbox(bbox: Sequence[int], width: int, height: int) -> list[float]:
    """Inverse of :func:`normalize_bbox` (up to rounding): ``0..1000`` -> pixels."""
    return [v / BBOX_SCALE * s for v, s in zip(bbox, (width, height, width, height))]


def make_id(source: str, image_id: str, task: str, index: int) -> str:
    """Stable row id: the same image, task and question index always give the same id."""
    return f"{source}-{image_id}-{task}-{index:03d}"


def validate_row(row: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem if ``row`` breaks the contract of the schema."""
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row {row.get('id')!r} lacks columns {missing}")
    rid = row["id"]
    if row["task"] not in TASKS:
        raise ValueError(f"row {rid!r}: task must be one of {TASKS}, got {row['task']!r}")
    if not size_ok(row["width"], row["height"]):
        raise ValueError(f"row {rid!r}: width/height must be positive ints, got {row['width']!r}x{row['height']!r}")
    objects = row["objects"] or []
    for k, obj in enumerate(objects):
        problem = object_error(obj["label"], obj["bbox"])
        if problem is not None:
            raise ValueError(f"row {rid!r}: objects[{k}].{problem}")
    task, fact = row["task"], row["fact"]
    problem = fact_error(task, fact, len(objects))
    if problem is not None:
        raise ValueError(f"row {rid!r}: {problem}")
    if task == "counting":
        if row["count"] is None or row["count"] < 0:
            raise ValueError(f"row {rid!r}: counting needs a non-negative count, got {row['count']!r}")
    elif row["count"] is not None:
        raise ValueError(f"row {rid!r}: only counting rows carry a count, got {row['count']!r}")
    if task in ("grounding", "referring") and not objects:
        raise ValueError(f"row {rid!r}: task {task!r} needs at least one object")
