"""near_far on relative depth: the ground below two box bottoms stands in for a depth margin.

Hand-made relative inverse depth of a pinhole camera (f = 150 px, 1.5 m above flat ground, level)
seeing two solid boxes: a dog standing 4 m away, a chair 7 m away (ratio 0.57). After the
tolerated per-object bias and at the flattest shift the image allows, their margin falls short of
``min_depth_margin``; the ground just below their bottoms orders them. Lifted off the ground, the
chair's bottom shows ground far behind it and no longer vouches for anything.
"""

import numpy as np
import pytest

from spatialforge.processing.records import DepthMap, Detections, Record
from spatialforge.processing.tasks.step import TaskStep
from spatialforge.processing.tasks.verify import VerifyConfig

W, H, F, CY, CAM_H = 200, 150, 150.0, 75.0, 1.5


def ground_inverse_depth():
    v = np.arange(H)[:, None] + 0.5 - CY  # rows below the horizon see the ground at z = F * CAM_H / v
    return np.broadcast_to(np.where(v > 0, v / (F * CAM_H), 0.0), (H, W)).copy()  # sky: 0 (infinitely far)


def scene(chair_lift=0.0):
    inv = ground_inverse_depth()
    boxes = []
    for (x1, x2), z, height, lift in (((40, 70), 4.0, 0.6, 0.0), ((120, 140), 7.0, 0.9, chair_lift)):
        bottom = CY + F * (CAM_H - lift) / z
        top = CY + F * (CAM_H - lift - height) / z
        r0, r1 = int(round(top)), int(round(bottom))
        inv[r0:r1, x1:x2] = 1.0 / z
        boxes.append([x1, r0, x2, r1])
    depth = DepthMap((2.0 * inv + 0.05).astype(np.float32), kind="inverse_depth", metric=False, source="test")
    det = Detections(np.array(boxes, float), ["Dog", "Chair"])
    return Record(source="test", image_id="ground", width=W, height=H, objects=det, depth=depth)


def near_far(record, **config):
    step = TaskStep(tasks=["near_far"], seed=0, config=VerifyConfig(**config), on_invalid_row="error")
    out = step.process(record)
    return out.rows, out.drops


def test_the_ground_below_both_bottoms_keeps_a_pair_short_of_the_margin():
    rows, drops = near_far(scene())
    assert len(rows) == 1, drops
    row = rows[0]
    assert "ground_contact" in row["verification"]["checks"]
    assert 0 < row["verification"]["depth_margin"] < VerifyConfig().min_depth_margin
    fact, labels = row["fact"], [o["label"] for o in row["objects"]]
    nearer = labels[fact["subject"]] if fact["predicate"] == "nearer_than" else labels[fact["object"]]
    assert nearer.lower() == "dog"


def test_without_the_rescue_the_margin_drops_it():
    rows, drops = near_far(scene(), ground_rescue=False)
    assert not rows and drops["near_far/depth_margin"] == 1


@pytest.mark.parametrize("lift", [0.4, 0.8])
def test_a_lifted_object_is_no_ground_contact(lift):
    rows, drops = near_far(scene(chair_lift=lift))
    assert not rows and drops["near_far/depth_margin"] == 1


def test_a_bottom_at_the_frame_edge_is_no_ground_contact():
    record = scene()
    record.objects.xyxy[0, 3] = H  # the dog's box reaches the bottom of the frame: its feet may be cut off
    rows, drops = near_far(record)
    assert not rows and drops["near_far/depth_margin"] == 1
