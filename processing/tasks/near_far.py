"""Near-far: which of two objects is nearer to the camera (relative depth).

Candidates: every unordered pair of boxes. Checks, in order (first failure = the drop reason):
per-object checks of both boxes; ``depth_valid`` (a robust depth for both, see
:func:`.verify.object_depth`; ``no_depth`` when the record has no depth map at all);
``depth_uniform`` (few pixels much nearer than the object's depth: not an open shape such as an
umbrella over the ground, not hidden behind something unboxed; on relative depth also its own
nearest part no more than ``min_range_margin`` of the image's range in front of its value,
:attr:`.verify.Scene.depth_solid`, which a model reading the object behind what surrounds it
fails too; drop reason ``depth_mixed``);
``depth_positive``; ``depth_margin`` (``1 - nearer / farther >= min_depth_margin``; on relative
depth a pair short of it, though still ordered after the tolerated bias, passes when the ground
just below both box bottoms orders it the same way, recorded as ``ground_contact``: see
:func:`ground_contact_agrees`); ``depth_flat`` (relative depth: the order survives the tolerated
bias on the flattest view assumed, :func:`flat_ordered`, or the ground below both or a metric
second depth signal confirms it; drop reason ``depth_flat_ambiguous``); ``ground_consistent`` (a
depth model's output, relative or meters: the ground below both box bottoms does not order the
pair the other way, :func:`ground_contradicts`, and neither object reads far behind the ground it
stands on, :func:`behind_own_ground`; drop reason ``ground_contradicts``);
``depth_range_margin`` (relative inverse depth only); ``depth_span`` (non-metric depth: the
farther object's nearest part lies behind the nearer object, see :mod:`.verify`); ``depth_alt`` (a second depth signal in
``record.meta["depth_alt"]`` orders the pair the same way); ``ground_contact`` (opt-in); and
``occlusion`` (boxes that overlap: the overlap must show the nearer object's depth). The fact
stated is the one that holds; the phrasing step decides which of the two is the subject.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..records import Record
from .step import Candidates, Generated
from .verify import Sieve, VerifyConfig, object_bias, pairs, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    i, j = pairs(scene.n)
    if record.depth is None:
        return Generated([], Counter({"no_depth": len(i)}) if len(i) else Counter())
    sieve = Sieve(len(i))
    scene.check_objects(sieve, i, j)
    depth = record.depth
    d = scene.depth
    di, dj = d[i], d[j]
    mixed = scene.depth_mixed
    # Per-object flags first, then per pair (ten objects, not 45 pairs, go through each test).
    has_value = np.isfinite(d) | mixed
    # Relative depth: also not an object whose own nearest part lies well in front of its value
    # (Scene.depth_solid): an open shape read as the background, or one a model reads behind what
    # surrounds it.
    uniform = ~mixed if depth.metric else scene.depth_solid
    sieve.check("depth_valid", has_value[i] & has_value[j], "depth_invalid")
    sieve.check("depth_uniform", uniform[i] & uniform[j], "depth_mixed")
    with np.errstate(invalid="ignore", divide="ignore"):
        if depth.metric:
            mi, mj = di, dj
        else:
            # Relative depth: inverse depth up to a scale and a shift. Ratios do not survive the
            # shift, so they are taken at the shift the image allows that brings the two closest
            # (the low bound of Scene.shift_bounds: the flattest scene consistent with the map).
            bounds = scene.shift_bounds
            mi, mj = _less_shift(di, dj, depth.kind, bounds[0] if bounds is not None else np.nan)
        sieve.check("depth_positive", (mi > 0) & (mj > 0), "depth_nonpositive")
        # Same for depth and 1 / depth; relative or estimated (a model's meters): what is left after
        # the tolerated bias against the pair.
        margin = 1.0 - _ratio(mi, mj, object_bias(depth, config))
    i_nearer = di < dj if depth.kind == "depth" else di > dj
    near, far = np.where(i_nearer, i, j), np.where(i_nearer, j, i)
    rescued = np.zeros(len(i), dtype=bool)
    if not depth.metric:
        # A second signal that no depth scale, shift or per-object bias moves: of two objects
        # standing on the ground, the one on the nearer ground is the nearer; the ground (no
        # object, so no per-object bias) is read just below each box bottom.
        grounded = ground_contact_agrees(scene, record, near, far)
        if config.ground_rescue:
            # It may stand in for min_depth_margin, not for the order itself: the map must still
            # order the pair after the tolerated bias (margin > 0), and the other checks below run.
            with np.errstate(invalid="ignore"):
                rescued = (margin > 0) & (margin < config.min_depth_margin) & grounded
    sieve.check("depth_margin", (margin >= config.min_depth_margin) | rescued, "depth_margin")
    if not depth.metric:
        # The margin above holds on views at least min_far_near_ratio deep; a relative map cannot
        # tell such a view from a wall just behind the objects (both end in a flat far plateau), so
        # the order must also survive the tolerated bias on the flattest view assumed anywhere, or
        # be confirmed by what that flattening does not move: the ground below both objects, or a
        # metric second depth signal.
        flat = flat_ordered(scene, di, dj, config)
        confirmed = grounded | metric_alt_agrees(scene, record, near, far, config)
        sieve.check("depth_flat", flat | confirmed, "depth_flat_ambiguous")
        rescued |= grounded & ~flat
    if rescued.any():
        sieve.check("ground_contact", np.ones(len(i), dtype=bool), "ground_contact_disagree", applies=rescued)
    if config.ground_veto and object_bias(depth, config) > 0:
        # A model's per-object errors have tails beyond the bias tolerated (one object read half
        # again as far as it is): the ground below two standing objects carries none of them, and
        # where it orders the pair the other way, or an object reads far behind its own ground,
        # the objects' own depths are not to be believed.
        behind = behind_own_ground(scene, record, config)
        ok = ~ground_contradicts(scene, record, near, far) & ~behind[near] & ~behind[far]
        sieve.check("ground_consistent", ok, "ground_contradicts")
    if depth.kind == "inverse_depth" and not depth.metric:
        # An unknown shift breaks ratios: also ask for a share of the image's depth range.
        sieve.check("depth_range_margin", np.abs(di - dj) >= config.min_range_margin * scene.depth_range,
                    "depth_range_margin")
    if not depth.metric and config.span_check:
        # Relative depth is only an order: a ratio cannot tell an open shape (an umbrella's canopy
        # over the ground it lets through) from a solid one. Ask that the orders agree instead:
        # the farther object's own nearest part (span_quantile) still lies behind the nearer object.
        # By a share of the image's depth range, as the values themselves (depth_range_margin).
        behind = (scene.depth_tail[far] - d[near]) * (1.0 if depth.kind == "depth" else -1.0)
        with np.errstate(invalid="ignore"):
            ok = behind >= config.min_range_margin * scene.depth_range
        sieve.check("depth_span", ok, "depth_span_overlap")
    alt = scene.depth_alt
    if alt is not None:
        ai, aj = alt[near], alt[far]
        alt_map = record.meta["depth_alt"]
        with np.errstate(invalid="ignore", divide="ignore"):
            sieve.check("depth_alt_valid", np.isfinite(ai) & np.isfinite(aj) & (ai > 0) & (aj > 0), "depth_alt_invalid")
            alt_margin = _margin(ai, aj, alt_map.kind)  # > 0: same order
        sieve.check("depth_alt", alt_margin > config.depth_alt_min_margin, "depth_alt_disagree")
    if config.ground_contact:
        b, det, h = scene.xyxy, record.objects, record.height
        dy = (b[near, 3] - b[far, 3]) / h  # > 0: the nearer object's bottom is lower in the image
        free = lambda k: ~det.is_truncated[k] & (b[k, 3] < h - 1)  # noqa: E731 -- bottom edge visible
        applies = (np.abs(dy) >= config.ground_min_dy) & free(near) & free(far) & ~rescued
        sieve.check("ground_contact", dy > 0, "ground_contact_disagree", applies=applies)
    if config.occlusion_check:
        ok = np.ones(sieve.m, dtype=bool)
        applies = np.zeros(sieve.m, dtype=bool)
        for c in np.flatnonzero(sieve.alive & (scene.iou[near, far] > 0)).tolist():
            verdict = scene.occlusion_consistent(int(near[c]), int(far[c]))
            if verdict is not None:
                applies[c], ok[c] = True, verdict
        sieve.check("occlusion", ok, "occlusion_inconsistent", applies=applies)
    sieve.evidence["depth_margin"] = margin
    return Generated(Candidates(sieve, near, far, "nearer_than"), sieve.drops)


def flat_ordered(scene, di: np.ndarray, dj: np.ndarray, config: VerifyConfig) -> np.ndarray:
    """Per pair of relative depth values, whether their order survives each being off by
    ``relative_object_bias`` against the pair at the shift of :attr:`.verify.Scene.flat_shift`
    (the flattest view assumed: far end ``flat_far_near_ratio`` times the near end)."""
    t = scene.flat_shift
    if t is None:
        return np.zeros(len(di), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        mi, mj = _less_shift(di, dj, scene.record.depth.kind, t)
        return (mi > 0) & (mj > 0) & (_ratio(mi, mj, config.relative_object_bias) < 1.0)


def _less_shift(di: np.ndarray, dj: np.ndarray, kind: str, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative depth values as inverse depth less the shift ``t``: true inverse depth up to scale."""
    mi, mj = (di, dj) if kind == "inverse_depth" else (1.0 / di, 1.0 / dj)
    return mi - t, mj - t


