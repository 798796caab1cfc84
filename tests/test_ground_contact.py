"""near_far on relative depth: the ground below two box bottoms stands in for a depth margin.

Hand-made relative inverse depth of a pinhole camera (f = 150 px, 1.5 m above flat ground, level)
seeing two solid boxes: a dog standing 4 m away, a chair 7 m away (ratio 0.57). After the
tolerated per-object bias and at the flattest shift the image allows, their margin falls short of
``min_depth_margin``; the ground just below their bottoms orders them. Lifted off the ground, the
chair's bottom shows ground far behind it and no longer vouches for anything.

On a depth model's output the same ground also vetoes: an object read far behind the ground it
stands on, or a pair the ground below both orders the other way, is not asked about (a metric
model's meters that err per object beyond the tolerated bias).
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
    x1, y1, x2, _ = record.objects.xyxy[0].astype(int)
    record.depth.values[y1:H, x1:x2] = record.depth.values[y1, x1]  # ... and so does the dog
    rows, drops = near_far(record)
    assert not rows and drops["near_far/depth_margin"] == 1


def biased_scene(dog_z, chair_z, dog_read, chair_read, metric=False):
    """A dog and a chair standing on the ground ``dog_z`` and ``chair_z`` m away, which a depth model
    reads ``dog_read`` and ``chair_read`` times as far (per-object errors beyond the tolerated
    bias); the ground, with no object on it, it reads right."""
    inv = ground_inverse_depth()
    boxes = []
    for (x1, x2), z, height, read in (((40, 70), dog_z, 0.6, dog_read), ((120, 150), chair_z, 0.9, chair_read)):
        bottom, top = CY + F * CAM_H / z, CY + F * (CAM_H - height) / z
        r0, r1 = int(round(top)), int(round(bottom))
        inv[r0:r1, x1:x2] = 1.0 / (z * read)
        boxes.append([x1, r0, x2, r1])
    if metric:  # a metric model's meters (sky: its far cap)
        depth = DepthMap((1.0 / np.maximum(inv, 1e-3)).astype(np.float32), kind="depth", metric=True, estimated=True,
                         source="test")
    else:
        depth = DepthMap((2.0 * inv + 0.05).astype(np.float32), kind="inverse_depth", metric=False, source="test")
    det = Detections(np.array(boxes, float), ["Dog", "Chair"])
    return Record(source="test", image_id="biased", width=W, height=H, objects=det, depth=depth)



def nearer_labels(rows):
    return [r["objects"][r["fact"]["subject" if r["fact"]["predicate"] == "nearer_than" else "object"]]["label"] for r in rows]


def test_an_object_read_far_behind_its_own_ground_is_not_believed():
    # Truth: the dog (5.0 m) is nearer than the chair (5.3 m); the ground below them is too alike to
    # order them. A metric model reads the dog 1.6 times as far (8 m) and the chair 0.7 times (3.7
    # m): beyond the tolerated bias, so the map's margin says "the chair is nearer". Nothing stands
    # 8 m away on ground 5 m away.
    from spatialforge.processing.tasks.near_far import behind_own_ground, ground_contradicts
    from spatialforge.processing.tasks.verify import scene_for

    rows, _ = near_far(biased_scene(5.0, 5.3, 1.6, 0.7, metric=True), ground_veto=False)
    assert nearer_labels(rows) == ["Chair"]  # the wrong answer the objects' own depths give
    record = biased_scene(5.0, 5.3, 1.6, 0.7, metric=True)
    scene = scene_for(record, VerifyConfig())
    assert behind_own_ground(scene, record, VerifyConfig()).tolist() == [True, False]
    assert not ground_contradicts(scene, record, np.array([1]), np.array([0])).any()
    rows, drops = near_far(record)
    assert rows == [] and drops["near_far/ground_contradicts"] == 1, drops
    # Measured meters carry no per-object error: taken as they are.
    measured = biased_scene(5.0, 5.3, 1.6, 0.7, metric=True)
    measured.depth = DepthMap(measured.depth.values, kind="depth", metric=True, source="test")
    assert not behind_own_ground(scene_for(measured, VerifyConfig()), measured, VerifyConfig()).any()


def test_the_ground_below_both_overrules_the_order_a_model_reads():
    # Truth: the dog (4 m) is nearer than the chair (6 m), and the ground below them says so. A
    # metric model reads the dog 1.3 times as far (5.2 m: within what its own ground allows) and the
    # chair 0.4 times (2.4 m: nearer than its ground, as a lifted chair would be).
    rows, _ = near_far(biased_scene(4.0, 6.0, 1.3, 0.4, metric=True), ground_veto=False)
    assert nearer_labels(rows) == ["Chair"]
    rows, drops = near_far(biased_scene(4.0, 6.0, 1.3, 0.4, metric=True))
    assert rows == [] and drops["near_far/ground_contradicts"] == 1, drops
    # A chair 10 m away read within the tolerated bias: the pair keeps its (right) answer.
    rows, drops = near_far(biased_scene(4.0, 10.0, 1.1, 0.95, metric=True))
    assert nearer_labels(rows) == ["Dog"] and drops["near_far/ground_contradicts"] == 0, drops
