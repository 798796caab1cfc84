"""Left-right in the camera frame: which of two objects is further left in the image.

Candidates: every unordered pair of boxes. Checks: per-object checks of both boxes, then
``box_separation``: the horizontal gap between the boxes is at least ``min_box_gap`` of the image
width (default 0: the boxes do not overlap in x, so every pixel of one is left of every pixel of
the other and no definition of "left of" can disagree).
"""

from __future__ import annotations

import numpy as np

from ..records import Record
from .step import Candidates, Generated
from .verify import Sieve, VerifyConfig, pairs, scene_for


def generate(record: Record, rng: np.random.Generator, config: VerifyConfig) -> Generated:
    scene = scene_for(record, config)
    i, j = pairs(scene.n)
    sieve = Sieve(len(i))
    scene.check_objects(sieve, i, j)
    gap = scene.box_gap(i, j)
    sieve.check("box_separation", gap >= config.min_box_gap, "boxes_overlap_x")
    i_left = scene.x_center[i] < scene.x_center[j]
    left, right = np.where(i_left, i, j), np.where(i_left, j, i)
    sieve.evidence["box_gap"] = gap
    return Generated(Candidates(sieve, left, right, "left_of"), sieve.drops)
