"""Perspective: left/right of an object as a person in the image sees it.

Candidates: every (person, other box) pair; a person is a box labeled one of
``person_labels`` or with a known facing. The rule that flips silently when wrong: a person
facing the camera has their LEFT on the image's RIGHT; a person facing away shares the camera's
left/right. Only ``toward_camera`` / ``away_from_camera`` with ``facing_confidence >=
min_facing_confidence`` are used (``facing_unknown``, ``facing_sideways``,
``facing_low_confidence`` drops otherwise). The boxes must be separated in x (``box_separation``).

A person labeled "toward_camera" is rarely turned exactly at it. Turned by an angle ``yaw``, their
right vector tilts, and an object far ahead of or behind them changes side when its offset along
the camera-person ray outweighs its offset across it. With a depth map, ``lateral_dominance``
places both on the ground plane (``X = (x - width / 2) / f * Z``, ``f`` from ``assumed_hfov_deg``)
and asks ``across >= tan(perspective_max_yaw_deg) * |along|``, so no turn up to that angle can
flip the answer (drops: ``depth_invalid``, ``lateral_ambiguous``). Relative (non-metric) depth is
not a distance: the check then must hold for every shift of the inverse depth on a grid
(``relative_shifts`` of :attr:`.verify.Scene.inverse_floor`) and with the object's depth off by
``relative_object_bias`` either way. Without a depth map the check
cannot run and the image rule alone decides. Fact: ``{subject: the object, predicate: left_of | right_of, object: the
person, frame: person}``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..records import Record
from .step import Candidates, Generated
from .verify import Sieve, VerifyConfig, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    det = record.objects
    # Scene.is_person, inlined (one pass over the labels, not a method call per box).
    people, facing = config.person_labels, det.facing
    persons = [k for k, label in enumerate(scene.labels)
               if label.lower() in people or facing[k] in ("toward_camera", "away_from_camera")]
    if not persons:
        return Generated([], Counter())
    others = ~np.eye(scene.n, dtype=bool)[persons]  # (persons, n): every other box
    per = np.repeat(persons, scene.n - 1)
    obj = np.nonzero(others)[1]
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
    if config.lateral_check and record.depth is not None:
        d = scene.depth
        with np.errstate(invalid="ignore", divide="ignore"):
            if record.depth.metric:
                z = np.where(d > 0, d if record.depth.kind == "depth" else 1.0 / d, np.nan)
                zp, zo = z[per][None], z[obj][None]
            else:
                # Relative depth: inverse depth up to a scale (harmless: the check is scale-free), an
                # unknown shift in [0, inverse_floor] and a per-object bias. Treating it as metric
                # bends the geometry, so the check must hold on a grid of shifts, with the object's
                # depth off by the bias either way.
                inv = d if record.depth.kind == "inverse_depth" else 1.0 / d
                t = scene.inverse_floor * np.asarray(config.relative_shifts)[:, None]
                z = np.where(inv - t > 0, 1.0 / (inv - t), np.nan)  # (shifts, objects)
                bias = 1.0 + config.relative_object_bias
                zp = np.tile(z[:, per], (3, 1))
                zo = np.concatenate([z[:, obj], z[:, obj] * bias, z[:, obj] / bias])
        has = np.isfinite(zo[0]) & np.isfinite(zp[0])
        sieve.check("depth_valid", has, "depth_invalid")
        sieve.check("lateral_dominance", _lateral_ok(zp, zo, cx[per], cx[obj], record.width, config).all(0),
                    "lateral_ambiguous")
    # Facing the camera mirrors left and right; facing away keeps the camera's.
    person_left = image_left ^ toward[per]
    predicate = np.where(person_left, "left_of", "right_of")
    sieve.evidence["box_gap"] = gap
    return Generated(Candidates(sieve, obj, per, predicate), sieve.drops)


def _lateral_ok(zp: np.ndarray, zo: np.ndarray, cxp: np.ndarray, cxo: np.ndarray, width: int,
                config: VerifyConfig) -> np.ndarray:
    """No turn up to ``perspective_max_yaw_deg`` flips the side, for camera depths ``zp`` of the
    people and ``zo`` of the objects (``(variants, candidates)``; NaN fails)."""
    # Camera-frame ground-plane positions (focal length from an assumed, narrow field of view:
    # a narrow view under-states lateral offsets, which keeps the check conservative).
    tan_half_fov, tan_yaw = _tangents(config.assumed_hfov_deg, config.perspective_max_yaw_deg)
    f = width / 2 / tan_half_fov
    px, pz = (cxp - width / 2) / f * zp, zp
    ox, oz = (cxo - width / 2) / f * zo, zo
    norm = np.hypot(px, pz)
    dx, dz = ox - px, oz - pz
    with np.errstate(invalid="ignore", divide="ignore"):
        along = (dx * px + dz * pz) / norm  # offset along the camera-person ray
        across = np.abs(dx * pz - dz * px) / norm  # offset across it (the image's left/right)
        return np.where(np.isfinite(zo) & np.isfinite(zp), across >= tan_yaw * np.abs(along), False)


_TANGENTS: dict[tuple[float, float], tuple[np.floating, np.floating]] = {}


def _tangents(hfov_deg: float, max_yaw_deg: float) -> tuple[np.floating, np.floating]:
    """``tan(hfov / 2)`` and ``tan(max_yaw)`` (numpy scalars, as computed inline before), per config."""
    key = (hfov_deg, max_yaw_deg)
    if key not in _TANGENTS:
        _TANGENTS[key] = (np.tan(np.radians(hfov_deg) / 2), np.tan(np.radians(max_yaw_deg)))
    return _TANGENTS[key]
