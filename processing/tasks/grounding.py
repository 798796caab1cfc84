"""Grounding: a label -> the box of its single instance, or the boxes of all its instances.

One candidate per label in the image. A label is asked about only when every instance is boxed
(``Record.exhaustive_labels``; a lone box of a non-exhaustive label may be one of several), none of
its boxes is a group/crowd box or a depiction, every box passes the per-object checks, and there
are at most ``grounding_max_instances``. The answer is the Qwen3-VL JSON of the boxes, left to
right; ``objects`` are the same boxes in the same order.
"""

from __future__ import annotations

import numpy as np

from ..records import Record
from .step import Candidate, Generated
from .verify import VerifyConfig, label_groups, left_to_right, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    labels, groups, sieve = label_groups(scene)
    scene.check_groups(sieve, groups)
    sieve.check("instance_count", [len(g) <= config.grounding_max_instances for g in groups], "too_many_instances")
    scene.check_unboxed(sieve)
    out = []
    for c in sieve.survivors():
        boxes = left_to_right(scene, groups[c])
        form = "single" if len(boxes) == 1 else "multi"
        out.append(Candidate(objects=boxes, form=form, label=labels[c], sieve=sieve, index=int(c)))
    return Generated(out, sieve.drops)
