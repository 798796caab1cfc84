"""Which way a person faces, from COCO body keypoints.

The perspective task asks left/right *as a person sees it*, which flips with the way they face:
a person facing the camera has their LEFT side on the image's RIGHT, a person facing away shares
the camera's left/right. Getting this wrong silently flips every answer, so the rule is simple,
tested on hand-made keypoints, and returns ``unknown`` rather than guessing.

Rule (image x grows to the right; COCO index 5 = left shoulder, 6 = right shoulder, 11/12 = hips):

* ``x_left - x_right`` of shoulders (and hips, as support), divided by the torso length
  (shoulder midpoint to hip midpoint), is the *signed separation*;
* positive and large: ``toward_camera``; negative and large: ``away_from_camera``;
* small in magnitude (the body is seen edge-on): ``sideways``;
* no shoulder or hip pair, or no torso length to compare with: ``unknown``.

Visible face keypoints (nose, eyes) support ``toward_camera`` and count against
``away_from_camera``. The confidence in ``[0, 1]`` grows with the separation and the keypoint scores.

Example:
    >>> import numpy as np
    >>> kp = np.zeros((17, 3), np.float32)
    >>> kp[[5, 6, 11, 12]] = [[60, 40, 1], [40, 40, 1], [57, 80, 1], [43, 80, 1]]
    >>> facing_from_keypoints(kp)[0]
    'toward_camera'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..base import Step
from ..records import NUM_KEYPOINTS, Record

logger = logging.getLogger(__name__)

NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = 0, 1, 2, 3, 4
LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP = 5, 6, 11, 12


@dataclass(frozen=True)
class FacingThresholds:
    """Thresholds of the facing rule (data, not code).

    Separations are ``(x_left - x_right) / torso_length``. A frontal adult's shoulders are about
    0.8 torso lengths apart, hips about 0.5; seen edge-on both shrink towards 0.
    """

    sideways: float = 0.25  # |shoulder separation| below this: sideways
    full: float = 0.6  # |separation| at which the separation alone gives full confidence
    hip_scale: float = 1.6  # hips are narrower than shoulders: scale their separation up to compare
    hip_weight: float = 0.5  # weight of the hip pair relative to the shoulder pair
    min_torso_fraction: float = 1e-3  # torso shorter than this * max(|x|,|y|) extent: degenerate
    face_support: float = 0.25  # share of a toward_camera confidence that depends on a visible face
    face_against: float = 0.5  # factor on an away_from_camera confidence when the face is visible


DEFAULT_THRESHOLDS = FacingThresholds()


def keypoint_scores(keypoints: np.ndarray) -> np.ndarray:
    """Per-keypoint scores in ``[0, 1]``; COCO visibility flags (0, 1, 2) map to 0, 0.5, 1.

    NaN coordinates give score 0 (no keypoint).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    third = kp[:, 2]
    finite = np.isfinite(kp).all(axis=1)
    values = third[finite]
    # Annotations store visibility flags 0/1/2; models store scores in [0, 1].
    if values.size and np.isin(values, (0.0, 1.0, 2.0)).all() and (values == 2.0).any():
        scores = third / 2.0
    else:
        scores = third.copy()
    scores = np.where(finite, np.clip(scores, 0.0, 1.0), 0.0)
    return scores


