"""The typed record that flows through every pipeline step, and its vision types.

One :class:`Record` per image. Readers fill ``objects`` (pixel boxes on the EXIF-transposed grid)
and, where known, ``depth``; model steps add what is missing; task generators append QA rows
(dicts in the schema of :mod:`spatialforge.builders.schema`) to ``rows``; every candidate or
object that is dropped is counted in ``drops`` by reason, so nothing disappears silently.

Example:
    >>> import numpy as np
    >>> det = Detections(xyxy=np.array([[0, 0, 10, 10]], float), labels=["cup"])
    >>> len(det), det.scores.tolist()
    (1, [1.0])
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DepthKind = Literal["depth", "inverse_depth"]
FACINGS = ("toward_camera", "away_from_camera", "sideways", "unknown")
NUM_KEYPOINTS = 17  # COCO order: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
DETECTOR_OBJECTS = "detector_objects"
"""``record.meta`` key of a detector's :class:`Detections` kept beside source annotations."""


def _column(value, n: int, dtype, default) -> np.ndarray:
    if value is None:
        return np.full(n, default, dtype=dtype)
    arr = np.asarray(value, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"expected shape ({n},), got {arr.shape}")
    return arr


@dataclass
class Detections:
    """Column-oriented boxes of one image, in pixels ``[x1, y1, x2, y2]`` on the EXIF-transposed grid.

    Per-box flags follow OpenImages / COCO: ``is_group`` (crowd / group box: not one instance),
    ``is_depiction`` (a drawing or photo of the thing), ``is_occluded``, ``is_truncated``.
    ``keypoints`` is ``(N, 17, 3)`` COCO keypoints ``(x, y, v)`` in pixels, NaN where a box has none;
    ``facing`` / ``facing_confidence`` are filled by pose steps for person boxes.
    """

    xyxy: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None
    is_group: np.ndarray | None = None
    is_depiction: np.ndarray | None = None
    is_occluded: np.ndarray | None = None
    is_truncated: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    facing: list[str] | None = None
    facing_confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(self.xyxy)
        self.labels = [str(label) for label in self.labels]
        if len(self.labels) != n:
            raise ValueError(f"{n} boxes but {len(self.labels)} labels")
        if not np.isfinite(self.xyxy).all():
            raise ValueError(f"boxes must be finite, got {self.xyxy[~np.isfinite(self.xyxy).all(1)].tolist()}")
        bad = (self.xyxy[:, 0] > self.xyxy[:, 2]) | (self.xyxy[:, 1] > self.xyxy[:, 3])
        if bad.any():
            raise ValueError(f"boxes must have x1<=x2 and y1<=y2, got {self.xyxy[bad].tolist()}")
        self.scores = _column(self.scores, n, np.float32, 1.0)
        self.is_group = _column(self.is_group, n, bool, False)
        self.is_depiction = _column(self.is_depiction, n, bool, False)
        self.is_occluded = _column(self.is_occluded, n, bool, False)
        self.is_truncated = _column(self.is_truncated, n, bool, False)
        if self.keypoints is None:
            self.keypoints = np.full((n, NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
        else:
            self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
            if self.keypoints.shape != (n, NUM_KEYPOINTS, 3):
                raise ValueError(f"keypoints must be ({n}, {NUM_KEYPOINTS}, 3), got {self.keypoints.shape}")
        self.facing = ["unknown"] * n if self.facing is None else list(self.facing)
        if len(self.facing) != n or any(f not in FACINGS for f in self.facing):
            raise ValueError(f"facing must be {n} values of {FACINGS}, got {self.facing!r}")
        self.facing_confidence = _column(self.facing_confidence, n, np.float32, 0.0)

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        return cls(xyxy=np.zeros((0, 4)), labels=[])

    def __getitem__(self, index) -> Detections:
        """Select boxes by boolean mask, index array or slice (all columns together)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        return Detections(
            xyxy=self.xyxy[idx],
            labels=[self.labels[i] for i in idx],
            scores=self.scores[idx],
            is_group=self.is_group[idx],
            is_depiction=self.is_depiction[idx],
            is_occluded=self.is_occluded[idx],
            is_truncated=self.is_truncated[idx],
            keypoints=self.keypoints[idx],
            facing=[self.facing[i] for i in idx],
            facing_confidence=self.facing_confidence[idx],
        )

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            labels=[label for p in parts for label in p.labels],
            scores=np.concatenate([p.scores for p in parts]),
            is_group=np.concatenate([p.is_group for p in parts]),
            is_depiction=np.concatenate([p.is_depiction for p in parts]),
            is_occluded=np.concatenate([p.is_occluded for p in parts]),
            is_truncated=np.concatenate([p.is_truncated for p in parts]),
            keypoints=np.concatenate([p.keypoints for p in parts]),
            facing=[f for p in parts for f in p.facing],
            facing_confidence=np.concatenate([p.facing_confidence for p in parts]),
        )

    @property
    def areas(self) -> np.ndarray:
        return (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])

    def clip(self, width: int, height: int) -> Detections:
        """Boxes clipped to the image (a copy)."""
        out = dataclasses.replace(self, xyxy=self.xyxy.copy())
        out.xyxy[:, [0, 2]] = out.xyxy[:, [0, 2]].clip(0, width)
        out.xyxy[:, [1, 3]] = out.xyxy[:, [1, 3]].clip(0, height)
        return out


def box_intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``, with the
    areas of ``a`` and of ``b``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0)
    return iw * ih, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def iou_of(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """IoU from :func:`box_intersections`'s parts (0 where the union is empty)."""
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``.

    >>> box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]).round(3).tolist()
    [[0.333, 0.0]]
    """
    return iou_of(*box_intersections(a, b))


@dataclass
class DepthMap:
    """A per-pixel depth signal on the image's pixel grid (``values.shape == (height, width)``).

    ``kind="depth"``: larger is farther (meters from metric models or sensors, millimeters / 1000
    from 16-bit PNGs). ``kind="inverse_depth"``: larger is nearer (disparity from relative models
    such as Depth Anything V2 relative, DPT, MiDaS; known only up to scale and shift). ``valid``
    marks pixels with a measurement (sensors write 0 for holes).
    """

    values: np.ndarray
    kind: DepthKind
    valid: np.ndarray | None = None
    source: str = "unknown"
    metric: bool = False  # True when values are meters (scale known)
    # True when a model predicted the values (a depth model, or its output saved to files): each object
    # may then be off by a factor of its own, as depth models err, not just by a sensor's per-pixel
    # noise, and checks on metric maps tolerate VerifyConfig.relative_object_bias as on relative ones.
    estimated: bool = False
    # The caller vouches that ``valid`` (float32 ``values``' shape) is False wherever ``values`` is not
    # finite, e.g. :func:`~.perception.depth_files.load_depth_file`'s mask: the check over the map is skipped.
    valid_is_finite: dataclasses.InitVar[bool] = False

    def __post_init__(self, valid_is_finite: bool = False) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.ndim != 2:
            raise ValueError(f"depth must be a 2-D (height, width) array, got shape {self.values.shape}")
        if self.kind not in ("depth", "inverse_depth"):
            raise ValueError(f"kind must be 'depth' or 'inverse_depth', got {self.kind!r}")
        values = self.values

        def all_finite() -> bool:  # NaN and +-inf show in the extremes: two reductions, no map-sized array
            return bool(values.size) and bool(np.isfinite(values.max())) and bool(np.isfinite(values.min()))

        # On an all-finite map (or one its caller vouches for) a given mask is kept as it is, instead
        # of being ANDed into a fresh finite mask.

        if self.valid is not None:
            valid = np.asarray(self.valid, dtype=bool)
            if valid.shape == values.shape and (valid_is_finite or all_finite()):
                finite = valid
            else:
                finite = np.isfinite(values)
                if valid.shape == finite.shape:  # AND into the fresh finite mask: one map-sized array less
                    np.logical_and(valid, finite, out=finite)
                else:  # broadcasting (or a shape the check below refuses): the plain AND
                    finite = valid & finite
        else:
            finite = np.ones(values.shape, dtype=bool) if all_finite() else np.isfinite(values)
        self.valid = finite
        if self.valid.shape != self.values.shape:
            raise ValueError(f"valid mask {self.valid.shape} does not match depth {self.values.shape}")

    @property
    def height(self) -> int:
        return self.values.shape[0]

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def nearness(self, value: float) -> float:
        """A number that grows as a point gets nearer, whatever the kind (for ordering only)."""
        return float(value) if self.kind == "inverse_depth" else -float(value)


@dataclass
class Record:
    """Everything known about one image as it moves through the pipeline.

    ``exhaustive_labels``: labels whose every instance in the image is boxed (counting is only
    asked for these); ``None`` means every label is exhaustive (e.g. COCO-style annotations).
    """

    source: str
    image_id: str
    width: int
    height: int
    image_path: str | None = None
    objects: Detections = field(default_factory=Detections.empty)
    depth: DepthMap | None = None
    exhaustive_labels: set[str] | None = None
    box_source: str = "annotation"
    rows: list[dict[str, Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.source}/{self.image_id}: image size must be positive, got {self.width}x{self.height}")

    @property
    def key(self) -> str:
        return f"{self.source}/{self.image_id}"

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped candidates (or objects) under ``reason``."""
        self.drops[reason] += n

    def load_image(self):
        """The RGB image, EXIF-transposed (the grid boxes refer to)."""
        from PIL import Image, ImageOps

        if self.image_path is None:
            raise ValueError(f"{self.key}: no image path")
        with Image.open(self.image_path) as im:
            return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(im: Any) -> Any:
    """An 8-bit RGB copy of a PIL image for models. 16-bit grey (``I;16*``, and ``I`` holding
    values up to 65535, as PIL opens 16-bit PNGs) is scaled by 255/65535, float (``F``) and wider
    ``I`` by 255/max; PIL's own ``convert("RGB")`` clips every value above 255 to white."""
    from PIL import Image

    if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return im.convert("RGB")
    values = np.nan_to_num(np.asarray(im, dtype=np.float64))
    top = float(values.max(initial=0.0))
    if im.mode.startswith("I;16") or (im.mode == "I" and 0 <= values.min(initial=0.0) and top <= 65535):
        top = 65535.0
    gray = np.clip(np.rint(values / max(top, 1e-12) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
