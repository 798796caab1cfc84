"""Perspective: left/right of an object as a person in the image sees it.

Candidates: every (person, other box) pair; a person is a box labeled one of
``person_labels`` or with a known facing. The rule that flips silently when wrong: a person
facing the camera has their LEFT on the image's RIGHT; a person facing away shares the camera's
left/right. Only ``toward_camera`` / ``away_from_camera`` with ``facing_confidence >=
min_facing_confidence`` are used (``facing_unknown``, ``facing_sideways``,
``facing_low_confidence`` drops otherwise). The boxes must be separated in x (``box_separation``).

A person labeled "toward_camera" is rarely turned exactly at it. Turned by an angle ``yaw``, their
right vector tilts, and an object far ahead of or behind them changes side when its offset along
the camera-person ray outweighs its offset across it. How far a person may be turned is read from
their keypoints (:func:`.facing.max_turn_deg`: shoulder and hip widths against the torso, with the
keypoints' scores, never below ``TurnPrior.min_turn_deg``, and unbounded where the shoulders are
wider than any upright body shows, as a torso leaning toward the camera makes them look;
``perspective_max_yaw_deg`` for a facing that came without keypoints) and recorded as
``verification.facing_max_turn_deg``. With a depth map, ``lateral_dominance`` places
both on the ground plane (``X = (x - width / 2) / f * Z``) and asks ``across >= tan(max turn) *
|along|`` for every focal length ``f`` the evidence allows (EXIF, or ``hfov_prior_deg``; recorded
as ``verification.focal_source``), so no turn consistent with the keypoints can flip the answer
(drops: ``depth_invalid``, ``lateral_ambiguous``). Depth sees fronts and boxes are not the middles
they stand for, so the check also holds with the object's middle anywhere from its front to
``object_depth_extent`` of its largest visible size behind it, with where the person stands anywhere
from the body's front to ``person_depth_extent`` of their box's width behind it (a camera looking
down sees a standing person's back and shoulders nearer than their feet), and with either box's
center ``box_center_tolerance`` of its width to either side. Relative (non-metric) depth is not a distance:
the check then must also hold for every shift of the inverse depth the image allows
(:attr:`.verify.Scene.shift_bounds`, ``shift_steps`` values) and with each of the two depths off by
``relative_object_bias`` either way; a depth model's meters (``DepthMap.estimated``), with each
depth off by that bias either way. Without a depth map the check cannot run and the image rule
alone decides. Fact: ``{subject: the object, predicate: left_of | right_of, object: the person,
frame: person}``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..perception.facing import max_turn_deg
from ..records import Record
from .step import Candidates, Generated
from .verify import Sieve, VerifyConfig, object_bias, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    det = record.objects
    # A person: a person label or a known facing (one pass over the labels).
    people, facing = config.person_labels, det.facing
    persons = [k for k, label in enumerate(scene.labels)
               if label.lower() in people or facing[k] in ("toward_camera", "away_from_camera")]
    if not persons:
        return Generated([], Counter())
    others = ~np.eye(scene.n, dtype=bool)[persons]  # (persons, n): every other box
    per = np.repeat(persons, scene.n - 1)
    obj = np.nonzero(others)[1]
    if not len(per):  # a person alone: nothing to ask about
        return Generated([], Counter())
    sieve = Sieve(len(per))
    scene.check_objects(sieve, per, obj)
    # Per-object facing flags, then per candidate (string comparisons on ten objects, not on every pair).
    known = np.array([f != "unknown" for f in facing], dtype=bool)
    not_sideways = np.array([f != "sideways" for f in facing], dtype=bool)
    toward = np.array([f == "toward_camera" for f in facing], dtype=bool)
    sieve.check("facing_known", known[per], "facing_unknown")
    sieve.check("facing", not_sideways[per], "facing_sideways")
    sieve.check("facing_confidence", det.facing_confidence[per] >= config.min_facing_confidence,
                "facing_low_confidence")
    gap = scene.box_gap(obj, per)
    sieve.check("box_separation", gap >= config.min_box_gap, "boxes_overlap_x")
    cx = scene.x_center
    image_left = cx[obj] < cx[per]  # the object is on the image's left of the person
    # What follows only decides candidates still alive (a dropped one is counted once, by its first
    # failed check): the keypoints of people without one are not read, and the depth checks are
    # skipped when none is left (the rows and drop counts are the same).
    alive = sieve.alive
    asked = np.zeros(scene.n, dtype=bool)
    asked[per[alive]] = True
    turn = _max_turns(record, [k for k in persons if asked[k]], config)[per]
    if config.lateral_check and record.depth is not None and alive.any():
        d = scene.depth
        focal, _ = scene.focal_lengths
        with np.errstate(invalid="ignore", divide="ignore"):
            if record.depth.metric:
                z = np.where(d > 0, d if record.depth.kind == "depth" else 1.0 / d, np.nan)[None]
            else:
                # Relative depth: inverse depth up to a scale (harmless: the check is scale-free), an
                # unknown shift within shift_bounds and a per-object bias. Treating it as metric
                # bends the geometry, so the check must hold for every shift on a grid, with each
                # of the two depths off by the bias either way.
                inv = d if record.depth.kind == "inverse_depth" else 1.0 / d
                bounds = scene.shift_bounds
                t = np.linspace(*bounds, config.shift_steps)[:, None] if bounds is not None else np.full((1, 1), np.nan)
                z = np.where(inv - t > 0, 1.0 / (inv - t), np.nan)  # (shifts, objects)
            bias = object_bias(record.depth, config)
            if bias == 0.0:  # measured meters: as they are
                zp, zo = z[:, per], z[:, obj]
            else:
                b = 1.0 + bias
                factors = np.array([1.0, b, 1.0 / b])
                fp, fo = np.repeat(factors, 3), np.tile(factors, 3)  # every pair of factors
                zp = (z[:, None, per] * fp[None, :, None]).reshape(-1, len(per))
                zo = (z[:, None, obj] * fo[None, :, None]).reshape(-1, len(per))
        has = np.isfinite(zo).all(0) & np.isfinite(zp).all(0)
        sieve.check("depth_valid", has, "depth_invalid")
        if not record.depth.metric:
            # An open shape (an umbrella's canopy) reads as what its box shows behind it; on metric
            # depth object_depth refuses it, on relative depth its own nearest part gives it away.
            solid = scene.depth_solid
            sieve.check("depth_uniform", solid[per] & solid[obj], "depth_mixed")
        # Every focal length at once: a leading axis (the same element-wise arithmetic as one call each).
        # Only the candidates still alive are decided (the others are counted by their first drop).
        live = np.flatnonzero(sieve.alive)
        per_, obj_, zp, zo = per[live], obj[live], zp[:, live], zo[:, live]
        f = focal[:, None, None]
        b = scene.xyxy
        wp, wo = b[per_, 2] - b[per_, 0], b[obj_, 2] - b[obj_, 0]
        # Depth sees an object's front; its middle (what "on their left" is about) may lie up to
        # object_depth_extent of its largest visible size further back (a car seen nose on), and
        # where a person stands up to person_depth_extent of their box's width behind the body's
        # front (a body turned toward or away from the camera is no deeper than its box is wide).
        size = np.maximum(wo, b[obj_, 3] - b[obj_, 1])
        zo = _front_and_back(zo, config.object_depth_extent * size / f)  # (depths, focals, variants, candidates)
        zp = _front_and_back(zp, config.person_depth_extent * wp / f)
        # A box's center is not the middle it stands for: a detector's box sits a few % of its size
        # off, and a turned or leaning body's box is lopsided about it (arms, a torso over the hips).
        t = config.box_center_tolerance
        side = np.array([-t, t]) if t > 0 else np.zeros(1)
        cxp = cx[per_] + side[:, None] * wp  # (centers, candidates)
        cxo = cx[obj_] + side[:, None] * wo
        # Every combination: (person center, object center, person depth, object depth, focal, variant, candidate).
        ok = np.zeros(len(per), dtype=bool)
        if len(live):
            ok[live] = _lateral_ok(zp[None, None, :, None], zo[None, None, None, :], cxp[:, None, None, None, None, None],
                                   cxo[None, :, None, None, None, None], record.width, f, turn[live]).reshape(-1, len(live)).all(0)
        sieve.check("lateral_dominance", ok, "lateral_ambiguous")
    sieve.evidence["max_turn"] = turn
    # Facing the camera mirrors left and right; facing away keeps the camera's.
    person_left = image_left ^ toward[per]
    predicate = np.where(person_left, "left_of", "right_of")
    sieve.evidence["box_gap"] = gap
    return Generated(Candidates(sieve, obj, per, predicate), sieve.drops)


def _front_and_back(z: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """``z`` (the front depth sees) and ``z * (1 + extent)`` (the middle as far back as it may lie),
    stacked on a leading axis and broadcast to one shape; ``z`` alone where no extent is allowed."""
    if not np.any(extent > 0):
        return np.broadcast_to(z, np.broadcast_shapes(np.shape(z), np.shape(extent)))[None]
    return np.stack(np.broadcast_arrays(z, z * (1.0 + extent)))


def _lateral_ok(zp: np.ndarray, zo: np.ndarray, cxp: np.ndarray, cxo: np.ndarray, width: int, focal: float,
                turn_deg: np.ndarray) -> np.ndarray:
    """No turn up to ``turn_deg`` (per candidate) flips the side, for camera depths ``zp`` of the
    people and ``zo`` of the objects (``(variants, candidates)``; NaN fails) and focal length
    ``focal`` in pixels (a float, or an array of shape ``(focals, 1, 1)``: a leading axis of focal lengths)."""
    px, pz = (cxp - width / 2) / focal * zp, zp
    ox, oz = (cxo - width / 2) / focal * zo, zo
    norm = np.hypot(px, pz)
    dx, dz = ox - px, oz - pz
    with np.errstate(invalid="ignore", divide="ignore"):
        along = (dx * px + dz * pz) / norm  # offset along the camera-person ray
        across = np.abs(dx * pz - dz * px) / norm  # offset across it (the image's left/right)
        ok = across >= np.tan(np.radians(turn_deg)) * np.abs(along)
    return np.where(np.isfinite(zo) & np.isfinite(zp) & (turn_deg < 90.0), ok, False)


def _max_turns(record: Record, persons: list[int], config: VerifyConfig) -> np.ndarray:
    """Per object, the largest turn (degrees) its keypoints allow (:func:`.facing.max_turn_deg`) for
    the people ``persons``; ``perspective_max_yaw_deg`` for those without keypoints; NaN for the others."""
    det = record.objects
    out = np.full(len(det), np.nan)
    for k in persons:
        kp = det.keypoints[k]
        out[k] = max_turn_deg(kp, prior=config.turn_prior) if np.isfinite(kp).any() else config.perspective_max_yaw_deg
    return out
