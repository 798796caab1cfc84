"""DepthFromFiles: .npy meters, 16-bit .png millimeters, holes, resizing and missing files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatialforge.processing.perception.depth_files import DepthFromFiles, resize_nearest
from spatialforge.processing.readers import BadInputError
from spatialforge.processing.records import Record


def _record(image_id: str, width: int = 4, height: int = 2, path: str | None = None) -> Record:
    return Record(source="t", image_id=image_id, width=width, height=height, image_path=path)


def test_npy_meters_and_holes(tmp_path):
    values = np.array([[1.0, 2.0, 0.0, np.nan], [3.5, -1.0, 4.0, 5.0]], np.float32)
    np.save(tmp_path / "a.npy", values)
    out = DepthFromFiles(tmp_path).process(_record("a"))
    assert out.depth.kind == "depth" and out.depth.metric and out.depth.source == "file:depth:estimated"
    assert out.depth.estimated  # a float .npy: by default a depth model's output saved to files ...
    measured = DepthFromFiles(tmp_path, measured=True).process(_record("a")).depth  # ... unless told
    assert not measured.estimated and measured.source == "file:depth"
    assert out.depth.valid.tolist() == [[True, True, False, False], [True, False, True, True]]
    assert out.depth.values[1, 0] == pytest.approx(3.5)


def test_png_millimeters_with_holes(tmp_path):
    mm = np.array([[1000, 2500, 0, 65535], [10, 0, 300, 4000]], np.uint16)
    Image.fromarray(mm).save(tmp_path / "b.png")
    out = DepthFromFiles(tmp_path).process(_record("b"))
    assert out.depth.values[0, :2].tolist() == pytest.approx([1.0, 2.5])
    assert not out.depth.estimated and out.depth.source == "file:depth"  # 16-bit millimeters: a sensor's ...
    assert DepthFromFiles(tmp_path, measured=False).process(_record("b")).depth.estimated  # ... unless told
    assert out.depth.values[0, 3] == pytest.approx(65.535)
    assert out.depth.valid.tolist() == [[True, True, False, True], [True, False, True, True]]


def test_inverse_depth_npy(tmp_path):
    np.save(tmp_path / "c.npy", np.array([[0.0, 1.0], [2.0, 3.0]], np.float32))
    out = DepthFromFiles(tmp_path, kind="inverse_depth").process(_record("c", 2, 2))
    assert out.depth.kind == "inverse_depth" and not out.depth.metric
    assert out.depth.valid.all()  # 0 disparity is a valid (infinitely far) value
    assert out.depth.nearness(3.0) > out.depth.nearness(0.0)


def test_found_by_image_file_stem_and_resized(tmp_path):
    depth = tmp_path / "depth"
    depth.mkdir()
    np.save(depth / "photo.npy", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    step = DepthFromFiles(depth)
    out = step.process(_record("nested/photo_id", 4, 4, path=str(tmp_path / "nested" / "photo.jpg")))
    assert out.depth.values.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert step.notes == {"depth_resized": 1}


def test_missing_wrong_aspect_and_8bit_are_counted_drops(tmp_path):
    np.save(tmp_path / "tall.npy", np.ones((8, 2), np.float32))
    Image.fromarray(np.ones((2, 4), np.uint8)).save(tmp_path / "eight.png")
    step = DepthFromFiles(tmp_path)
    assert step.process(_record("missing")) is None
    assert step.process(_record("tall")) is None
    assert step.process(_record("eight")) is None
    assert step.stats.dropped == {"missing_depth": 1, "depth_aspect_mismatch": 1, "depth_png_not_16bit": 1}
    with pytest.raises(BadInputError, match="no missing.npy"):
        DepthFromFiles(tmp_path, on_bad_input="error").process(_record("missing"))


def test_resize_nearest_keeps_values():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert resize_nearest(a, 2, 3).tolist() == a.tolist()
    assert set(resize_nearest(a, 7, 5).ravel().tolist()) <= set(a.ravel().tolist())
