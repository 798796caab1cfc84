"""Fast paths of reading and checking give what their plain versions give: depth masks, cached .npy
headers, image lookups, box cleaning, and rows checked from their parts."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from spatialforge.processing.perception.depth_files import _valid_mask, load_depth_file
from spatialforge.processing.readers import BadInputError
from spatialforge.processing.readers.images import ImageIndex, _is_file
from spatialforge.processing.records import DepthMap, Detections, Record
from spatialforge.processing.tasks.step import TaskStep


def _maps() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 30.0, (24, 32)).astype(np.float32)
    out = [base.copy()]
    for bad in (np.nan, np.inf, -np.inf, 0.0, -2.0):
        m = base.copy()
        m[rng.random(m.shape) < 0.1] = bad
        out.append(m)
    mixed = base.copy()
    mixed[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    out.append(mixed)
    out.append(np.full((3, 5), np.nan, np.float32))
    return out


@pytest.mark.parametrize("kind", ["depth", "inverse_depth"])
def test_valid_mask_is_finite_and_positive_depth(kind):
    for m in _maps():
        want = np.isfinite(m) & (m > 0) if kind == "depth" else np.isfinite(m)
        np.testing.assert_array_equal(_valid_mask(m, kind), want)


def test_depth_map_mask_excludes_non_finite_whatever_it_is_given():
    for m in _maps():
        finite = np.isfinite(m)
        np.testing.assert_array_equal(DepthMap(m, "depth").valid, finite)
        given = m > 1.0
        np.testing.assert_array_equal(DepthMap(m, "depth", valid=given).valid, given & finite)
        np.testing.assert_array_equal(DepthMap(m, "inverse_depth", valid=np.ones(m.shape, bool)).valid, finite)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_files_read_as_numpy_reads_them(tmp_path, dtype, version):
    rng = np.random.default_rng(1)
    for k, order in enumerate(("C", "F", "C")):  # the third file repeats the first one's header (cached)
        values = np.asarray(rng.uniform(0.5, 5.0, (6, 9)), dtype=dtype, order=order)
        values[2, 3] = np.nan
        path = tmp_path / f"d{k}.npy"
        with open(path, "wb") as f:
            np.lib.format.write_array(f, values, version=version)
        got, valid = load_depth_file(path, "depth")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, values.astype(np.float32))
        np.testing.assert_array_equal(valid, np.isfinite(values) & (values > 0))


def test_a_cached_header_still_finds_short_and_malformed_files(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 4), np.float32))
    load_depth_file(good)  # caches this header
    raw = good.read_bytes()
    short = tmp_path / "short.npy"
    short.write_bytes(raw[:-8])  # the same header, two values missing
    with pytest.raises(BadInputError, match="cut short: 14 of 16"):
        load_depth_file(short)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(raw[:10] + raw[10:].replace(b"'descr'", b"'descx'", 1))
    with pytest.raises(BadInputError, match="malformed .npy header"):
        load_depth_file(broken)
    tiny = tmp_path / "tiny.npy"
    tiny.write_bytes(raw[:9])  # the header length cut off
    with pytest.raises((BadInputError, ValueError)):
        load_depth_file(tiny)


def test_image_lookup_gives_the_paths_pathlib_gives(tmp_path, monkeypatch):
    (tmp_path / "images" / "v2" / "patch0").mkdir(parents=True)
    (tmp_path / "images" / "v2" / "patch0" / "a.jpg").write_bytes(b"x")
    (tmp_path / "images" / "v2" / "patch0" / "dir.jpg").mkdir()
    index = ImageIndex(tmp_path / "images")
    want = str(tmp_path / "images" / "v2" / "patch0" / "a.jpg")
    assert index.find("images/v2/patch0/a.jpg") == want  # under the root after dropping "images/"
    assert index.find("v2//patch0/./a.jpg") == want
    assert index.find("images/v2/patch0/dir.jpg") is None  # a folder is not an image
    assert index.find("images/v2/patch0/b.jpg") is None
    monkeypatch.chdir(tmp_path / "images")
    assert ImageIndex(".").find("x/v2/patch0/a.jpg") == "v2/patch0/a.jpg"  # as Path(".") / ... spells it


def test_is_file_raises_what_pathlib_raises(tmp_path):
    long = str(tmp_path / ("x" * 300))
    with pytest.raises(OSError) as pathlib_err:
        Path(long).is_file()
    with pytest.raises(OSError) as ours:
        _is_file(long)
    assert ours.value.errno == pathlib_err.value.errno == errno.ENAMETOOLONG
    assert _is_file(str(tmp_path / "missing" / "a.jpg")) is False
    assert _is_file(str(tmp_path / "nul\0byte")) is Path(tmp_path / "nul\0byte").is_file() is False


def test_boxes_inside_the_image_are_kept_and_the_others_cleaned_as_before(tmp_path):
    from spatialforge.processing.readers import FolderReader

    reader = FolderReader(tmp_path, source="test")
    inside = np.array([[0, 0, 10, 10], [5, 5, 100, 50]], float)
    assert reader.clean_boxes(inside, 100, 50, "a").tolist() == [True, True]
    assert not reader.objects_dropped and not reader.notes
    mixed = np.array([[0, 0, 10, 10], [-5, 0, 10, 10], [np.nan, 0, 1, 1], [3, 3, 3, 9], [200, 0, 300, 9]], float)
    assert reader.clean_boxes(mixed, 100, 50, "a").tolist() == [True, True, False, False, False]
    assert reader.notes == {"bbox_clipped": 1}
    assert reader.objects_dropped == {"bbox_not_finite": 1, "bbox_zero_area": 1, "bbox_outside_image": 1}


def test_a_perception_row_its_parts_cannot_vouch_for_goes_to_validate_row():
    det = Detections(np.array([[10, 10, 40, 60], [50, 10, 90, 60]], float), ["", "cup"])
    rec = Record("test", "1", 100, 100, objects=det)
    rec = TaskStep(tasks=["grounding", "referring"], on_invalid_row="skip").process(rec)
    assert rec.drops["grounding/invalid_row"] == 1 and rec.drops["referring/invalid_row"] == 1
    assert [r["objects"][0]["label"] for r in rec.rows] == ["cup", "cup"]
    with pytest.raises(ValueError, match="label is empty"):
        TaskStep(tasks=["grounding"], on_invalid_row="error").process(Record("test", "2", 100, 100, objects=det))


def test_a_vouched_mask_is_kept_and_replace_checks_again():
    import dataclasses

    values = np.ones((3, 4), np.float32)
    mask = np.ones((3, 4), bool)
    mask[1, 1] = False
    d = DepthMap(values, "depth", valid=mask, valid_is_finite=True)
    assert d.valid is mask
    holes = values.copy()
    holes[0, 0] = np.nan
    again = dataclasses.replace(d, values=holes)  # a new map: not vouched for, checked
    np.testing.assert_array_equal(again.valid, mask & np.isfinite(holes))


def test_depth_files_step_marks_holes_invalid(tmp_path):
    from spatialforge.processing.perception.depth_files import DepthFromFiles

    values = np.full((4, 6), 2.0, np.float32)
    values[0, :3] = [np.nan, np.inf, 0.0]
    np.save(tmp_path / "img.npy", values)
    rec = DepthFromFiles(tmp_path).process(Record("test", "img", 6, 4))
    np.testing.assert_array_equal(rec.depth.valid, np.isfinite(values) & (values > 0))