def facing_from_keypoints(
    keypoints: np.ndarray,
    min_score: float = 0.3,
    thresholds: FacingThresholds = DEFAULT_THRESHOLDS,
) -> tuple[str, float]:
    """``(facing, confidence)`` of one person from ``(17, 3)`` COCO keypoints ``(x, y, score)``.

    ``facing`` is one of ``toward_camera``, ``away_from_camera``, ``sideways``, ``unknown``
    (confidence 0). Keypoints with a score below ``min_score`` or NaN coordinates count as missing.
    """
    kp, scores, seen = _read_keypoints(keypoints, min_score)

    def mid(a: int, b: int) -> tuple[float, float] | None:
        return ((kp[a][0] + kp[b][0]) / 2.0, (kp[a][1] + kp[b][1]) / 2.0) if seen[a] and seen[b] else None

    shoulders, hips = mid(LEFT_SHOULDER, RIGHT_SHOULDER), mid(LEFT_HIP, RIGHT_HIP)
    if shoulders is None and hips is None:
        return "unknown", 0.0
    # Torso length needs both a shoulder and a hip point (a single side is enough for each).
    upper = shoulders if shoulders is not None else _one_side(kp, seen, LEFT_SHOULDER, RIGHT_SHOULDER)
    lower = hips if hips is not None else _one_side(kp, seen, LEFT_HIP, RIGHT_HIP)
    if upper is None or lower is None:
        return "unknown", 0.0
    torso = float(np.hypot(upper[0] - lower[0], upper[1] - lower[1]))
    coords = [abs(v) for k in range(NUM_KEYPOINTS) if seen[k] for v in kp[k][:2] if v == v]  # nanmax
    extent = max(coords) if coords else (float("nan") if any(seen) else 0.0)
    if torso <= thresholds.min_torso_fraction * max(extent, 1.0):
        return "unknown", 0.0

    seps, weights, pair_scores = [], [], []
    if shoulders is not None:
        seps.append((kp[LEFT_SHOULDER][0] - kp[RIGHT_SHOULDER][0]) / torso)
        weights.append(1.0)
        pair_scores.append(min(scores[LEFT_SHOULDER], scores[RIGHT_SHOULDER]))
    if hips is not None:
        seps.append(thresholds.hip_scale * (kp[LEFT_HIP][0] - kp[RIGHT_HIP][0]) / torso)
        weights.append(thresholds.hip_weight)
        pair_scores.append(min(scores[LEFT_HIP], scores[RIGHT_HIP]))
    w = np.asarray(weights)
    sep = float(np.dot(w, seps) / w.sum())
    score = float(np.dot(w, pair_scores) / w.sum())
    # Shoulders and hips pointing opposite ways (twisted body or a keypoint swap): trust less.
    agreement = 1.0
    if len(seps) == 2 and _sign(seps[0]) != _sign(seps[1]):
        agreement = abs(sep) / max(abs(seps[0]), abs(seps[1]), 1e-9)

    face = max(scores[NOSE], scores[LEFT_EYE], scores[RIGHT_EYE])
    face_seen = face >= min_score
    if abs(sep) < thresholds.sideways:
        confidence = (1.0 - abs(sep) / thresholds.sideways) * score
        return "sideways", _clip01(confidence)
    strength = min(1.0, (abs(sep) - thresholds.sideways) / (thresholds.full - thresholds.sideways))
    confidence = strength * score * agreement
    if sep > 0:
        # A visible face supports facing the camera; its absence costs a share of the confidence.
        support = face if face_seen else 0.0
        confidence *= 1.0 - thresholds.face_support + thresholds.face_support * support
        return "toward_camera", _clip01(confidence)
    if face_seen:
        confidence *= thresholds.face_against
    return "away_from_camera", _clip01(confidence)