def _ratio(mi: np.ndarray, mj: np.ndarray, bias: float) -> np.ndarray:
    """``nearer / farther`` of two positive values, after each is off by ``bias`` against the pair."""
    return np.minimum(mi, mj) / np.maximum(mi, mj) * (1.0 + bias) ** 2


def metric_alt_agrees(scene, record: Record, near: np.ndarray, far: np.ndarray, config: VerifyConfig) -> np.ndarray:
    """Per pair, whether a metric second depth signal (``record.meta["depth_alt"]``) orders it as
    ``near``, ``far`` say by ``min_depth_margin``; all False without one."""
    alt = scene.depth_alt
    if alt is None or not record.meta["depth_alt"].metric:
        return np.zeros(len(near), dtype=bool)
    a, b = alt[near], alt[far]
    alt_map = record.meta["depth_alt"]
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = 1.0 - (1.0 - _margin(a, b, alt_map.kind)) * (1.0 + object_bias(alt_map, config)) ** 2
        return (a > 0) & (b > 0) & (margin >= config.min_depth_margin)


def _margin(near_values: np.ndarray, far_values: np.ndarray, kind: str) -> np.ndarray:
    """``1 - nearer / farther`` of the values a map gives the pairs' nearer and farther objects
    (depth or inverse depth); negative where the map orders a pair the other way."""
    return 1.0 - (near_values / far_values if kind == "depth" else far_values / near_values)


