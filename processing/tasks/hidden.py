"""Pixels that show something no box accounts for: the evidence of an instance left out.

Annotations leave out instances (more than half hidden, small), and a detector run beside them
misses some of those: a count or a grounding answer is then short by one, and no box says so.
Measured depth shows what the boxes miss: a person half hidden behind another one is a second
layer in the front person's box, behind the front person and well in front of the ground or the
wall its box would otherwise show there.

:func:`unexplained_pixels` counts such pixels on a grid of at most :data:`GRID` cells across the
longer side, in nearness ``1 / depth`` (on which a plane, ground or wall, is affine in the pixel
coordinates):

1. *Background.* Planes are fitted (RANSAC, up to :data:`MAX_PLANES`) to the cells outside every
   box grown by its error (:data:`BOX_MARGIN` of its size and :data:`BOX_PAD` pixels). A cell's
   background is the nearest of the planes that explain free cells within :data:`BACKGROUND_ROWS`
   of the image height around its row (the ground in front of a wall, the wall above its base);
   cells without a measurement outside the boxes (sky) are farther than anything. Rows with no
   explained free cell near them have no background and show nothing. A plane whose free cells
   span less than :data:`PLANE_MIN_WIDTH` of the width, row by row (in the rows of its widest
   tenth, :data:`ROW_SPAN_Q`), is an object's face (an instance left out that stands partly
   outside every box), not ground or a wall: it is no background. Row by row, because the face of
   a person standing on the ground has the ground's nearness along the row of their feet, a band
   across the whole width that a plane through the face also explains.
2. *In front.* Cells nearer than their background by more than :data:`FRONT_ABS` of the image's
   nearness range plus :data:`FRONT_REL` of their own nearness (from the far end). A background
   is never farther than the image's far end (its 1 % nearness quantile): the sky, or the ground's
   plane extrapolated above the base of a wall it meets, does not put the far wall in front.
3. *Explained.* In each grown box, the cells no farther than the box's object: its depth (the
   record's robust object depth; for a detector box, the median of the cells it alone covers) less
   :data:`SPREAD` times its own spread (the object's farther half, in its middle, the
   :data:`SPREAD_QUANTILE` quantile) and :data:`LAYER_REL` of its nearness; then every cell in front
   of the background reached from those through smooth depth (neighbours within :data:`SMOOTH` of
   their nearness: an object's own receding side, not the step down to something behind it). A
   detector box that no annotated box accounts for and that covers no cell alone explains its
   whole region (it is a found instance, its pixels are accounted for).
4. What is left: cells inside boxes, in front of the background, that no box explains, counted
   in pixels of the depth map's own grid.
5. *Sensor errors.* A depth sensor's map (Kinect-like, time of flight, stereo) has mixed pixels
   on silhouettes, reading between the surfaces on either side, and noise on flat ones
   (:func:`_sensor_artifacts`); both leave one-cell rims and scattered cells that step 3 cannot
   reach through smooth depth. On such a map only cells of what is left that lie in a 2x2 block
   of it count: a hidden instance is a layer several cells thick, a rim is not. A renderer's map
   has neither error and is counted cell by cell (the smallest hidden layers it shows are thin).
6. *A model's depth* (relative inverse depth, or meters a model predicted,
   :attr:`~..records.DepthMap.estimated`): its blur spreads every silhouette into a ramp of
   in-between values, several cells wide, so what is left by steps 1-4 rings every object. A
   hidden instance is a surface instead: only cells that are flat (nearness changing by less than
   :data:`MODEL_FLAT` of their own per cell, over two cells each way: :func:`_flat`) count, only
   where they fill a square :data:`MODEL_THICK` cells each way (:func:`_opened`), and step 3 does
   not grow across a ramp (smooth depth is flat there too), which would otherwise lead from the
   object in front to the layer behind it. Relative maps are read as nearness as they are (an
   unknown scale and shift keep planes planar).

What a model's depth cannot show: a layer narrower than its blur (a sliver beside a head), and one
whose gap to the object in front is within the model's per-object error (a person 10 % behind
another, each read 10 % off the other way). Where the background is not planar (clutter, stairs)
its rows get no background and nothing is counted there: the check can miss, it does not invent.
"""