@dataclass(frozen=True)
class TurnPrior:
    """What the turn bound (:func:`max_turn_deg`) assumes about people and cameras (data, not code).

    A person turned by ``theta`` from facing the camera (or from facing straight away) shows their
    shoulders ``W cos(theta)`` apart across the camera ray; their torso (shoulder to hip joints,
    vertical) shows as ``T cos(elevation)`` for a camera looking down on them at ``elevation``. So
    ``cos(theta) = (shoulder width / torso in the image) * cos(elevation) / (W / T)``, and the
    largest turn consistent with the keypoints takes the largest body ratio ``W / T``, the
    steepest view and the keypoint errors that shrink the width most.

    Body ratios: adult shoulder joints are 0.32-0.42 m apart and 0.45-0.60 m above the hip joints,
    hip joints 0.16-0.26 m apart, so ``W / T <= 0.95`` for shoulders and ``<= 0.58`` for hips.
    ``keypoint_error``: how far a keypoint of score 1 may be off, as a share of the torso length
    (a careful annotator or a good pose model), and at least ``keypoint_error_px`` pixels (COCO
    keypoints are whole pixels, half a pixel off at best: on a person 20 px tall, whose torso is 6
    px, that is a twelfth of it); a keypoint of score ``s`` may be off by that much over ``s``.
    With one point of a pair seen, the pair's midpoint may lie up to half the pair's widest
    separation (``max_*_ratio`` torso lengths) to either side of it.

    People lean and bend (sitting at a table, on a bicycle, picking something up): a torso bent
    toward or away from the camera looks short, so its shoulders look wide for its length, as a
    frontal person's do, and an upright-body bound on the turn comes out too small. Two guards:
    widths that no upright body shows at ``max_elevation_deg`` (the bound would pass 1) say the
    torso is foreshortened beyond the prior, and the turn is then not bounded (90); and no
    keypoints place a person nearer than ``min_turn_deg`` to facing the camera or straight away
    (a lean that stays within the widths an upright body can show, and shoulders twisted against
    the hips, leave that much unknown).
    """

    max_shoulder_ratio: float = 0.95
    max_hip_ratio: float = 0.58
    max_elevation_deg: float = 30.0  # the camera looks down on a person's torso at most this steeply
    min_turn_deg: float = 30.0  # the smallest turn keypoints can bound a person's to (leans, twisted shoulders)
    keypoint_error: float = 0.05
    keypoint_error_px: float = 0.5


DEFAULT_TURN_PRIOR = TurnPrior()


def max_turn_deg(keypoints: np.ndarray, min_score: float = 0.3, prior: TurnPrior = DEFAULT_TURN_PRIOR) -> float:
    """The largest turn (degrees, ``0..90``) from facing the camera or facing straight away that is
    consistent with ``(17, 3)`` COCO keypoints; 90 when they cannot bound it (no shoulder or hip
    pair, no torso). Facing toward or away is :func:`facing_from_keypoints`'s sign; this is how
    far from it the body may be turned, either way.

    >>> kp = np.zeros((17, 3), np.float32)
    >>> kp[[5, 6, 11, 12]] = [[120, 40, 1], [80, 40, 1], [111, 90, 1], [89, 90, 1]]  # frontal, torso 50
    >>> round(max_turn_deg(kp), 1)
    54.5
    """
    kp, scores, seen = _read_keypoints(keypoints, min_score)
    upper = _mid_or_side(kp, seen, LEFT_SHOULDER, RIGHT_SHOULDER)
    lower = _mid_or_side(kp, seen, LEFT_HIP, RIGHT_HIP)
    if upper is None or lower is None:
        return 90.0
    torso = math.hypot(upper[0][0] - lower[0][0], upper[0][1] - lower[0][1])
    if torso <= 0.0:
        return 90.0
    unit = max(prior.keypoint_error, prior.keypoint_error_px / torso)  # a keypoint's error at score 1, in torsos
    err = [unit / s if s > 0 else float("inf") for s in scores]
    # each end off by its keypoints' mean error, and a one-sided end by half its pair's widest separation
    ends = ((upper[1], prior.max_shoulder_ratio), (lower[1], prior.max_hip_ratio))
    torso_err = sum(sum(err[k] for k in pts) / len(pts) + (ratio / 2 if len(pts) == 1 else 0.0) for pts, ratio in ends) * torso
    if torso <= torso_err:
        return 90.0
    cos_elev = math.cos(math.radians(prior.max_elevation_deg))
    best = 0.0  # the largest lower bound on cos(turn) any pair gives
    for a, b, ratio in ((LEFT_SHOULDER, RIGHT_SHOULDER, prior.max_shoulder_ratio), (LEFT_HIP, RIGHT_HIP, prior.max_hip_ratio)):
        if not (seen[a] and seen[b]):
            continue
        width = abs(kp[a][0] - kp[b][0]) - (err[a] + err[b]) * torso
        best = max(best, width / (torso + torso_err) * cos_elev / ratio)
    if best > 1.0:  # wider than any upright body shows: a torso leaning toward or away from the camera
        return 90.0
    return max(math.degrees(math.acos(best)), min(prior.min_turn_deg, 90.0))


