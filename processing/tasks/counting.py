"""Counting: "how many X?" only where the count is certain.

One candidate per label in the image. Asked only when the label's annotation is exhaustive, none
of its boxes is a group/crowd box (a crowd box hides an unknown number) or a depiction, every box
scores >= ``min_score``, and the count is in ``[count_min, count_max]``. Tiny boxes still count
(the check ``min_box_area`` does not apply: a small cup is still a cup). ``objects`` are the
counted boxes, left to right; ``count`` is set.

Count 0 (opt-in, ``count_zero``): labels listed in ``record.meta["absent_labels"]`` (verified
absent, e.g. OpenImages negative image-level labels) become "0" questions; a listed label that
does have boxes is a contradiction and is dropped as ``absent_label_present``.
"""

from __future__ import annotations

import numpy as np

from ..records import Record
from .step import Candidate, Generated
from .verify import VerifyConfig, label_groups, left_to_right, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    labels, groups, sieve = label_groups(scene)
    scene.check_groups(sieve, groups, skip=("min_box_area",))
    sieve.check("instance_count", [config.count_min <= len(g) <= config.count_max for g in groups],
                "count_out_of_range")
    scene.check_unboxed(sieve)
    out = []
    for c in sieve.survivors():
        boxes = left_to_right(scene, groups[c])
        out.append(Candidate(objects=boxes, form="plain", label=labels[c], count=len(boxes),
                             sieve=sieve, index=int(c)))
    drops = sieve.drops
    if config.count_zero:
        present = set(labels)
        for label in sorted(record.meta.get("absent_labels") or ()):
            if label in present:
                drops["absent_label_present"] += 1
            else:
                out.append(Candidate(objects=(), form="plain", label=label, count=0, checks=["absent_label"]))
    return Generated(out, drops)