from __future__ import annotations

import math

import numpy as np

from ..records import DETECTOR_OBJECTS, box_iou

GRID = 320  # cells across the longer side at most
BOX_MARGIN = 0.08  # a box is grown by this share of its size (a detector's edges sit ~6 % off) ...
BOX_PAD = 3.0  # ... and these pixels
MAX_PLANES = 3  # ground, wall, a slope
PLANE_TOL_ABS = 0.01  # a cell is on a plane within this share of the image's nearness range ...
PLANE_TOL_REL = 0.02  # ... plus this share of its nearness
PLANE_MIN_CELLS = 30  # a plane explains at least this many free cells (and 1 % of them)
PLANE_SAMPLE = 400  # free cells a plane is searched on ...
FREE_SAMPLE = 4000  # ... of these, evenly spread over the free cells (which rows a plane explains)
PLANE_HYPOTHESES = 32
PLANE_MIN_WIDTH = 0.25  # a background plane's free cells span at least this share of the width
ROW_SPAN_Q = 0.9  # ... in the rows of its widest tenth (its span measured row by row)
BACKGROUND_ROWS = 0.05  # planes explaining free cells within this share of the height count for a row
FRONT_ABS = 0.01  # in front of the background: by this share of the nearness range ...
FRONT_REL = 0.03  # ... plus this share of the cell's nearness
SPREAD = 2.0
SPREAD_QUANTILE = 0.25
LAYER_REL = 0.08
SMOOTH = 0.06
MIN_OWN_CELLS = 8
GROW_STEPS = 30
MIXED_STEP = 0.2  # a step between two flat surfaces: >= this share of the nearness ...
MIXED_MARGIN = 0.15  # ... and a cell on it reading at least this far inside it is mixed
MIXED_SHARE = 0.125  # a sensor's map: this share of its steps mixed ...
ROUGHNESS = 0.002  # ... or its flat stretches this rough
MODEL_FLAT = 0.03  # a model's map: a layer's cells change by less than this share of their nearness per cell ...
MODEL_THICK = 2  # ... and fill a square this many cells each way


def nearness(depth, step: int = 1) -> np.ndarray:
    """``1 / depth`` of a depth map (relative inverse depth as it is), every ``step``-th pixel each
    way (NaN where it has no measurement or depth <= 0)."""
    v = np.asarray(depth.values[::step, ::step], np.float32)
    if depth.kind == "inverse_depth":  # already nearness, up to scale and shift
        n = np.where(np.isfinite(v), v, np.float32(np.nan))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            n = np.where(v > 0, np.float32(1.0) / v, np.float32(np.nan))
    if depth.valid is not None:
        n[~depth.valid[::step, ::step]] = np.nan
    return n


def _rows_within(rows: np.ndarray, reach: int) -> np.ndarray:
    """Per row, whether any of ``rows`` (a boolean per row) lies within ``reach`` rows of it."""
    h = len(rows)
    cs = np.concatenate([[0], np.cumsum(rows)])
    index = np.arange(h)
    return (cs[np.minimum(index + reach + 1, h)] - cs[np.maximum(index - reach, 0)]) > 0


def _quantile(values: np.ndarray, q: float) -> float:
    """``q``-quantile (nearest rank) by partition."""
    k = int(q * (len(values) - 1))
    return float(np.partition(values, k)[k])


