"""Fast paths give the same values as their plain versions (object depth samples, collector tuning)."""

from __future__ import annotations

import gc

import numpy as np

from spatialforge.processing.base import steady_gc
from spatialforge.processing.records import DepthMap
from spatialforge.processing.verify import _grid_bounds, _Samples


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
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with steady_gc() as settle:
            settle()
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
