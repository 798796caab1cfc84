"""Perspective: left/right of an object as a person in the image sees it.

Candidates: every (person, other box) pair; a person is a box labeled one of
``person_labels`` or with a known facing. The rule that flips silently when wrong: a person
facing the camera has their LEFT on the image's RIGHT; a person facing away shares the camera's
left/right. Only ``toward_camera`` / ``away_from_camera`` with ``facing_confidence >=
min_facing_confidence`` are used (``facing_unknown``, ``facing_sideways``,
``facing_low_confidence`` drops otherwise). The boxes must be separated in x (``box_separation``);
with metric depth, ``lateral_3d`` also asks that the lateral order in 3-D,
``X = (x - width / 2) * Z``, agrees with the image order (a far object can sit left in the image
yet right in the room). Fact: ``{subject: the object, predicate: left_of | right_of, object: the
person, frame: person}``.
"""

from __future__ import annotations

import numpy as np

from .records import Record
from .tasks import Candidate, Generated
from .verify import Sieve, VerifyConfig, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    det = record.objects
    persons = [k for k in range(scene.n) if scene.is_person(k)]
    pairs = [(o, p) for p in persons for o in range(scene.n) if o != p]
    obj = np.array([o for o, _ in pairs], dtype=int)
    per = np.array([p for _, p in pairs], dtype=int)
    sieve = Sieve(len(pairs))
    scene.check_objects(sieve, per, obj)
    facing = np.asarray(det.facing, dtype=object)[per]
    sieve.check("facing_known", facing != "unknown", "facing_unknown")
    sieve.check("facing", facing != "sideways", "facing_sideways")
    sieve.check("facing_confidence", det.facing_confidence[per] >= config.min_facing_confidence,
                "facing_low_confidence")
    gap = scene.box_gap(obj, per)
    sieve.check("box_separation", gap >= config.min_box_gap, "boxes_overlap_x")
    cx = scene.x_center
    image_left = cx[obj] < cx[per]  # the object is on the image's left of the person
    depth = record.depth
    if config.lateral_3d_check and depth is not None and depth.kind == "depth" and depth.metric and len(pairs):
        z = scene.depth
        lateral = (cx[obj] - record.width / 2) * z[obj] - (cx[per] - record.width / 2) * z[per]
        applies = np.isfinite(lateral)
        sieve.check("lateral_3d", np.where(applies, (lateral < 0) == image_left, True), "lateral_3d_disagree",
                    applies=applies)
    # Facing the camera mirrors left and right; facing away keeps the camera's.
    person_left = np.where(facing == "toward_camera", ~image_left, image_left)
    predicate = np.where(person_left, "left_of", "right_of")
    out = [
        Candidate(objects=(int(obj[c]), int(per[c])), predicate=str(predicate[c]), sieve=sieve, index=int(c),
                  evidence={"box_gap": float(gap[c])})
        for c in sieve.survivors()
    ]
    return Generated(out, sieve.drops)