def _fit_planes(u: np.ndarray, v: np.ndarray, n: np.ndarray, tol, rng: np.random.Generator,
                min_width: float = 0.0) -> list[np.ndarray]:
    """Up to :data:`MAX_PLANES` planes ``n = a u + b v + c`` (RANSAC, then least squares on the inliers).

    A plane whose cells span fewer than ``min_width`` columns is an object's face, not ground or a
    wall (an instance left out, partly outside every box, is fronto-parallel: a plane in nearness):
    its cells are set aside and it is not returned."""
    pts = np.stack([u, v, np.ones_like(u)], 1)
    rest = np.arange(len(n))
    minimum = max(PLANE_MIN_CELLS, 0.01 * len(n))
    planes = []
    for _ in range(MAX_PLANES):
        if len(rest) < minimum:
            break
        sub = rest if len(rest) <= PLANE_SAMPLE else np.sort(rng.choice(rest, PLANE_SAMPLE, replace=False))
        a, b = pts[sub], n[sub]
        tri = rng.integers(0, len(sub), (PLANE_HYPOTHESES, 3))
        p0 = np.stack([a[tri[:, 0], 0], a[tri[:, 0], 1], b[tri[:, 0]]], 1)
        e1 = np.stack([a[tri[:, 1], 0], a[tri[:, 1], 1], b[tri[:, 1]]], 1) - p0
        e2 = np.stack([a[tri[:, 2], 0], a[tri[:, 2], 1], b[tri[:, 2]]], 1) - p0
        # the normal of the plane through the three cells in (u, v, nearness): e1 x e2, spelled out
        # (np.cross's own operations, in its order, without its overhead)
        normal = np.stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                           e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]], 1)
        good = np.abs(normal[:, 2]) > 1e-9
        if not good.any():
            break
        slope = -normal[good, :2] / normal[good, 2:]
        p = np.concatenate([slope, (p0[good, 2] - (slope * p0[good, :2]).sum(1))[:, None]], 1)
        pred = p @ a.T
        inl = np.abs(pred - b) < tol(pred)
        best = inl[int(inl.sum(1).argmax())]
        if best.sum() < 3:
            break
        ab = a[best]
        try:
            plane = np.linalg.solve(ab.T @ ab, ab.T @ b[best])
        except np.linalg.LinAlgError:
            break
        pred = pts[rest] @ plane
        on = np.abs(n[rest] - pred) < tol(pred)
        if on.sum() < minimum:
            break
        if _row_span(u[rest[on]], v[rest[on]]) >= min_width:
            planes.append(plane)
        rest = rest[~on]
    return planes


def _row_span(u: np.ndarray, v: np.ndarray) -> float:
    """The :data:`ROW_SPAN_Q` quantile over rows of how far apart a plane's cells lie within the
    row (columns): the ground and a wall span the view in each row they show; an object's face
    spans only its own width, however long the band where it cuts the ground."""
    if not len(v):
        return 0.0
    if (v[1:] < v[:-1]).any():  # the free cells come row by row (np.nonzero's order); others are sorted
        order = np.argsort(v, kind="stable")
        u, v = u[order], v[order]
    starts = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))
    return _linear_quantile(np.maximum.reduceat(u, starts) - np.minimum.reduceat(u, starts), ROW_SPAN_Q)


def _linear_quantile(values: np.ndarray, q: float) -> float:
    """``float(np.quantile(values, q))`` (linear interpolation, numpy's default), with numpy's own
    operations in its order, without its overhead (it is called per plane and costs more than the
    plane's other steps)."""
    n = len(values)
    at = (n - 1) * q
    k = math.floor(at)
    t = at - k
    ordered = np.sort(values)
    a, b = float(ordered[k]), float(ordered[min(k + 1, n - 1)])
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def _detector_boxes(scene) -> np.ndarray:
    """Detector boxes beside the annotations that no annotated box accounts for (a second box of a
    label on one annotated box counts; a box of another label on an annotated one is that object)."""
    from .verify import unmatched_detections  # verify imports this module lazily

    det = scene.record.meta.get(DETECTOR_OBJECTS)
    if det is None or not len(det):
        return np.zeros((0, 4))
    extra = unmatched_detections(det.xyxy, det.labels, det.scores, scene.xyxy, scene.labels, scene.config.detector_match_iou)
    if extra and scene.n:
        iou = box_iou(det.xyxy[extra], scene.xyxy)
        lower = [label.lower() for label in scene.labels]
        extra = [e for e, row in zip(extra, iou) if not any(
            row[j] >= scene.config.detector_match_iou and lower[j] != det.labels[e].lower() for j in range(scene.n))]
    return det.xyxy[extra].reshape(-1, 4)


