"""Automatic verification: the thresholds, the robust per-object depth, and the named checks.

Every candidate question runs through checks in a fixed order; the first that fails drops it and
counts the drop under that check's reason, and a row that survives carries the names of the checks
it passed (``verification.checks``) with their evidence (depth margin, box gap, IoU, ...).

Robust object depth (:func:`object_depth`): the inner part of the box (``shrink`` removes a border,
where blurred depth edges and background live), sampled on a strided grid of at most
``depth_max_samples`` pixels, minus the pixels that lie in *other* boxes that overlap this one
(there the occluder's depth may show); for a box that contains the whole object (a table under a
cup, a sofa around a vase seen through it) the pixels at that box's own depth are removed instead;
valid pixels only, then a quantile ``depth_quantile`` in *nearness order* (0 = nearest): the low
quantile of metric depth or the corresponding high quantile of inverse depth, so ``depth`` and
``1 / depth`` of the same scene give the same object. If more than ``max_near_share`` of those
pixels are much nearer than the result (an umbrella's canopy over the ground, an unboxed
occluder), the object gets no depth (:func:`object_depth` returns None).

Relative (non-metric) depth is trusted for order only. Near/far then also asks that the farther
object's nearest part (``span_quantile`` of its whole box's own pixels) lie behind the nearer
object's value by ``min_range_margin`` of the image's depth range (``depth_span``): an open shape
whose box mostly shows the background behind it (an umbrella) cannot pass for the background.
On metric depth, an object whose own nearest part lies much nearer than its value is such an open
shape and gets no depth (on a model's meters, "much nearer" after its own pixels are allowed the
tolerated per-object bias: what its box shows through it carries none). Perspective's lateral check must hold for every shift of the inverse
depth on a grid within :attr:`Scene.shift_bounds`, with each depth off by
``relative_object_bias`` either way, for every focal length of :attr:`Scene.focal_lengths`, and
with the object's middle anywhere from its front to ``object_depth_extent`` of its largest visible
size behind it, the person anywhere from the body's front to ``person_depth_extent`` of their box's
width behind it, and each box's center ``box_center_tolerance`` of its width either way.

Depth margin: ``1 - nearer / farther`` of the two robust values. It is the same for depth and
inverse depth (``1 - (1/f) / (1/n) == 1 - n / f``) and for any global scale, so one threshold
serves metric and relative models. Relative (affine-ambiguous) inverse depth also carries an
unknown shift of either sign, which ratios do not survive: the ratio is taken at the low bound of
:attr:`Scene.shift_bounds` (assumption: the image's far end is at least ``min_far_near_ratio``
times as far as its near end), after each depth is moved by ``relative_object_bias`` against the
pair; the difference must also be a fraction ``min_range_margin`` of the image's depth range.
A depth model's meters (:attr:`~spatialforge.processing.records.DepthMap.estimated`) have no
shift but the same per-object errors: their ratio is taken after that bias too (and perspective's
check holds with each depth off by it either way); measured meters are taken as they are.
No relative map tells a deep view ending in sky from a wall just behind the objects (both end in
a flat far plateau), so near/far also asks the order to survive the bias at
:attr:`Scene.flat_shift` (the far end only ``flat_far_near_ratio`` times the near end) unless the
ground below both objects or a metric second depth signal confirms it.

Example:
    >>> import numpy as np
    >>> from spatialforge.processing.records import DepthMap
    >>> d = DepthMap(np.full((20, 20), 3.0), kind="depth")
    >>> object_depth(d, [2, 2, 12, 12])
    3.0
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from ...builders.schema import normalize_bboxes, object_error
from ..perception.facing import DEFAULT_TURN_PRIOR, TurnPrior
from ..records import DETECTOR_OBJECTS, DepthMap, Record, box_intersections, box_iou, iou_of
from .templates import display_label

CHECKS = (
    "exhaustive",  # counting/grounding: every instance of the label is boxed
    "detector_agrees",  # counting/grounding, a detector beside the annotations: no confident box of the label they miss
    "single_instance",  # no group/crowd box involved
    "not_depiction",  # no drawing/photo of the thing
    "score",  # box score >= min_score
    "min_box_area",  # every box of the row >= min_box_area (a detector's boxes: and >= min_detected_box_pixels)
    "instance_count",  # grounding: <= grounding_max_instances; counting: count in [count_min, count_max]
    "unambiguous_region",  # referring: no box of another label overlaps the region heavily
    "detector_unambiguous",  # referring, a detector beside the annotations: nor does a box of another label it finds and they miss
    "depth_valid",  # near_far: both objects have a robust depth (enough valid, unoccluded pixels)
    "depth_uniform",  # near_far: few pixels in the box much nearer than the object (max_near_share)
    "depth_positive",  # near_far: both robust depths > 0 (ratios need it)
    "depth_margin",  # near_far: relative depth margin >= min_depth_margin
    "depth_flat",  # near_far, relative depth: the order survives the tolerated bias on the flattest view assumed (or the ground or a metric second signal confirms it)
    "ground_consistent",  # near_far, a depth model's output: the ground below both boxes does not order the pair the other way, nor lies far in front of either
    "depth_range_margin",  # near_far, relative inverse depth: difference >= min_range_margin of the range
    "depth_span",  # near_far, non-metric depth: the farther object's nearest part is behind the nearer object
    "occlusion",  # near_far, overlapping boxes: the overlap shows the nearer object's depth
    "depth_alt_valid",  # near_far: the second depth signal gives both objects a positive depth
    "depth_alt",  # near_far: a second depth signal orders the pair the same way
    "ground_contact",  # near_far (opt-in): the lower box bottom is the nearer object
    "facing_known",  # perspective: the person's facing was estimated (not "unknown")
    "facing",  # perspective: person faces toward or away from the camera (not "sideways")
    "facing_confidence",  # perspective: facing confidence >= min_facing_confidence
    "box_separation",  # left_right / perspective: horizontal gap >= min_box_gap
    "lateral_dominance",  # perspective with depth: no turn up to perspective_max_yaw_deg flips the side
    "absent_label",  # counting, count 0: the label is listed in record.meta["absent_labels"]
)

OBJECT_DROP_REASONS = {
    "single_instance": "group_box",
    "not_depiction": "depiction",
    "score": "low_score",
    "min_box_area": "box_too_small",
}


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of every check (data, not code). Fractions are of the image width/height/area.

    Defaults aim at 100 % precision on exact depth and >= 99.5 % on monocular-like depth (global
    scale, shifts of either sign, ~15 % per-object bias, blur, noise). Relative depth: the ratio of
    a pair is taken after each depth is moved by ``relative_object_bias`` against it (a factor
    ``1.15 ** 2``) and at the shift of a view ``min_far_near_ratio`` deep, then asked for
    ``min_depth_margin``; at the shift of the flattest view assumed (``flat_far_near_ratio``) the
    order must still survive that bias. A depth model's meters (:attr:`DepthMap.estimated`) are
    taken after the same bias, at no shift; measured meters (a sensor, a renderer) as they are.

    >>> VerifyConfig(min_depth_margin=0.2).min_depth_margin
    0.2
    """

    # --- every task
    min_box_area: float = 0.0005  # smallest box, fraction of image area (0.0005 ~ 12x12 px at 518x518)
    # Boxes a detector made (a model or a detections file, not the source annotations): also at least
    # this many pixels of the image's own grid, whatever its size. Under 12x12 px a box is less than
    # one 14-px patch of the vision encoders that read the rows, no person drew it, and a detector
    # reports far more of them than anyone can make out (a 5x15 px person 20 m away); the relative
    # floor alone lets 38 px through at 320x240.
    min_detected_box_pixels: float = 144.0
    min_score: float = 0.0  # boxes scored below this (detector output) are not asked about
    # --- robust object depth
    depth_shrink: float = 0.2  # fraction of the box width/height removed on each side before sampling
    depth_quantile: float = 0.4  # quantile in nearness order (0 = nearest pixel, 0.5 = median)
    depth_max_samples: int = 1024  # strided sampling caps the pixels read per box (speed)
    min_valid_fraction: float = 0.3  # valid, unoccluded share of the inner box needed for a depth
    container_tolerance: float = 0.1  # |log| distance to a containing box's depth that marks its pixels
    occluder_margin: float = 0.1  # a box overlapping an object's is removed from its pixels with this share of its size around it
    max_near_share: float = 0.05  # more of an object's pixels much nearer than its depth: open shape/occluded
    near_share_ratio: float = 0.3  # "much nearer": by more than this (1 - d / object depth)
    span_quantile: float = 0.05  # an object's nearest part: this quantile of its pixels in nearness order
    # --- near_far
    min_depth_margin: float = 0.3  # 1 - nearer/farther; well above a ~10 % per-object depth bias
    min_range_margin: float = 0.05  # relative inverse depth only: |difference| / robust image range
    span_check: bool = True  # non-metric depth: the farther object's nearest part must lie behind the nearer one
    range_quantiles: tuple[float, float] = (0.02, 0.98)  # robust image depth range
    occlusion_check: bool = True  # overlapping boxes: the overlap must look like the nearer object
    occlusion_min_fraction: float = 0.5  # share of decided overlap pixels that must match the nearer one
    occlusion_min_pixels: int = 8  # fewer decided overlap samples than this: no evidence, check skipped
    use_depth_alt: bool = True  # use record.meta["depth_alt"] (flip-TTA or second model) when present
    depth_alt_min_margin: float = 0.0  # margin the second signal must show in the same direction
    ground_contact: bool = False  # opt-in: lower box bottom must be the nearer object
    ground_min_dy: float = 0.02  # bottoms closer than this (fraction of height): no evidence
    ground_rescue: bool = True  # relative depth: a pair short of min_depth_margin passes when the ground below both orders it alike
    ground_veto: bool = True  # a depth model's output (relative or meters): a pair the ground below both orders the other way, or with an object read far behind its own ground, is dropped
    # --- referring
    max_referring_iou: float = 0.5  # a box of another label with IoU >= this makes the region ambiguous
    # --- grounding / counting
    grounding_max_instances: int = 10  # multi-instance grounding answers list at most this many boxes
    count_min: int = 1  # counting asks about counts in [count_min, count_max]
    count_max: int = 10
    count_zero: bool = False  # also ask "how many X" with answer 0 for labels in record.meta["absent_labels"]
    # An image whose depth shows this many pixels in front of the background inside boxes that no
    # box's object explains (a second layer behind an object: an instance the annotations and any
    # detector left out; on a model's depth only flat, thick layers, see tasks/hidden.py) gets no
    # counting or grounding question (drop reason unboxed_instance). 0 turns the check off.
    hidden_min_pixels: float = 60.0
    # --- left_right / perspective
    min_box_gap: float = 0.0  # horizontal gap between the boxes / width (0: touching allowed, <0: overlap)
    min_facing_confidence: float = 0.5  # facing estimates below this are not trusted
    person_labels: tuple[str, ...] = ("person", "man", "woman", "boy", "girl", "child")  # case-insensitive
    detector_min_score: float = 0.0  # a detector box beside annotations this confident contradicts them (0: every box the detector kept)
    detector_match_iou: float = 0.5  # ... unless it overlaps an annotated box of its label this much
    lateral_check: bool = True  # perspective with depth: the lateral offset must outweigh a turned person
    label_alone_mentions: bool = False  # relation questions may name an object by its label alone ("the cup") when it is the only boxed one
    perspective_max_yaw_deg: float = 45.0  # turn assumed for a person whose facing came without keypoints
    object_depth_extent: float = 0.5  # perspective: an object's middle may lie this share of its largest visible size behind its front
    person_depth_extent: float = 0.5  # ... a person's, this share of their box's width
    box_center_tolerance: float = 0.05  # perspective: a box's center may lie this share of its width off the middle it stands for
    turn_prior: TurnPrior = DEFAULT_TURN_PRIOR  # body ratios, view elevation, keypoint error (facing.max_turn_deg)
    hfov_prior_deg: tuple[float, float] = (20.0, 120.0)  # horizontal field of view of photos without EXIF focal length
    focal_steps: int = 5  # focal lengths tried across hfov_prior_deg (log-spaced)
    exif_focal_tolerance: float = 0.05  # EXIF focal length: tried at (1 -/+ this) x its value
    min_far_near_ratio: float = 3.0  # relative depth: the image's far end is at least this many times as far as its near end
    flat_far_near_ratio: float = 1.3  # relative depth: ... or, on the flattest view assumed anywhere (a wall just behind the objects), this many
    shift_steps: int = 5  # relative depth: shifts tried between the bounds the far end and min_far_near_ratio give
    relative_object_bias: float = 0.15  # relative depth and a model's meters: per-object error (factor 1 -/+ this) the checks tolerate

    def __post_init__(self) -> None:
        for name in ("min_box_area", "min_score", "depth_quantile", "min_valid_fraction", "min_depth_margin",
                     "min_range_margin", "occlusion_min_fraction", "ground_min_dy", "max_referring_iou",
                     "min_facing_confidence", "depth_alt_min_margin", "container_tolerance", "occluder_margin", "max_near_share",
                     "span_quantile", "detector_min_score", "detector_match_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        lo_fov, hi_fov = self.hfov_prior_deg
        if not 0.0 <= self.perspective_max_yaw_deg < 90.0 or not 1.0 <= lo_fov <= hi_fov < 180.0:
            raise ValueError(
                f"need 0 <= perspective_max_yaw_deg < 90 and 1 <= hfov_prior_deg[0] <= hfov_prior_deg[1] < 180, got "
                f"{self.perspective_max_yaw_deg!r}, {self.hfov_prior_deg!r}"
            )
        if self.focal_steps < 1 or self.shift_steps < 1 or not 0.0 <= self.exif_focal_tolerance < 1.0:
            raise ValueError(f"focal_steps and shift_steps must be >= 1 and exif_focal_tolerance in [0, 1), got "
                             f"{self.focal_steps!r}, {self.shift_steps!r}, {self.exif_focal_tolerance!r}")
        if not 1.0 < self.flat_far_near_ratio <= self.min_far_near_ratio:
            raise ValueError(f"need 1 < flat_far_near_ratio <= min_far_near_ratio, got {self.flat_far_near_ratio!r}, "
                             f"{self.min_far_near_ratio!r}")
        for name in ("object_depth_extent", "person_depth_extent"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [0, 2], got {getattr(self, name)!r}")
        if not 0.0 <= self.box_center_tolerance <= 0.5:
            raise ValueError(f"box_center_tolerance must be in [0, 0.5], got {self.box_center_tolerance!r}")
        if not 0.0 <= self.relative_object_bias < 1.0:
            raise ValueError(f"relative_object_bias must be in [0, 1), got {self.relative_object_bias!r}")
        if not 0.0 < self.near_share_ratio < 1.0:
            raise ValueError(f"near_share_ratio must be in (0, 1), got {self.near_share_ratio!r}")
        if not 0.0 <= self.depth_shrink < 0.5:
            raise ValueError(f"depth_shrink must be in [0, 0.5), got {self.depth_shrink!r}")
        if not self.hidden_min_pixels >= 0.0:
            raise ValueError(f"hidden_min_pixels must be >= 0, got {self.hidden_min_pixels!r}")
        if not self.min_detected_box_pixels >= 0.0:
            raise ValueError(f"min_detected_box_pixels must be >= 0, got {self.min_detected_box_pixels!r}")
        if self.depth_max_samples < 16:
            raise ValueError(f"depth_max_samples must be >= 16, got {self.depth_max_samples!r}")
        lo, hi = self.range_quantiles
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"range_quantiles must satisfy 0 <= lo < hi <= 1, got {self.range_quantiles!r}")
        if not 0 <= self.count_min <= self.count_max:
            raise ValueError(f"need 0 <= count_min <= count_max, got {self.count_min!r}..{self.count_max!r}")
        if self.grounding_max_instances < 1 or self.occlusion_min_pixels < 1:
            raise ValueError(
                f"grounding_max_instances and occlusion_min_pixels must be >= 1, got "
                f"{self.grounding_max_instances!r}, {self.occlusion_min_pixels!r}"
            )
        if not -1.0 <= self.min_box_gap <= 1.0:
            raise ValueError(f"min_box_gap must be in [-1, 1], got {self.min_box_gap!r}")
        object.__setattr__(self, "person_labels", tuple(label.lower() for label in self.person_labels))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------------- depth
def _quantile(values: np.ndarray, q: float) -> float:
    """``q``-quantile (nearest rank) by partition: faster than np.quantile on small arrays."""
    k = int(round(q * (len(values) - 1)))
    return float(np.partition(values, k)[k])


def object_bias(depth: DepthMap, config: VerifyConfig) -> float:
    """The per-object error the checks tolerate on ``depth``: ``relative_object_bias`` on relative
    maps and on metric maps a model predicted (:attr:`DepthMap.estimated`), none on measured meters."""
    return config.relative_object_bias if depth.estimated or not depth.metric else 0.0


def _grid_bounds(box: Sequence[float], shrink: float, max_samples: int, h: int, w: int) -> tuple[int, int, int, int, int]:
    """``(r0, r1, c0, c1, step)`` of the strided grid over the inner box; at least one pixel."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * shrink, (y2 - y1) * shrink
    c0 = min(max(int(math.floor(x1 + dx)), 0), w - 1)
    r0 = min(max(int(math.floor(y1 + dy)), 0), h - 1)
    c1 = min(max(int(math.ceil(x2 - dx)), c0 + 1), w)
    r1 = min(max(int(math.ceil(y2 - dy)), r0 + 1), h)
    step = max(1, math.ceil(math.sqrt((c1 - c0) * (r1 - r0) / max_samples)))
    return r0, r1, c0, c1, step


def _grid(depth: DepthMap, box: Sequence[float], shrink: float, max_samples: int) -> tuple[slice, slice]:
    """Strided row/column slices covering the inner box (depth-map pixels); at least one pixel."""
    r0, r1, c0, c1, step = _grid_bounds(box, shrink, max_samples, *depth.values.shape)
    return slice(r0, r1, step), slice(c0, c1, step)


class _Samples:
    """The strided inner-box samples of several boxes at once, as ``(boxes, samples)`` arrays.

    Row ``k`` holds box ``k``'s grid (:func:`_grid`) in row-major order, padded to the longest
    grid; ``keep`` marks real, valid samples. One sort serves every box of a record, instead of a
    handful of small numpy calls per box.
    """

    def __init__(self, depth: DepthMap, boxes: np.ndarray, shrink: float, max_samples: int) -> None:
        values, valid = depth.values, depth.valid
        h, w = values.shape
        # The grid of every box with _grid_bounds's Python float ops, inlined (ten boxes: cheaper
        # than numpy calls, and than a function call per box).
        floor, ceil, sqrt = math.floor, math.ceil, math.sqrt
        grids, sizes, shapes = [], [], []
        for x1, y1, x2, y2 in boxes.tolist():
            dx, dy = (x2 - x1) * shrink, (y2 - y1) * shrink
            c0 = min(max(int(floor(x1 + dx)), 0), w - 1)
            r0 = min(max(int(floor(y1 + dy)), 0), h - 1)
            c1 = min(max(int(ceil(x2 - dx)), c0 + 1), w)
            r1 = min(max(int(ceil(y2 - dy)), r0 + 1), h)
            step = max(1, ceil(sqrt((c1 - c0) * (r1 - r0) / max_samples)))
            nr, nc = -((r0 - r1) // step), -((c0 - c1) // step)  # grid rows and columns
            grids.append((r0, r1, c0, c1, step))
            shapes.append((r0, c0, step, nr, nc, nr * nc))
            sizes.append(nr * nc)
        # One int32 array of the per-box numbers (Python ints are exact: the same values as the
        # int32 arithmetic on the bounds, without half a dozen numpy calls on ten-element arrays).
        self.r0, self.c0, self.step, self.nr, self.nc, self.size = np.array(
            shapes, dtype=np.int32).reshape(-1, 6).T
        # Each grid is a strided slice of the map: copied row-major into its row of the padded
        # arrays (a slice copy reads whole cache lines; a gather of scattered pixels is ~2x
        # slower). Padding holds the map's first pixel and is never kept.
        longest = max(sizes, default=0)
        self.values = np.empty((len(grids), longest), dtype=values.dtype)
        self.values.fill(values.flat[0] if values.size else 0)
        self.keep = np.zeros((len(grids), longest), dtype=bool)
        for k, (r0_, r1_, c0_, c1_, step_) in enumerate(grids):
            rows, cols = slice(r0_, r1_, step_), slice(c0_, c1_, step_)
            grid = values[rows, cols]
            n = sizes[k]
            self.values[k, :n].reshape(grid.shape)[...] = grid
            self.keep[k, :n].reshape(grid.shape)[...] = valid[rows, cols]

    def exclude(self, partial: np.ndarray, ex: np.ndarray) -> None:
        """Drop samples of box ``k`` inside any box ``ex[p]`` with ``partial[k, p]``.

        The samples of a box inside another box form a rectangle of its grid: rows ``a:b`` and
        columns ``c:d`` (integer pixels against float edges: ``y >= y1 <=> y >= ceil(y1)``), cleared
        with one slice per pair.
        """
        k, p = np.nonzero(partial)
        if not len(k):
            return
        edge = np.ceil(ex[p]).astype(np.int64)
        r0, c0, step, nr, nc = self.r0[k], self.c0[k], self.step[k], self.nr[k], self.nc[k]
        a, b = _first_at(r0, step, edge[:, 1], nr), _first_at(r0, step, edge[:, 3], nr)
        c, d = _first_at(c0, step, edge[:, 0], nc), _first_at(c0, step, edge[:, 2], nc)
        for box, a_, b_, c_, d_, nr_, nc_ in zip(k.tolist(), a.tolist(), b.tolist(), c.tolist(), d.tolist(),
                                                 nr.tolist(), nc.tolist()):
            if a_ < b_ and c_ < d_:
                self.keep[box, : nr_ * nc_].reshape(nr_, nc_)[a_:b_, c_:d_] = False

    def robust(self, kind: str, quantile: float, min_valid_fraction: float, near_ratio: float,
               keep: np.ndarray | None = None, rows: list[int] | None = None,
               tail_quantile: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, near share, near tail)`` per box (or per box of ``rows``); NaN where too few samples.

        The value is the nearest-rank quantile of the kept samples in nearness order; the near
        share is the share of kept samples nearer than it by more than ``near_ratio``; the near
        tail is the ``tail_quantile`` in nearness order (the object's own nearest part; NaN when
        ``tail_quantile`` is None).
        """
        values = self.values if rows is None else self.values[rows]
        keep = (self.keep if rows is None else self.keep[rows]) if keep is None else keep
        size = self.size if rows is None else self.size[rows]
        count = keep.sum(axis=1)
        ok = (count > 0) & (count / size >= min_valid_fraction)
        out, near, tail = _nans(len(values)), np.zeros(len(values)), _nans(len(values))
        if not ok.any():
            return out, near, tail
        if not ok.all():
            values, keep, count = values[ok], keep[ok], count[ok]
        depth_kind = kind == "depth"
        q = quantile if depth_kind else 1.0 - quantile  # nearness order: inverse depth flips
        # Dropped samples become +inf (depth) or -inf (inverse depth): they sort to the far end and
        # are never "much nearer". One sort of all rows beats a partition per box (same statistic).
        ranked = np.where(keep, values, np.inf if depth_kind else -np.inf)
        ranked.sort(axis=1)
        offset = 0 if depth_kind else ranked.shape[1] - count  # inverse depth: skip the -inf first
        rows_ = np.arange(len(count))
        value = ranked[rows_, offset + np.rint(q * (count - 1)).astype(np.intp)]  # nearest rank, like round()
        if tail_quantile is not None:
            qt = tail_quantile if depth_kind else 1.0 - tail_quantile
            tail[ok] = ranked[rows_, offset + np.rint(qt * (count - 1)).astype(np.intp)]
        # The threshold is compared in float32, as a Python float against float32 samples would be.
        if depth_kind:
            much_nearer = ranked < (value.astype(np.float64) * (1.0 - near_ratio)).astype(np.float32)[:, None]
        else:
            much_nearer = ranked > (value.astype(np.float64) / (1.0 - near_ratio)).astype(np.float32)[:, None]
        share = much_nearer.sum(axis=1) / count
        out[ok] = value
        near[ok] = np.where(value > 0, share, 0.0)
        return out, near, tail


def _nans(n: int) -> np.ndarray:
    """``np.full(n, np.nan)`` without its Python wrapper (called a few times per record)."""
    out = np.empty(n)
    out.fill(np.nan)
    return out


def _first_at(start: np.ndarray, step: np.ndarray, edge: np.ndarray, n: np.ndarray) -> np.ndarray:
    """First grid index ``i`` in ``0..n`` with ``start + i * step >= edge`` (integers, exact)."""
    return np.minimum(np.maximum(-((start - edge) // step), 0), n)


_VALID_CACHE: dict[int, tuple[np.ndarray, bool]] = {}


def _all_valid(depth: DepthMap) -> bool:
    """Whether every pixel is valid (cached per mask object: a full-map reduction per box is slow)."""
    entry = _VALID_CACHE.get(id(depth.valid))
    if entry is None or entry[0] is not depth.valid:
        if len(_VALID_CACHE) > 8:
            _VALID_CACHE.clear()
        entry = (depth.valid, bool(depth.valid.all()))
        _VALID_CACHE[id(depth.valid)] = entry
    return entry[1]


def object_depth(
    depth: DepthMap,
    xyxy: Sequence[float],
    *,
    exclude: Sequence[Sequence[float]] | None = None,
    image_size: tuple[int, int] | None = None,
    config: VerifyConfig | None = None,
) -> float | None:
    """Robust depth of the object in pixel box ``xyxy`` (depth-map units), or None if unreliable.

    ``exclude``: boxes whose pixels do not belong to this object (occluders); ``image_size``
    ``(width, height)`` of the grid the boxes are on when it differs from the depth map's.
    """
    config = config or VerifyConfig()
    sx, sy = (1.0, 1.0) if image_size is None else (depth.width / image_size[0], depth.height / image_size[1])
    scale = np.array([sx, sy, sx, sy])
    samples = _Samples(depth, np.asarray(xyxy, float).reshape(1, 4) * scale, config.depth_shrink, config.depth_max_samples)
    if exclude is not None and len(exclude):
        ex = np.asarray(exclude, float).reshape(-1, 4) * scale
        samples.exclude(np.ones((1, len(ex)), dtype=bool), ex)
    value, near, _ = samples.robust(depth.kind, config.depth_quantile, config.min_valid_fraction, config.near_share_ratio)
    return None if np.isnan(value[0]) or near[0] > config.max_near_share else float(value[0])


def _region_values(depth: DepthMap, box: Sequence[float], max_samples: int) -> np.ndarray:
    rs, cs = _grid(depth, box, 0.0, max_samples)
    return depth.values[rs, cs][depth.valid[rs, cs]]


class _cached:
    """``functools.cached_property`` without its lock: Python 3.11 takes one lock shared by every
    instance on each first read, which shows at a dozen reads per record (Python 3.12 dropped the
    lock too). A :class:`Scene` is used by the thread that built it (:func:`scene_for`'s cache is
    thread-local); two threads reading one value first would at worst both compute it."""

    def __init__(self, func) -> None:
        self.func = func
        self.attrname = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.attrname = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.attrname] = self.func(instance)
        return value


# ----------------------------------------------------------------------------------------- scene
@dataclass(eq=False)
class Scene:
    """Per-record facts every task reads, computed once (boxes, flags, IoU, object depths).

    Built by :func:`scene_for`, which caches the last scene so the six generators of one record
    share it. Arrays are indexed like ``record.objects``.
    """

    record: Record
    config: VerifyConfig
    _mentions: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        det, rec = self.record.objects, self.record
        self.n = len(det)
        size = np.array([rec.width, rec.height, rec.width, rec.height], dtype=np.float64)
        self.xyxy = np.minimum(np.maximum(det.xyxy, 0.0), size)  # clipped to the image (np.clip is slower)
        self.boxes = normalize_bboxes(self.xyxy, rec.width, rec.height)  # the schema's rule, one numpy pass
        self.labels = det.labels
        self.area_px = (self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])
        self.area_frac = self.area_px / (rec.width * rec.height)
        self.label_count = Counter(self.labels)
        exhaustive = rec.exhaustive_labels
        self.exhaustive = {label: exhaustive is None or label in exhaustive for label in self.label_count}

    # -- per-object facts
    @_cached
    def object_ok(self) -> dict[str, np.ndarray]:
        """Per-object results of the checks every object of a row must pass, in the order they run."""
        det, cfg = self.record.objects, self.config
        return {
            "single_instance": ~det.is_group,
            "not_depiction": ~det.is_depiction,
            "score": det.scores >= cfg.min_score,
            "min_box_area": (self.area_frac >= cfg.min_box_area if self.record.box_source == "annotation" else
                             (self.area_frac >= cfg.min_box_area) & (self.area_px >= cfg.min_detected_box_pixels)),
        }

    @_cached
    def eligible(self) -> np.ndarray:
        """Objects that pass every per-object check (the only ones whose depth is computed)."""
        if not self.n:
            return np.zeros(0, bool)
        return functools.reduce(operator.and_, self.object_ok.values())  # no 2-D stack of the flags

    @_cached
    def area_list(self) -> list[float]:
        """``area_frac`` as Python floats (rows read single values)."""
        return self.area_frac.tolist()

    @_cached
    def row_box_ok(self) -> list[bool]:
        """Per object: its entry in a row's ``objects`` passes the schema's rule
        (:func:`~spatialforge.builders.schema.object_error`); asked once per record, not once per row."""
        return [object_error(label, b) is None for b, label in zip(self.boxes, self.labels)]

    @_cached
    def _all_eligible(self) -> bool:
        return bool(self.eligible.all())

    def _object_checks(self, sieve: Sieve, skip: tuple[str, ...], candidate_ok) -> None:
        """Run each per-object check not in ``skip``; ``candidate_ok(ok_obj)`` turns a check's
        per-object verdicts into per-candidate ones."""
        all_ok = self._all_eligible
        for name, ok_obj in self.object_ok.items():
            if name in skip:
                continue
            if all_ok:  # the common case: nothing to drop, only record the check
                sieve.passed_all(name)
                continue
            sieve.check(name, candidate_ok(ok_obj), OBJECT_DROP_REASONS[name])

    def check_objects(self, sieve: Sieve, *indices: np.ndarray, skip: tuple[str, ...] = ()) -> None:
        """Run the per-object checks on candidates made of the objects ``indices[0][c], indices[1][c], ...``."""

        def candidate_ok(ok_obj: np.ndarray) -> np.ndarray:
            ok = np.ones(sieve.m, dtype=bool)
            for idx in indices:
                ok &= ok_obj[np.asarray(idx, dtype=int)]
            return ok

        self._object_checks(sieve, skip, candidate_ok)

    @_cached
    def _intersections(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pairwise intersection areas, box areas)`` in pixels."""
        inter, area, _ = box_intersections(self.xyxy, self.xyxy)
        return inter, area

    @_cached
    def iou(self) -> np.ndarray:
        inter, area = self._intersections
        return iou_of(inter, area, area)

    @_cached
    def xyxy_list(self) -> list[list[float]]:
        """``xyxy`` as Python floats (per-pair code reads single values)."""
        return self.xyxy.tolist()

    @_cached
    def x_center(self) -> np.ndarray:
        return (self.xyxy[:, 0] + self.xyxy[:, 2]) / 2

    @_cached
    def _x_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Left and right box edges as contiguous arrays (1-D gathers are cheaper than 2-D ones)."""
        return self.xyxy[:, 0].copy(), self.xyxy[:, 2].copy()

    def box_gap(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Signed horizontal gap between boxes ``i`` and ``j`` / image width (< 0: they overlap in x)."""
        x1, x2 = self._x_edges
        return np.maximum(x1[j] - x2[i], x1[i] - x2[j]) / self.record.width

    def check_groups(self, sieve: Sieve, groups: Sequence[Sequence[int]], skip: tuple[str, ...] = ()) -> None:
        """Per-object checks on candidates made of variable-size groups of objects (all must pass)."""
        self._object_checks(sieve, skip, lambda ok_obj: [bool(ok_obj[list(g)].all()) for g in groups])

    def mention(self, k: int) -> str:
        """``the cup at [x1, y1, x2, y2]``; with ``label_alone_mentions``, ``the cup`` when the label
        names one boxed thing.

        A label is only unique when its annotation is exhaustive (an unboxed second cup would make
        "the cup" ambiguous), no detector box of it goes unexplained, and it has one box (group
        boxes included). Even then an instance that neither annotations nor detector box (half
        hidden, small) makes "the cup" ambiguous: the box alone rules that out.
        """
        if k not in self._mentions:
            label = self.labels[k]
            text = f"the {display_label(label)}"
            if (not self.config.label_alone_mentions or self.label_count[label] > 1 or not self.exhaustive[label]
                    or label in self.detector_extra):
                text += f" at {box_text(self.boxes[k])}"
            self._mentions[k] = text
        return self._mentions[k]

    @_cached
    def detector_extra(self) -> frozenset[str]:
        """Labels of which a detector run beside the annotations (``record.meta["detector_objects"]``)
        has a box scored ``>= detector_min_score`` that no annotated box of its label accounts for
        (case-insensitive labels): a count or a "the cup" they break.

        Each annotated box accounts for one detector box at most (:func:`unmatched_detections`): two
        detector boxes on one annotated cup are a second cup the annotation left out (one behind
        the other), not one cup seen twice."""
        det = self.record.meta.get(DETECTOR_OBJECTS)
        if det is None or not len(det):
            return frozenset()
        cfg = self.config
        mine = {label.lower(): label for label in self.label_count}
        keep = np.array([label.lower() in mine for label in det.labels]) & (det.scores >= cfg.detector_min_score)
        if not keep.any():
            return frozenset()
        idx = np.flatnonzero(keep)
        extra = unmatched_detections(det.xyxy[idx], [det.labels[k] for k in idx], det.scores[idx], self.xyxy,
                                     self.labels, cfg.detector_match_iou)
        return frozenset(mine[det.labels[idx[k]].lower()] for k in extra)

    @_cached
    def detector_other_label_iou(self) -> np.ndarray:
        """Per box, the largest IoU with a detector box beside the annotations (scored ``>=
        detector_min_score``) of another label that no annotated box of that label accounts for
        (:func:`unmatched_detections`): an instance the annotations left out, or a look-alike the
        detector names differently, where the box is. 0 without such boxes."""
        out = np.zeros(self.n)
        det = self.record.meta.get(DETECTOR_OBJECTS)
        if det is None or not len(det) or not self.n:
            return out
        idx = np.flatnonzero(det.scores >= self.config.detector_min_score)
        extra = [idx[k] for k in unmatched_detections(det.xyxy[idx], [det.labels[k] for k in idx], det.scores[idx],
                                                       self.xyxy, self.labels, self.config.detector_match_iou)]
        if not extra:
            return out
        iou = box_iou(self.xyxy, det.xyxy[extra])
        lower = [det.labels[e].lower() for e in extra]
        other = np.array([[name != label.lower() for name in lower] for label in self.labels], dtype=bool)
        return np.where(other, iou, 0.0).max(1)

    @_cached
    def unboxed_instance(self) -> bool:
        """Does the depth show an instance no box accounts for (``hidden_min_pixels`` or more
        pixels of a second layer no box's object explains, :func:`hidden.unexplained_pixels`)?
        False without depth or with the check off."""
        if not self.config.hidden_min_pixels:
            return False
        from .hidden import unexplained_pixels

        return unexplained_pixels(self) >= self.config.hidden_min_pixels

    def check_unboxed(self, sieve: Sieve) -> None:
        """Counting and grounding: drop every candidate still alive when :attr:`unboxed_instance`
        (read only then: it costs a pass over the depth map)."""
        if sieve.alive.any():
            sieve.check("instances_boxed", np.full(sieve.m, not self.unboxed_instance), "unboxed_instance")

    # -- depth
    @_cached
    def _overlaps(self) -> tuple[np.ndarray, np.ndarray]:
        """``(partial, contains)`` boolean matrices: row k lists boxes that overlap box k in part,
        and boxes that contain (>= 95 % of) box k, e.g. a table under a cup."""
        inter, area = self._intersections
        other = ~np.eye(self.n, dtype=bool)
        contains = (inter >= 0.95 * area[:, None]) & (inter > 0) & other
        partial = (inter > 0) & other & ~contains
        return partial, contains

    def _depth_of(self, depth: DepthMap, span: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(robust depth, mixed, near tail)`` per object for one depth map; depth NaN where
        unreliable, ``mixed`` where a value exists but too many pixels are much nearer
        (``max_near_share``); with ``span``, near tail: the ``span_quantile`` in nearness order
        of the whole box's own pixels (NaN otherwise).

        Pass 1 subtracts partly overlapping boxes (their pixels may be an occluder's). A box that
        contains the whole object cannot be subtracted, so pass 2 removes the pixels whose depth
        is within ``container_tolerance`` of that container's own pass-1 depth: a far object
        peeking out inside a near object's box keeps only its own pixels, a cup on a table keeps
        the cup. An object whose container has no depth, or a mixed one (too many of its pixels much
        nearer than its depth: no single depth marks its pixels), gets none either; on metric depth
        so does one inside an open shape (below: the container's pass-1 depth is what its box shows
        through it, often the very object inside).
        """
        cfg, rec = self.config, self.record
        sx, sy = depth.width / rec.width, depth.height / rec.height
        boxes = self.xyxy * np.array([sx, sy, sx, sy])
        partial, contains = self._overlaps
        samples = _Samples(depth, boxes, cfg.depth_shrink, cfg.depth_max_samples)
        # An occluder's pixels reach up to its box's error past its edges (a detector's box sits a
        # few % of its size off): the box is removed with that margin.
        wh = boxes[:, 2:] - boxes[:, :2]
        grown = boxes + np.hstack([-wh, wh]) * cfg.occluder_margin
        samples.exclude(partial, grown)
        args = (depth.kind, cfg.depth_quantile, cfg.min_valid_fraction, cfg.near_share_ratio)
        first, near, _ = samples.robust(*args)
        values = first.copy()
        # A container whose own pixels are not at one depth (mixed: an umbrella's canopy spanning
        # meters, seen against what lies behind it) leaves pixels outside its depth's tolerance.
        first_mixed = near > cfg.max_near_share
        for k in np.flatnonzero(contains.any(1)).tolist():
            if np.isnan(values[k]):
                continue
            reject = first[contains[k]]
            if not (np.isfinite(reject).all() and (reject > 0).all()) or first_mixed[contains[k]].any():
                values[k] = np.nan
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                at_container = (np.abs(np.log(samples.values[k][:, None] / reject)) < cfg.container_tolerance).any(-1)
            value, near_k, _ = samples.robust(*args, keep=(samples.keep[k] & ~at_container)[None], rows=[k])
            values[k], near[k] = value[0], near_k[0]
        mixed = np.isfinite(values) & (near > cfg.max_near_share)
        values[mixed] = np.nan
        tail = _nans(self.n)
        if span and self.n:
            # The whole box this time (an umbrella's canopy is in the border the inner box leaves
            # out), minus every box that overlaps it or that it contains: only its own pixels.
            whole = _Samples(depth, boxes, 0.0, cfg.depth_max_samples)
            whole.exclude(partial | contains.T, grown)
            tail = whole.robust(*args, tail_quantile=cfg.span_quantile)[2]
            if depth.metric:
                # Metric depth: an object whose own nearest part lies much nearer than its value is
                # an open shape the inner box sees through (an umbrella cut by the frame, its pole
                # out of view): no depth (relative depth asks depth_span of each pair instead).
                # A model's meters err per object: its own pixels (the tail) may read off by the
                # tolerated bias where what its box shows through it (the value) does not.
                much = (1.0 - cfg.near_share_ratio) * (1.0 + object_bias(depth, cfg))
                with np.errstate(invalid="ignore"):
                    if depth.kind == "depth":
                        open_shape = tail < values * much
                    else:
                        open_shape = tail * much > values
                open_shape &= ~contains.any(1)  # inside another box: the container rule above decided
                mixed |= open_shape
                values[open_shape] = np.nan
                # Inside an open shape's box (a person seen through an umbrella's canopy): the
                # container's pass-1 depth was what its box shows through it, the person's own, and
                # pass 2 removed the person's pixels with it.
                values[(contains & open_shape[None, :]).any(1)] = np.nan
        return values, mixed, tail

    @_cached
    def _depth_and_mixed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.record.depth is None:
            return np.full(self.n, np.nan), np.zeros(self.n, dtype=bool), np.full(self.n, np.nan)
        depth = self.record.depth
        return self._depth_of(depth, span=self.config.span_check)

    @property
    def depth(self) -> np.ndarray:
        """Robust depth per object in depth-map units (NaN: no depth map or unreliable)."""
        return self._depth_and_mixed[0]

    @property
    def depth_mixed(self) -> np.ndarray:
        """Objects with a depth value that was refused for mixing near and far pixels."""
        return self._depth_and_mixed[1]

    @property
    def depth_tail(self) -> np.ndarray:
        """Per object, its nearest part: the ``span_quantile`` of its pixels in nearness order."""
        return self._depth_and_mixed[2]

    @_cached
    def depth_alt(self) -> np.ndarray | None:
        alt = self.record.meta.get("depth_alt")
        if alt is None or not self.config.use_depth_alt:
            return None
        if not isinstance(alt, DepthMap):
            raise TypeError(f"{self.record.key}: meta['depth_alt'] must be a DepthMap, got {type(alt).__name__}")
        return self._depth_of(alt)[0]

    @_cached
    def _range_values(self) -> tuple[float, float] | None:
        """The ``range_quantiles`` of the depth map (strided sample), or None for < 2 valid pixels."""
        d = self.record.depth
        step = max(1, math.ceil(math.sqrt(d.values.size / 4096)))
        v = d.values[::step, ::step].ravel() if _all_valid(d) else d.values[::step, ::step][d.valid[::step, ::step]]
        if len(v) < 2:
            return None
        lo, hi = self.config.range_quantiles
        return _quantile(v, lo), _quantile(v, hi)

    @_cached
    def depth_range(self) -> float:
        """Robust spread of the depth map (``range_quantiles``), in its own units."""
        q = self._range_values
        return 0.0 if q is None else q[1] - q[0]

    @_cached
    def _far_near(self) -> tuple[float, float] | None:
        """Inverse depth ``(a, b)`` of the image's far and near end (``range_quantiles``; non-metric
        ``kind="depth"`` inverted first), or None without two valid pixels or a positive depth."""
        q = self._range_values
        if q is None:
            return None
        if self.record.depth.kind == "inverse_depth":
            return q
        if q[0] <= 0:
            return None
        return 1.0 / q[1], 1.0 / q[0]

    @_cached
    def shift_bounds(self) -> tuple[float, float] | None:
        """Bounds ``(lo, hi)`` on the unknown shift ``t`` of relative inverse depth (true inverse
        depth ``~ value - t``), or None without two valid pixels.

        With ``a``, ``b`` the inverse depth of the image's far and near end (:attr:`_far_near`):
        nothing visible lies beyond infinity, so ``t <= a``; the far end is at least
        ``min_far_near_ratio`` (``R``) times as far as the near end, ``(b - t) >= R (a - t)``, so
        ``t >= (R a - b) / (R - 1)``.
        """
        ends = self._far_near
        return None if ends is None else (_shift_at(*ends, self.config.min_far_near_ratio), ends[0])

    @_cached
    def flat_shift(self) -> float | None:
        """The shift of relative inverse depth at which the image's far end is only
        ``flat_far_near_ratio`` times as far as its near end (the flattest view assumed: a wall just
        behind the objects), below :attr:`shift_bounds`; None where those are None."""
        ends = self._far_near
        return None if ends is None else _shift_at(*ends, self.config.flat_far_near_ratio)

    @_cached
    def depth_solid(self) -> np.ndarray:
        """Per object, whether its (relative) depth is its own: not refused for mixing near and far
        pixels, and its own nearest part (:attr:`depth_tail`) no more than ``min_range_margin`` of
        the image's depth range nearer than its depth (else an open shape, an umbrella whose box
        shows mostly what is behind it: its depth is that of the background)."""
        sign = -1.0 if self.record.depth.kind == "depth" else 1.0  # nearness order: larger = nearer
        with np.errstate(invalid="ignore"):
            near_part = (self.depth_tail - self.depth) * sign
            return ~self.depth_mixed & (near_part <= self.config.min_range_margin * self.depth_range)

    @_cached
    def focal_lengths(self) -> tuple[np.ndarray, str]:
        """Focal lengths (pixels of the record's grid) the geometry checks try, and where they come
        from: ``record.meta["focal_px"]`` (from EXIF, see the readers) within
        ``exif_focal_tolerance``, else ``focal_steps`` values across ``hfov_prior_deg``."""
        cfg, rec = self.config, self.record
        focal = rec.meta.get("focal_px")
        if focal:
            tol = cfg.exif_focal_tolerance
            return np.array([focal * (1 - tol), focal * (1 + tol)]), str(rec.meta.get("focal_source", "exif"))
        return _prior_focal_lengths(rec.width, tuple(cfg.hfov_prior_deg), cfg.focal_steps)

    def occlusion_consistent(self, near: int, far: int) -> bool | None:
        """Does the overlap of two boxes show the nearer object? None when there is no evidence.

        Pixels of the overlap are sorted by which robust depth they are closer to; pixels beyond
        the farther object by more than half the gap are background and ignored.
        """
        d = self.record.depth
        rec = self.record
        bn, bf = self.xyxy_list[near], self.xyxy_list[far]  # Python floats: cheaper than numpy scalars
        box = [max(bn[0], bf[0]), max(bn[1], bf[1]), min(bn[2], bf[2]), min(bn[3], bf[3])]
        if box[2] <= box[0] or box[3] <= box[1]:
            return None
        sx, sy = d.width / rec.width, d.height / rec.height
        v = _region_values(d, [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], 256)
        a, f = self.depth[near], self.depth[far]
        sign = 1.0 if d.kind == "depth" else -1.0  # compare in "depth order": larger = farther
        v, a, f = v * sign, a * sign, f * sign
        mid, gap = (a + f) / 2, f - a
        near_side = int(np.count_nonzero(v < mid))
        far_side = int(np.count_nonzero((v >= mid) & (v <= f + gap / 2)))
        if near_side + far_side < self.config.occlusion_min_pixels:
            return None
        return near_side >= self.config.occlusion_min_fraction * (near_side + far_side)


def _shift_at(a: float, b: float, r: float) -> float:
    """The shift ``t`` of inverse depth at which far end ``a`` lies ``r`` times as far as near end
    ``b``: ``(b - t) = r (a - t)``."""
    return (r * a - b) / (r - 1.0)


@functools.lru_cache(maxsize=64)
def _prior_focal_lengths(width: int, hfov_deg: tuple[float, float], steps: int) -> tuple[np.ndarray, str]:
    """``steps`` focal lengths (pixels) across ``hfov_deg`` for an image ``width`` pixels wide, and
    their source name; cached (a folder of photos has a few widths), the array read-only."""
    lo, hi = (math.radians(v) / 2 for v in hfov_deg)
    f_lo, f_hi = width / 2 / math.tan(hi), width / 2 / math.tan(lo)
    f = np.geomspace(f_lo, f_hi, steps) if steps > 1 else np.array([math.sqrt(f_lo * f_hi)])
    f.flags.writeable = False
    return f, f"prior:hfov{hfov_deg[0]:g}-{hfov_deg[1]:g}"


def unmatched_detections(det_xyxy: np.ndarray, det_labels: Sequence[str], det_scores: np.ndarray,
                         xyxy: np.ndarray, labels: Sequence[str], min_iou: float) -> list[int]:
    """Detector boxes that no annotated box of their label (case-insensitive) accounts for.

    Matched one to one, highest score first, each to the free annotated box of its label it
    overlaps most at IoU ``>= min_iou``; the indices of the boxes left without one.

    >>> unmatched_detections(np.array([[0, 0, 10, 10], [1, 0, 11, 10]]), ["cup", "cup"], np.array([0.9, 0.4]),
    ...                      np.array([[0, 0, 10, 10]]), ["Cup"], 0.5)
    [1]
    """
    if not len(det_xyxy):
        return []
    iou = box_iou(np.asarray(det_xyxy, float), np.asarray(xyxy, float)) if len(xyxy) else np.zeros((len(det_xyxy), 0))
    lower = [label.lower() for label in labels]
    free = np.ones(len(lower), dtype=bool)
    out = []
    for k in np.argsort(-np.asarray(det_scores, np.float64), kind="stable").tolist():
        same = np.array([other == det_labels[k].lower() for other in lower], dtype=bool) & free
        cand = np.where(same, iou[k], -1.0)
        j = int(cand.argmax()) if len(cand) else -1
        if j < 0 or cand[j] < min_iou:
            out.append(k)
        else:
            free[j] = False
    return sorted(out)


def box_text(box: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, map(int, box))) + "]"


_CACHE = threading.local()


def scene_for(record: Record, config: VerifyConfig) -> Scene:
    """The :class:`Scene` of ``record``, reused while the same record/objects/depth are asked for."""
    cached = getattr(_CACHE, "entry", None)
    alt = record.meta.get("depth_alt")
    if cached is not None:
        k = cached[0]
        if k[0] is record and k[1] is record.objects and k[2] is record.depth and k[3] is alt and k[4] is config:
            return cached[1]
    key = (record, record.objects, record.depth, alt, config)
    scene = Scene(record, config)
    _CACHE.entry = (key, scene)
    return scene


# ----------------------------------------------------------------------------------------- sieve
_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``i < j`` index arrays of every unordered pair of ``n`` objects (cached per ``n``)."""
    if n not in _PAIRS:
        i, j = np.triu_indices(n, 1)
        i.flags.writeable = j.flags.writeable = False
        _PAIRS[n] = (i, j)
    return _PAIRS[n]


class Sieve:
    """Runs named checks over ``m`` candidates at once; the first failing check drops a candidate.

    ``check(name, ok, reason, applies=None)``: candidates still alive where ``applies`` (default:
    all) and not ``ok`` are dropped and counted under ``reason``; the check is recorded as passed
    for the others it applied to.
    """

    def __init__(self, m: int) -> None:
        self.m = m
        self.alive = np.ones(m, dtype=bool)
        self.drops: Counter = Counter()
        self._log: list[tuple[str, np.ndarray | None]] = []
        self.evidence: dict[str, np.ndarray] = {}  # per-candidate numbers for the verification struct

    def check(self, name: str, ok, reason: str, applies: np.ndarray | None = None) -> None:
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (self.m,):
            raise ValueError(f"check {name!r}: expected {self.m} results, got shape {ok.shape}")
        fail = self.alive > ok  # alive and not ok
        if applies is not None:
            applies = np.asarray(applies, dtype=bool)
            fail &= applies
        n = int(np.count_nonzero(fail))
        if n:
            self.drops[reason] += n
            self.alive ^= fail  # fail is a subset of alive
        self._log.append((name, applies))

    def passed_all(self, name: str) -> None:
        """Record a check that every candidate passed (same as ``check(name, all True, ...)``)."""
        self._log.append((name, None))

    def passed(self, k: int) -> list[str]:
        return [name for name, applies in self._log if applies is None or applies[k]]

    def survivors(self) -> np.ndarray:
        return self.alive.nonzero()[0]  # np.flatnonzero of a 1-D array, without its Python wrapper


def label_groups(scene: Scene) -> tuple[list[str], list[list[int]], Sieve]:
    """Per-label tasks (grounding, counting): the labels (sorted), each label's box indices, and a
    :class:`Sieve` over the labels in which the ``exhaustive`` check has run."""
    by_label: dict[str, list[int]] = {}
    for k, label in enumerate(scene.labels):
        by_label.setdefault(label, []).append(k)
    labels = sorted(by_label)
    sieve = Sieve(len(labels))
    sieve.check("exhaustive", [scene.exhaustive[label] for label in labels], "not_exhaustive")
    if DETECTOR_OBJECTS in scene.record.meta:
        extra = scene.detector_extra
        sieve.check("detector_agrees", [label not in extra for label in labels], "detector_extra_instance")
    return labels, [by_label[label] for label in labels], sieve


def left_to_right(scene: Scene, indices) -> tuple[int, ...]:
    """Box indices ordered by left edge, then top edge, then index (the order answers list boxes in)."""
    return tuple(sorted(indices, key=lambda k: (scene.boxes[k][0], scene.boxes[k][1], k)))