def free_bottoms(scene, record: Record) -> np.ndarray:
    """Per object, whether its box bottom can be a ground contact: not cut by the frame (nor
    flagged truncated) and no other box reaching into the bottom ``BOTTOM_STRIP`` of it or the
    ground just below it (an occluder in front, a box it stands on or in)."""
    b, h = scene.xyxy, record.height
    n = len(b)
    if not n:
        return np.zeros(0, dtype=bool)
    strip_top = b[:, 3] - BOTTOM_STRIP * (b[:, 3] - b[:, 1])
    below = b[:, 3] + GROUND_GAP + GROUND_ROWS * (b[:, 3] - b[:, 1])
    x_overlap = (b[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < b[:, None, 2])
    y_overlap = (b[None, :, 3] > strip_top[:, None]) & (b[None, :, 1] < below[:, None])
    covered = (x_overlap & y_overlap & ~np.eye(n, dtype=bool)).any(1)
    return ~record.objects.is_truncated & (below < h) & ~covered


BOTTOM_STRIP = 0.25  # share of a box's height, at its bottom, that no other box may reach into for a ground contact
GROUND_GAP = 2.0  # pixels left between a box bottom and the ground sampled below it (blurred depth edges)
GROUND_ROWS = 0.1  # rows of ground sampled below a box bottom, as a share of the box height (at least one)


def ground_below(scene, record: Record) -> np.ndarray:
    """Per object, the depth map's median in a strip just below its box bottom (the middle half
    of its width): the ground it stands on, if it stands; NaN where the strip has no valid pixel.
    Ground carries no per-object bias, so two such values order two contacts whatever the objects'
    own depths err by."""
    depth = record.depth
    b = scene.xyxy
    sx, sy = depth.width / record.width, depth.height / record.height
    out = np.full(len(b), np.nan)
    for k, (x1, y1, x2, y2) in enumerate(b.tolist()):
        r0 = int(np.ceil((y2 + GROUND_GAP) * sy))
        r1 = max(r0 + 1, int(np.ceil((y2 + GROUND_GAP + GROUND_ROWS * (y2 - y1)) * sy)))
        c0, c1 = int(np.floor((x1 + (x2 - x1) / 4) * sx)), int(np.ceil((x2 - (x2 - x1) / 4) * sx))
        if r0 >= depth.height or c1 <= c0:
            continue
        v = depth.values[r0:r1, c0:c1]
        v = v[depth.valid[r0:r1, c0:c1]] if depth.valid is not None else v.ravel()
        if v.size:
            out[k] = float(np.median(v))
    return out


def _contacts(scene, record: Record) -> tuple[np.ndarray, np.ndarray | None]:
    """``(free_bottoms, ground_below)`` of ``scene``, computed once per scene (the ground None where no
    bottom is free): the ground rescue and both vetoes read them."""
    got = scene.__dict__.get("_contacts")
    if got is None:
        free = free_bottoms(scene, record)
        got = scene.__dict__["_contacts"] = (free, ground_below(scene, record) if free.any() else None)
    return got


def ground_contact_agrees(scene, record: Record, near: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Per pair, whether the ground below both box bottoms (:func:`ground_below`, both bottoms
    :func:`free_bottoms`) orders them as ``near``, ``far`` say by ``min_range_margin`` of the
    image's depth range, and neither object is nearer than its own ground by that much (lifted off
    the ground, on a shelf: then the ground below its bottom is far behind it) nor an open shape
    (:attr:`.verify.Scene.depth_solid`: an umbrella whose depth is that of the background)."""
    free, g = _contacts(scene, record)
    if g is None:
        return np.zeros(len(near), dtype=bool)
    sign = -1.0 if record.depth.kind == "depth" else 1.0  # in nearness order: larger = nearer
    g, d = g * sign, scene.depth * sign
    tol = scene.config.min_range_margin * scene.depth_range
    with np.errstate(invalid="ignore"):
        grounded = free & (d - g <= tol) & scene.depth_solid
        return grounded[near] & grounded[far] & (g[near] - g[far] >= tol)


def ground_contradicts(scene, record: Record, near: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Per pair, whether the ground below both box bottoms (:func:`ground_below`, both bottoms
    :func:`free_bottoms`) orders them the other way from ``near``, ``far``: the ground below
    ``far`` nearer by ``min_range_margin`` of the image's range of inverse depth. Unlike
    :func:`ground_contact_agrees` it does not ask that both stand on that ground: the ground below
    an object lifted off it (on a shelf) lies behind the object, which can only make a pair look
    contradicted where it is not, so a question is lost and none is kept wrongly."""
    free, g = _contacts(scene, record)
    ends = scene._far_near  # inverse depth of the image's far and near end: sky and a model's far cap weigh nothing
    if g is None or ends is None:
        return np.zeros(len(near), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = g if record.depth.kind == "inverse_depth" else 1.0 / g
        return free[near] & free[far] & (inv[far] - inv[near] >= scene.config.min_range_margin * (ends[1] - ends[0]))


OWN_GROUND_SLACK = 1.25
"""How much farther than the ground just below its box bottom an object standing there may read on
exact depth (its front against a strip of ground a few pixels nearer; a few % at most, more near
the horizon, where a strip of rows spans meters)."""


def behind_own_ground(scene, record: Record, config: VerifyConfig) -> np.ndarray:
    """Per object, whether a depth model reads it farther than the ground just below its box bottom
    (:func:`ground_below`, a :func:`free_bottoms` bottom) by more than its tolerated bias and
    :data:`OWN_GROUND_SLACK` allow, for every shift of relative inverse depth the image allows: an
    object standing there cannot lie that far behind its own ground, so its depth carries a larger
    error than the checks tolerate (or its bottom is not where it stands); all False on measured
    meters. Reading nearer than its ground says nothing: the object may be lifted off it."""
    depth = record.depth
    bias = object_bias(depth, config)
    free, g = _contacts(scene, record) if bias > 0 else (None, None)
    if g is None:
        return np.zeros(scene.n, dtype=bool)
    limit = (1.0 + bias) * OWN_GROUND_SLACK
    d = scene.depth
    with np.errstate(invalid="ignore", divide="ignore"):
        if depth.metric:
            far = d > limit * g
        else:
            bounds = scene.shift_bounds
            if bounds is None:
                return np.zeros(scene.n, dtype=bool)
            t = np.linspace(*bounds, config.shift_steps)[:, None]
            inv_d, inv_g = (d, g) if depth.kind == "inverse_depth" else (1.0 / d, 1.0 / g)
            od, og = inv_d - t, inv_g - t  # true inverse depth up to scale, at each shift
            far = ((og > 0) & ((od <= 0) | (og > limit * od))).all(0)  # farther than the ground at every shift
        return free & np.isfinite(d) & np.isfinite(g) & far
