"""Fast paths give the same values as their plain versions (object depth samples, collector tuning)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from spatialforge.processing.base import steady_gc
from spatialforge.processing.records import DepthMap
from spatialforge.processing.tasks.verify import _grid_bounds, _Samples


def test_samples_equal_plain_strided_reads():
    rng = np.random.default_rng(3)
    values = rng.uniform(0.5, 9.0, (37, 53)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan  # holes: not valid
    depth = DepthMap(values, kind="depth")
    x = np.sort(rng.uniform(-5, 58, (40, 2)), axis=1)
    y = np.sort(rng.uniform(-5, 42, (40, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    boxes[0] = [0, 0, 53, 37]  # the whole map
    boxes[1] = [52.5, 36.5, 53, 37]  # a sliver at the far corner: still one pixel
    s = _Samples(depth, boxes, shrink=0.2, max_samples=64)
    assert s.values.dtype == np.float32 and s.values.shape == s.keep.shape
    for k, box in enumerate(boxes.tolist()):
        r0, r1, c0, c1, step = _grid_bounds(box, 0.2, 64, 37, 53)
        want = values[r0:r1:step, c0:c1:step].ravel()
        want_ok = depth.valid[r0:r1:step, c0:c1:step].ravel()
        n = len(want)
        assert s.size[k] == n and s.nr[k] * s.nc[k] == n
        np.testing.assert_array_equal(s.values[k, :n], want)
        np.testing.assert_array_equal(s.keep[k, :n], want_ok)
        assert not s.keep[k, n:].any()


def test_steady_gc_restores_the_collector():
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with steady_gc(threshold=12345) as settle:
        assert gc.get_threshold() == (12345, *before[1:])
        assert gc.get_freeze_count() > 0
        settle()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_steady_gc_leaves_a_callers_freeze_alone():
    # Freeze counts can shrink at any time (frozen objects are still freed by reference counting),
    # so this checks what settle() does to an object made after the caller's freeze instead.
    gc.freeze()
    try:
        with steady_gc() as settle:
            fresh = [object()]
            settle()
            assert any(o is fresh for o in gc.get_objects()), "settle() froze objects the caller did not freeze"
        assert gc.get_freeze_count() > 0, "the caller's freeze did not survive the block"
    finally:
        gc.unfreeze()


def _relation_record(labels: list[str]):
    from spatialforge.processing.records import Detections, Record

    z = np.full((100, 200), 20.0, np.float32)
    boxes = [[10, 10, 40, 60], [60, 20, 90, 70], [120, 10, 180, 90]]
    for (x1, y1, x2, y2), d in zip(boxes, (2.0, 5.0, 12.0)):
        z[y1:y2, x1:x2] = d
    det = Detections(np.array(boxes, float), labels)
    return Record("test", "img", 200, 100, objects=det, depth=DepthMap(z, "depth", source="test:depth", metric=True))


def test_relation_rows_checked_as_validate_row_checks_them():
    from spatialforge.builders.schema import validate_row
    from spatialforge.processing.tasks.step import TaskStep

    tasks = ("near_far", "left_right")
    uncapped = dict.fromkeys(tasks, None)
    step = TaskStep(tasks=tasks, max_per_task=uncapped, on_invalid_row="error")
    good = step.process(_relation_record(["cup", "vase", "box"]))
    assert len(good.rows) == 6
    for row in good.rows:
        validate_row(row)
    # An empty label breaks the schema: the rows that name it are refused with validate_row's message.
    step = TaskStep(tasks=tasks, max_per_task=uncapped, on_invalid_row="skip")
    bad = step.process(_relation_record(["cup", "", "box"]))
    assert len(bad.rows) == 2 and all("" not in [o["label"] for o in row["objects"]] for row in bad.rows)
    assert bad.drops["near_far/invalid_row"] == 2 and bad.drops["left_right/invalid_row"] == 2
    with pytest.raises(ValueError, match=r"objects\[\d\]\.label is empty"):
        TaskStep(tasks=tasks, on_invalid_row="error").process(_relation_record(["cup", "", "box"]))
