"""Near-far: which of two objects is nearer to the camera (relative depth).

Candidates: every unordered pair of boxes. Checks, in order (first failure = the drop reason):
per-object checks of both boxes; ``depth_valid`` (a robust depth for both, see
:func:`.verify.object_depth`; ``no_depth`` when the record has no depth map at all);
``depth_uniform`` (few pixels much nearer than the object's depth: not an open shape such as an
umbrella over the ground, not hidden behind something unboxed; drop reason ``depth_mixed``);
``depth_positive``; ``depth_margin`` (``1 - nearer / farther >= min_depth_margin``);
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
from .verify import Sieve, VerifyConfig, pairs, scene_for


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
    uniform = ~mixed
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
            t = bounds[0] if bounds is not None else np.nan
            mi, mj = (di, dj) if depth.kind == "inverse_depth" else (1.0 / di, 1.0 / dj)
            mi, mj = mi - t, mj - t
        sieve.check("depth_positive", (mi > 0) & (mj > 0), "depth_nonpositive")
        ratio = np.minimum(mi, mj) / np.maximum(mi, mj)  # same for depth and 1 / depth
        if not depth.metric:  # what is left after each depth is off by the tolerated bias, against the pair
            ratio = ratio * (1.0 + config.relative_object_bias) ** 2
        margin = 1.0 - ratio
    sieve.check("depth_margin", margin >= config.min_depth_margin, "depth_margin")
    i_nearer = di < dj if depth.kind == "depth" else di > dj
    near, far = np.where(i_nearer, i, j), np.where(i_nearer, j, i)
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
            alt_margin = 1.0 - (ai / aj if alt_map.kind == "depth" else aj / ai)  # > 0: same order
        sieve.check("depth_alt", alt_margin > config.depth_alt_min_margin, "depth_alt_disagree")
    if config.ground_contact:
        b, det, h = scene.xyxy, record.objects, record.height
        dy = (b[near, 3] - b[far, 3]) / h  # > 0: the nearer object's bottom is lower in the image
        free = lambda k: ~det.is_truncated[k] & (b[k, 3] < h - 1)  # noqa: E731 -- bottom edge visible
        applies = (np.abs(dy) >= config.ground_min_dy) & free(near) & free(far)
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
