"""Relative depth on a view closed by a wall just behind the objects.

Hand-made relative inverse depth (scale 2, shift 0.05) of a level pinhole camera (f = 150 px,
2.15 m above flat ground): the ground from 4.3 m at the bottom row to a wall 6.6 m away, so the
whole view spans only 1.53x in depth, flatter than the 3x the depth margin assumes. No relative map
tells this from a deep view ending in sky. A traffic cone stands 5.5 m away, a barrel 5.6 m; a
monocular model reads the barrel 45 % nearer than it is (a per-object bias 2.5 sigma out of a
15 % spread). On a 3x view that reading would be a clear margin, here it is the wrong answer: the
order must survive the tolerated bias on the flattest view assumed (1.3x), and the ground below the
two says the other thing. What still passes: an object in front of nearly the whole view,
or a pair the ground below both or a metric second depth signal orders.
"""

import numpy as np
import pytest

from spatialforge.processing.records import DepthMap, Detections, Record
from spatialforge.processing.tasks.step import TaskStep
from spatialforge.processing.tasks.verify import VerifyConfig

W, H, F, CY, CAM_H, WALL = 200, 150, 150.0, 75.0, 2.15, 6.6


def view(objects):
    """``objects``: ``(label, x1, x2, z, height_m, bias)``: a solid standing on the ground at camera
    depth ``z``; its inverse depth read ``bias`` times too large. Returns the record and the truth."""
    v = np.arange(H)[:, None] + 0.5 - CY
    with np.errstate(divide="ignore"):
        ground_z = np.where(v > 0, F * CAM_H / v, np.inf)
    z = np.broadcast_to(np.minimum(ground_z, WALL), (H, W)).copy()  # the wall hides the ground beyond it and the sky
    inv = 1.0 / z
    boxes = []
    for _, x1, x2, dz, height, bias in objects:
        bottom, top = CY + F * CAM_H / dz, CY + F * (CAM_H - height) / dz
        r0, r1 = int(round(top)), min(H, int(round(bottom)))  # a bottom below the frame is cut by it
        inv[r0:r1, x1:x2] = bias / dz
        boxes.append([x1, r0, x2, r1])
    depth = DepthMap((2.0 * inv + 0.05).astype(np.float32), kind="inverse_depth", metric=False, source="test")
    det = Detections(np.array(boxes, float).reshape(-1, 4), [o[0] for o in objects])
    return Record(source="test", image_id="wall", width=W, height=H, objects=det, depth=depth)


def near_far(record, **config):
    step = TaskStep(tasks=["near_far"], seed=0, config=VerifyConfig(**config), on_invalid_row="error")
    out = step.process(record)
    return out.rows, out.drops


def nearer_label(row):
    fact, labels = row["fact"], [o["label"] for o in row["objects"]]
    return labels[fact["subject"]] if fact["predicate"] == "nearer_than" else labels[fact["object"]]


CONES = [("Traffic cone", 40, 52, 5.5, 0.7, 1.0), ("Barrel", 120, 134, 5.6, 0.8, 1.45)]


def test_the_view_is_flatter_than_the_margin_assumes():
    inv = (view([]).depth.values - 0.05) / 2.0
    assert inv.max() == pytest.approx(1 / 4.33, rel=0.01) and inv.min() == pytest.approx(1 / WALL)
    assert 1.5 < inv.max() / inv.min() < 1.55  # far end / near end of the view


def test_a_biased_reading_on_a_flat_view_is_dropped():
    rows, drops = near_far(view(CONES))
    assert rows == [] and drops["near_far/depth_flat_ambiguous"] == 1, (rows, drops)


def test_assuming_every_view_deep_would_state_the_wrong_order():
    # What the margin alone gives (the flattest view assumed as deep as the margin's): a row, wrong.
    rows, _ = near_far(view(CONES), flat_far_near_ratio=3.0)
    assert len(rows) == 1 and nearer_label(rows[0]) == "Barrel"  # truth: the cone, 5.5 m against 5.6 m


@pytest.mark.parametrize("width, kept", [(8, True), (12, False)])
def test_only_an_object_in_front_of_nearly_the_whole_view_keeps_its_order_on_its_own(width, kept):
    # A person 3 m away, cut by the frame at the knees, and a barrel 6 m away. 8 px wide, the
    # person covers less than the 2 % of the image beyond its near end (range_quantiles): the
    # flattest view assumed still leaves it well in front. 12 px wide, the person is that near
    # end, and a view 1.3x deep puts it within the tolerated bias of the barrel.
    rows, drops = near_far(view([("Person", 40, 40 + width, 3.0, 1.8, 1.0), ("Barrel", 120, 134, 6.0, 0.8, 1.0)]))
    if kept:
        assert len(rows) == 1 and nearer_label(rows[0]) == "Person", drops
        assert "depth_flat" in rows[0]["verification"]["checks"]
        assert "ground_contact" not in rows[0]["verification"]["checks"]
    else:
        assert rows == [] and drops["near_far/depth_flat_ambiguous"] == 1, drops


def test_the_ground_below_both_confirms_what_the_flat_view_leaves_open():
    rows, drops = near_far(view([("Traffic cone", 40, 52, 4.6, 0.7, 1.0), ("Barrel", 120, 134, 6.2, 0.8, 1.0)]))
    assert len(rows) == 1 and nearer_label(rows[0]) == "Traffic cone", drops
    assert {"depth_flat", "ground_contact"} <= set(rows[0]["verification"]["checks"])


@pytest.mark.parametrize("kind", ["inverse_depth", "depth"])
def test_a_metric_second_signal_confirms_what_the_flat_view_leaves_open(kind):
    record = view([("Person", 40, 52, 3.5, 1.8, 1.0), ("Barrel", 120, 134, 5.5, 0.8, 1.0)])  # the person cut by the frame
    rows, drops = near_far(record)
    assert rows == [] and drops["near_far/depth_flat_ambiguous"] == 1, drops
    truth = np.where(np.arange(W)[None, :] < 100, 3.5, 5.5).astype(np.float32)  # each box on its own half
    values = truth if kind == "depth" else 1.0 / truth
    record.meta["depth_alt"] = DepthMap(np.broadcast_to(values, (H, W)).copy(), kind=kind, metric=True, source="alt")
    rows, drops = near_far(record)
    assert len(rows) == 1 and nearer_label(rows[0]) == "Person", drops
    assert {"depth_flat", "depth_alt"} <= set(rows[0]["verification"]["checks"])
