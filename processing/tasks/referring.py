"""Referring: a region (box in the question) -> the category of the object in it.

One candidate per box. Asked only when the box is a single thing (not a group/crowd box, not a
depiction), passes the per-object checks, and no box of *another* label overlaps it with IoU >=
``max_referring_iou`` (then the region could name either): no annotated box, and where a detector
runs beside the annotations no box of it that they miss (an instance they left out right behind
this one: a chair behind a backpack, ``detector_ambiguous_region``). ``objects == [the box]`` and
the answer is its label.
"""

from __future__ import annotations

import numpy as np

from ..records import DETECTOR_OBJECTS, Record
from .step import Candidate, Generated
from .verify import Sieve, VerifyConfig, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    n = scene.n
    idx = np.arange(n)
    sieve = Sieve(n)
    scene.check_objects(sieve, idx)
    if n:
        labels = np.asarray(scene.labels, dtype=object)
        other_label_iou = np.where(labels[:, None] != labels[None, :], scene.iou, 0.0).max(1)
        sieve.check("unambiguous_region", other_label_iou < config.max_referring_iou, "ambiguous_region")
        if DETECTOR_OBJECTS in record.meta:
            sieve.check("detector_unambiguous", scene.detector_other_label_iou < config.max_referring_iou,
                        "detector_ambiguous_region")
    out = [Candidate(objects=(int(k),), form="plain", label=scene.labels[k], sieve=sieve, index=int(k))
           for k in sieve.survivors()]
    return Generated(out, sieve.drops)