def _mid_or_side(kp: list, seen: list[bool], a: int, b: int) -> tuple[tuple[float, float], list[int]] | None:
    """The midpoint of a keypoint pair (or the one point seen) and the points it is made of, or None."""
    pts = [k for k in (a, b) if seen[k]]
    if not pts:
        return None
    x = sum(kp[k][0] for k in pts) / len(pts)
    y = sum(kp[k][1] for k in pts) / len(pts)
    return (x, y), pts


def _read_keypoints(keypoints: np.ndarray, min_score: float) -> tuple[list, list[float], list[bool]]:
    """``(17, 3)`` keypoints as Python lists (seventeen points are too few for numpy's per-call
    overhead), their scores and which are seen (score >= ``min_score``)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be ({NUM_KEYPOINTS}, 3) COCO (x, y, score), got shape {kp.shape}")
    kp = kp.tolist()
    scores = _scores(kp)
    return kp, scores, [s >= min_score for s in scores]


def _one_side(kp: list, seen: list[bool], a: int, b: int) -> tuple[float, float] | None:
    for i in (a, b):
        if seen[i]:
            return kp[i][0], kp[i][1]
    return None


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _scores(kp: list[list[float]]) -> list[float]:
    """:func:`keypoint_scores` on Python lists (same values)."""
    finite = [math.isfinite(x) and math.isfinite(y) and math.isfinite(s) for x, y, s in kp]
    values = [row[2] for row, f in zip(kp, finite) if f]
    flags = bool(values) and all(v in (0.0, 1.0, 2.0) for v in values) and 2.0 in values
    return [min(max(row[2] / 2.0 if flags else row[2], 0.0), 1.0) if f else 0.0 for row, f in zip(kp, finite)]


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def person_labels_of(labels: Sequence[str] | None = None) -> frozenset[str]:
    """Lower-cased person labels; ``None``: the ones the perspective task treats as people
    (:attr:`~spatialforge.processing.tasks.verify.VerifyConfig.person_labels`: person, man, woman, boy, girl, child), so that
    every box that task may ask about gets a facing."""
    if labels is None:
        from ..tasks.verify import VerifyConfig

        labels = VerifyConfig().person_labels
    return frozenset(label.lower() for label in labels)


class FacingFromKeypoints(Step):
    """Fill ``objects.facing`` / ``facing_confidence`` of person boxes from their keypoints.

    Person boxes (label in ``person_labels``, case-insensitive; default: those of
    :func:`person_labels_of`) whose keypoints are all missing
    keep their current facing (``unknown`` unless another source set it). Other boxes are untouched.

    Example:
        >>> step = FacingFromKeypoints(min_score=0.3)
        >>> step.name
        'facing'
    """

    name = "facing"

    def __init__(
        self,
        min_score: float = 0.3,
        person_labels: Sequence[str] | None = None,
        thresholds: FacingThresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.min_score = min_score
        self.person_labels = person_labels_of(person_labels)
        self.thresholds = thresholds

    def process(self, record: Record) -> Record:
        apply_facing(record, self.min_score, self.person_labels, self.thresholds)
        return record


def apply_facing(
    record: Record,
    min_score: float = 0.3,
    person_labels: set[str] | frozenset[str] | None = None,
    thresholds: FacingThresholds = DEFAULT_THRESHOLDS,
    indices: list[int] | None = None,
) -> int:
    """Set facing for person boxes (or the given ``indices``) that have keypoints; returns how many.

    ``person_labels`` are lower-case (default: :func:`person_labels_of`)."""
    det = record.objects
    if indices is None:
        person_labels = person_labels_of() if person_labels is None else person_labels
        indices = [i for i, label in enumerate(det.labels) if label.lower() in person_labels]
    done = 0
    for i in indices:
        kp = det.keypoints[i]
        if not np.isfinite(kp).any():
            continue
        facing, confidence = facing_from_keypoints(kp, min_score=min_score, thresholds=thresholds)
        det.facing[i] = facing
        det.facing_confidence[i] = confidence
        done += 1
    return done