def unexplained_pixels(scene) -> int:
    """Pixels (of the depth map's grid) inside boxes, in front of the background, that no box's
    object explains (see the module's docs); 0 without depth."""
    rec, depth = scene.record, scene.record.depth
    if depth is None or not scene.n:
        return 0
    model = depth.estimated or depth.kind == "inverse_depth"
    height, width = depth.values.shape
    step = max(1, math.ceil(max(height, width) / GRID))
    near = nearness(depth, step)
    h, w = near.shape
    finite = np.isfinite(near)
    values = near[finite]
    if len(values) < 100:
        return 0
    values = np.sort(values[:: max(1, len(values) // 4096)])
    lo, hi = values[int(0.01 * (len(values) - 1))], values[int(0.99 * (len(values) - 1))]
    span = max(hi - lo, 1e-12)
    nz = np.where(finite, near, lo)
    scale = np.abs(nz - lo) + 0.01 * span

    extra = _detector_boxes(scene)
    boxes = np.concatenate([scene.xyxy, extra]) * (np.array([width / rec.width, height / rec.height] * 2) / step)
    grown, inner = [], []
    cover = np.zeros((h, w), np.int16)
    pad = BOX_PAD / step
    for x1, y1, x2, y2 in boxes:
        mx, my = BOX_MARGIN * (x2 - x1) + pad, BOX_MARGIN * (y2 - y1) + pad
        g = (max(0, int(y1 - my)), min(h, math.ceil(y2 + my)), max(0, int(x1 - mx)), min(w, math.ceil(x2 + mx)))
        grown.append(g)
        inner.append((max(0, int(y1)), min(h, math.ceil(y2)), max(0, int(x1)), min(w, math.ceil(x2))))
        cover[g[0]:g[1], g[2]:g[3]] += 1
    boxed = cover > 0

    # 1. background planes, fitted to the free cells with a measurement
    def tol(pred):
        return PLANE_TOL_ABS * span + PLANE_TOL_REL * np.abs(pred - lo)

    free = ~boxed & finite
    every = max(1, int(math.sqrt(h * w / (2 * FREE_SAMPLE))))
    vv, uu = np.nonzero(free[::every, ::every])
    vv, uu = vv * every, uu * every
    if len(vv) > FREE_SAMPLE:
        keep = np.linspace(0, len(vv) - 1, FREE_SAMPLE).astype(np.int64)
        vv, uu = vv[keep], uu[keep]
    rng = np.random.default_rng(0)
    planes = _fit_planes(uu.astype(float), vv.astype(float), near[vv, uu], tol, rng, PLANE_MIN_WIDTH * w) if len(vv) else []
    rows_near = max(1, int(BACKGROUND_ROWS * h))
    background = np.full((h, w), -np.inf)
    known = np.zeros(h, bool)
    grid_u = np.arange(w, dtype=float)[None, :]
    grid_v = np.arange(h, dtype=float)[:, None]
    taken = np.zeros(len(vv), bool)
    for plane in planes:
        pv = plane[0] * grid_u + plane[1] * grid_v + plane[2]
        at = pv[vv, uu]
        on = ~taken & (np.abs(near[vv, uu] - at) < tol(at))
        taken |= on
        present = _rows_within(np.bincount(vv[on], minlength=h) > 0, rows_near)
        background = np.where(present[:, None], np.maximum(background, pv), background)
        known |= present
    sky = ~boxed & ~finite  # no measurement outside the boxes: farther than anything
    if sky.any():
        known |= _rows_within(sky.any(1), rows_near)

    # 2. in front of the background
    # (nothing is in front of a background farther than the image's far end: a plane extrapolated
    # beyond its cells, such as the ground above the horizon, does not put the far wall in front)
    bg = np.maximum(np.where(np.isfinite(background), background, lo), lo)
    front = finite & known[:, None] & (near > bg + FRONT_ABS * span + FRONT_REL * (bg - lo))
    if not (front & boxed).any():
        return 0

    # 3. what each box's object explains
    explained = np.zeros((h, w), bool)
    object_depth = scene.depth
    for k, (g, i) in enumerate(zip(grown, inner)):
        sl = (slice(g[0], g[1]), slice(g[2], g[3]))
        isl = (slice(i[0], i[1]), slice(i[2], i[3]))
        own = near[isl][front[isl] & (cover[isl] == 1)]
        if len(own) < MIN_OWN_CELLS:
            if k >= scene.n:
                explained[sl] = True
                continue
            own = near[isl][front[isl]]
            if len(own) < MIN_OWN_CELLS:
                explained[sl] = True
                continue
        if k < scene.n and np.isfinite(object_depth[k]) and depth.kind == "inverse_depth":
            layer = float(object_depth[k])
        elif k < scene.n and np.isfinite(object_depth[k]) and object_depth[k] > 0:
            layer = 1.0 / object_depth[k]
        else:
            layer = _quantile(own, 0.5)
        y0, y1, x0, x1 = i
        cy, cx, hh, hw = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) * 0.2, (x1 - x0) * 0.2
        csl = (slice(int(cy - hh), max(int(cy - hh) + 1, math.ceil(cy + hh))),
               slice(int(cx - hw), max(int(cx - hw) + 1, math.ceil(cx + hw))))
        middle = near[csl][front[csl] & (cover[csl] == 1)]
        if len(middle) < MIN_OWN_CELLS:
            middle = own
        farther = middle[middle <= layer]
        spread = layer - _quantile(farther, SPREAD_QUANTILE) if len(farther) else 0.0
        limit = layer - SPREAD * spread - LAYER_REL * abs(layer - lo) - FRONT_ABS * span
        explained[sl] |= near[sl] >= limit
    explained &= front
    left = front & boxed & ~explained
    if not left.any():
        return 0

    # ... and what smooth depth reaches from it (an object's own receding side), in a window
    ys, xs = np.nonzero(left)
    y0, y1 = max(0, ys.min() - GROW_STEPS), min(h, ys.max() + GROW_STEPS + 1)
    x0, x1 = max(0, xs.min() - GROW_STEPS), min(w, xs.max() + GROW_STEPS + 1)
    f, n, s = front[y0:y1, x0:x1], nz[y0:y1, x0:x1], scale[y0:y1, x0:x1]
    if model:  # not across the ramp a model's blur spreads between an object and what is behind it
        flat = _flat(nz, scale, finite)
        f = f & flat[y0:y1, x0:x1]
    sm_v = f[1:] & f[:-1] & (np.abs(n[1:] - n[:-1]) < SMOOTH * np.minimum(s[1:], s[:-1]))
    sm_h = f[:, 1:] & f[:, :-1] & (np.abs(n[:, 1:] - n[:, :-1]) < SMOOTH * np.minimum(s[:, 1:], s[:, :-1]))
    reached = explained[y0:y1, x0:x1].copy()
    for _ in range(GROW_STEPS):
        nxt = reached.copy()
        nxt[1:] |= reached[:-1] & sm_v
        nxt[:-1] |= reached[1:] & sm_v
        nxt[:, 1:] |= reached[:, :-1] & sm_h
        nxt[:, :-1] |= reached[:, 1:] & sm_h
        if np.array_equal(nxt, reached):
            break
        reached = nxt
    left[y0:y1, x0:x1] &= ~reached
    if model:
        return int(_opened(left & flat, MODEL_THICK).sum()) * step * step
    count = int(left.sum()) * step * step
    if count >= scene.config.hidden_min_pixels and _sensor_artifacts(nz, scale, finite):
        count = int(_thick(left).sum()) * step * step
    return count


def _flat(n: np.ndarray, scale: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Cells where nearness changes by less than :data:`MODEL_FLAT` of the cell's own nearness
    (from the far end) per cell along rows and along columns (central differences): a surface,
    not the ramp a model's blur spreads over a silhouette."""
    out = np.zeros(n.shape, bool)
    gx = np.abs(n[2:-2, 4:] - n[2:-2, :-4]) / 4
    gy = np.abs(n[4:, 2:-2] - n[:-4, 2:-2]) / 4
    ok = finite[2:-2, 4:] & finite[2:-2, :-4] & finite[4:, 2:-2] & finite[:-4, 2:-2]
    out[2:-2, 2:-2] = ok & (np.maximum(gx, gy) < MODEL_FLAT * scale[2:-2, 2:-2])
    return out


def _window_sum(mask: np.ndarray, r: int) -> np.ndarray:
    """Per cell, how many cells of ``mask`` lie in the ``(2r+1)``-wide square around it (clipped
    at the borders)."""
    h, w = mask.shape
    c = np.zeros((h + 1, w + 1), np.int32)
    c[1:, 1:] = np.cumsum(np.cumsum(mask, 0, dtype=np.int32), 1)
    y0, y1 = np.clip(np.arange(h) - r, 0, h), np.clip(np.arange(h) + r + 1, 0, h)
    x0, x1 = np.clip(np.arange(w) - r, 0, w), np.clip(np.arange(w) + r + 1, 0, w)
    return c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]


def _opened(mask: np.ndarray, r: int) -> np.ndarray:
    """The cells of ``mask`` in some full ``(2r+1)``-wide square of it (a morphological opening):
    of a band narrower than the square, nothing is left."""
    full = _window_sum(mask, r) == (2 * r + 1) ** 2
    return mask & (_window_sum(full, r) > 0)


def _thick(mask: np.ndarray) -> np.ndarray:
    """The cells of ``mask`` in some 2x2 block of it (what is left of lines one cell wide, and
    of single cells, is nothing)."""
    block = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    out = np.zeros_like(mask)
    out[:-1, :-1] |= block
    out[1:, :-1] |= block
    out[:-1, 1:] |= block
    out[1:, 1:] |= block
    return out


def _sensor_artifacts(n: np.ndarray, scale: np.ndarray, finite: np.ndarray) -> bool:
    """Does the map err the way depth sensors do? Mixed pixels: at steps between two flat
    surfaces (along rows and columns), the cell on the step reads a value in between
    (:data:`MIXED_SHARE` of such steps or more); or noise: flat stretches bend by more than
    :data:`ROUGHNESS` of their nearness (median second difference). A renderer's map has
    neither; a sensor's one-cell rims and scattered noisy cells are then not counted as a layer."""
    edges = mixed = 0
    bends = []
    for m, f, sc in ((n, finite, scale), (n.T, finite.T, scale.T)):
        p, a, b, c, q = (m[:, k:m.shape[1] - 4 + k] for k in range(5))
        ok = f[:, :-4] & f[:, 1:-3] & f[:, 2:-2] & f[:, 3:-1] & f[:, 4:]
        s = sc[:, 2:-2]
        flat = ok & (np.abs(p - a) < SMOOTH * s) & (np.abs(c - q) < SMOOTH * s)
        gap = np.abs(a - c)
        step = flat & (gap > MIXED_STEP * s)
        lo_, hi_ = np.minimum(a, c), np.maximum(a, c)
        between = (b - lo_ > MIXED_MARGIN * gap) & (hi_ - b > MIXED_MARGIN * gap)
        edges += int(step.sum())
        mixed += int((step & between).sum())
        smooth = flat & (gap < SMOOTH * s) & (np.abs(a - b) < SMOOTH * s)
        bends.append((np.abs(a - 2 * b + c) / s)[smooth])
    if edges and mixed >= MIXED_SHARE * edges:
        return True
    bend = np.concatenate(bends)
    return len(bend) > 100 and _median_exceeds(bend, ROUGHNESS)


def _median_exceeds(values: np.ndarray, t: float) -> bool:
    """``float(np.median(values)) > t``, exactly, by counting instead of partitioning."""
    n = len(values)
    above = values > np.float64(t)  # compared in float64, as the median's float is
    k = int(np.count_nonzero(above))
    if n % 2:
        return 2 * k >= n + 1
    if 2 * k != n:
        return 2 * k > n
    pair = np.array([values[~above].max(), values[above].min()], dtype=values.dtype)  # the middle two
    return float(np.median(pair)) > t
