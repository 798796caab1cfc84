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
flip the answer (drops: ``depth_invalid``, ``lateral_ambiguous``). Without a depth map the check
cannot run and the image rule alone decides. Fact: ``{subject: the object, predicate: left_of | right_of, object: the
person, frame: person}``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .records import Record
from .tasks import Candidates, Generated
from .verify import Sieve, VerifyConfig, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    det = record.objects
    persons = [k for k in range(scene.n) if scene.is_person(k)]
    if not persons:
        return Generated([], Counter())
    others = ~np.eye(scene.n, dtype=bool)[persons]  # (persons, n): every other box
    per = np.repeat(persons, scene.n - 1)
    obj = np.nonzero(others)[1]
    sieve = Sieve(len(per))
    scene.check_objects(sieve, per, obj)
    # Per-object facing flags, then per candidate (string comparisons on ten objects, not on every pair).
    known, sideways, toward = (np.array([f == v for f in det.facing], dtype=bool)
                               for v in ("unknown", "sideways", "toward_camera"))
    sieve.check("facing_known", ~known[per], "facing_unknown")
    sieve.check("facing", ~sideways[per], "facing_sideways")
    sieve.check("facing_confidence", det.facing_confidence[per] >= config.min_facing_confidence,
                "facing_low_confidence")
    gap = scene.box_gap(obj, per)
    sieve.check("box_separation", gap >= config.min_box_gap, "boxes_overlap_x")
    cx = scene.x_center
    image_left = cx[obj] < cx[per]  # the object is on the image's left of the person
    if config.lateral_check and record.depth is not None:
        d = scene.depth
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(d > 0, d if record.depth.kind == "depth" else 1.0 / d, np.nan)
        has = np.isfinite(z[obj]) & np.isfinite(z[per])
        sieve.check("depth_valid", has, "depth_invalid")
        # Camera-frame ground-plane positions (focal length from an assumed, narrow field of view:
        # a narrow view under-states lateral offsets, which keeps the check conservative).
        f = record.width / 2 / np.tan(np.radians(config.assumed_hfov_deg) / 2)
        px, pz = (cx[per] - record.width / 2) / f * z[per], z[per]
        ox, oz = (cx[obj] - record.width / 2) / f * z[obj], z[obj]
        norm = np.hypot(px, pz)
        along = ((ox - px) * px + (oz - pz) * pz) / norm  # offset along the camera-person ray
        across = np.abs((ox - px) * pz - (oz - pz) * px) / norm  # offset across it (the image's left/right)
        tan_yaw = np.tan(np.radians(config.perspective_max_yaw_deg))
        ok = np.where(has, across >= tan_yaw * np.abs(along), False)
        sieve.check("lateral_dominance", ok, "lateral_ambiguous")
    # Facing the camera mirrors left and right; facing away keeps the camera's.
    person_left = image_left ^ toward[per]
    predicate = np.where(person_left, "left_of", "right_of")
    sieve.evidence["box_gap"] = gap
    return Generated(Candidates(sieve, obj, per, predicate), sieve.drops)
