"""Readers on tiny generated fixtures with known boxes, EXIF rotations and bad input."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter

import numpy as np
import pytest
from _pipeline_fixtures import make_folder, save_image
from PIL import Image, ImageOps

from spatialforge.processing.readers import (
    BadInputError,
    CocoReader,
    FolderReader,
    HFDatasetReader,
    OpenImagesReader,
    PixmoReader,
    read_header,
    shard_slice,
)
from spatialforge.processing.readers.images import exif_transform_points, transform_boxes


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_transform_matches_pil(tmp_path, orientation):
    raw = np.zeros((20, 40), np.uint8)
    raw[3:9, 5:15] = 255  # box [5, 3, 15, 9] on the raw 40x20 grid
    path = tmp_path / "x.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, exif=exif)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    ys, xs = np.nonzero(shown)
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    got = transform_boxes(np.array([[5, 3, 15, 9]]), lambda xy: exif_transform_points(xy, orientation, 40, 20))
    assert got[0].tolist() == expected
    header = read_header(path)
    assert (header.width, header.height) == (shown.shape[1], shown.shape[0])


# ------------------------------------------------------------------------------------------ COCO


def _coco_fixture(tmp_path):
    root = tmp_path / "images"
    save_image(root / "patch16" / "o365_a.jpg", 100, 50)
    save_image(root / "patch16" / "o365_rot_t.jpg", 40, 20, orientation=6)  # shown 20x40
    save_image(root / "patch16" / "o365_rot_r.jpg", 40, 20, orientation=6)
    save_image(root / "patch16" / "o365_half.jpg", 100, 50)
    save_image(root / "patch16" / "o365_crop.jpg", 100, 50)
    save_image(root / "elsewhere" / "deep" / "o365_stem.jpg", 60, 30)
    person_kp = [0.0] * 51
    person_kp[5 * 3: 5 * 3 + 3] = [30, 20, 2]  # left shoulder at (30, 20), visible
    images = [
        {"id": 1, "file_name": "images/v2/patch16/o365_a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "patch16/o365_rot_t.jpg", "width": 20, "height": 40},  # transposed grid
        {"id": 3, "file_name": "patch16/o365_rot_r.jpg", "width": 40, "height": 20},  # raw grid
        {"id": 4, "file_name": "patch16/o365_half.jpg", "width": 200, "height": 100},  # 2x resized copy
        {"id": 5, "file_name": "patch16/o365_crop.jpg", "width": 100, "height": 100},  # other aspect
        {"id": 6, "file_name": "patch16/o365_missing.jpg", "width": 10, "height": 10},
        {"id": 7, "file_name": "patch99/o365_stem.jpg", "width": 60, "height": 30},  # found by stem
        {"id": 8, "file_name": "patch17/o365_a.jpg", "width": 100, "height": 50},  # duplicate stem
    ]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0, "keypoints": person_kp},
        {"image_id": 1, "category_id": 2, "bbox": [90, 40, 20, 20], "iscrowd": 1},  # partly outside: clipped
        {"image_id": 1, "category_id": 2, "bbox": [200, 200, 5, 5], "iscrowd": 0},  # outside
        {"image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # zero area
        {"image_id": 1, "category_id": 2, "bbox": [float("nan"), 1, 2, 3], "iscrowd": 0},
        {"image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2], "iscrowd": 0},  # unknown category
        {"image_id": 1, "category_id": 2, "bbox": [1, 2], "iscrowd": 0},  # malformed bbox
        {"image_id": 2, "category_id": 2, "bbox": [2, 4, 6, 8]},
        {"image_id": 3, "category_id": 2, "bbox": [5, 3, 10, 6]},
        {"image_id": 4, "category_id": 2, "bbox": [20, 10, 40, 20]},
        {"image_id": 5, "category_id": 2, "bbox": [1, 1, 2, 2]},
        {"image_id": 7, "category_id": 2, "bbox": [0, 0, 6, 3]},
        {"image_id": 42, "category_id": 2, "bbox": [0, 0, 6, 3]},  # unknown image
    ]
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "cup"}]
    ann_path = tmp_path / "ann.json"
    # NaN is not JSON; Python's json writes it as NaN, which json.load reads back (as Objects365 tools do)
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_path, root


def test_coco_reader_boxes_exif_and_bad_input(tmp_path):
    ann, root = _coco_fixture(tmp_path)
    reader = CocoReader(ann, root, source="objects365")
    assert reader.items() == ["o365_a", "o365_crop", "o365_half", "o365_missing", "o365_rot_r", "o365_rot_t", "o365_stem"]
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    assert sorted(records) == ["o365_a", "o365_half", "o365_rot_r", "o365_rot_t", "o365_stem"]

    a = records["o365_a"]
    assert (a.width, a.height, a.source) == (100, 50, "objects365")
    assert a.objects.xyxy.tolist() == [[10, 10, 30, 20], [90, 40, 100, 50]]
    assert a.objects.labels == ["person", "cup"]
    assert a.objects.is_group.tolist() == [False, True]
    assert a.objects.keypoints[0, 5].tolist() == [30, 20, 2]
    assert np.isnan(a.objects.keypoints[0, 0, :2]).all()  # unlabeled keypoint (v=0): no position
    assert np.isnan(a.objects.keypoints[1]).all()  # no keypoints at all
    assert a.exhaustive_labels is None  # COCO boxes are exhaustive

    # box given on the transposed grid of an EXIF-rotated JPEG: unchanged
    t = records["o365_rot_t"]
    assert (t.width, t.height) == (20, 40)
    assert t.objects.xyxy.tolist() == [[2, 4, 8, 12]]
    # same box given on the raw (stored) grid: mapped through the 90-degree rotation
    r = records["o365_rot_r"]
    assert (r.width, r.height) == (20, 40)
    assert r.objects.xyxy.tolist() == [[20 - 9, 5, 20 - 3, 15]]
    assert records["o365_half"].objects.xyxy.tolist() == [[10, 5, 30, 15]]
    assert records["o365_stem"].image_path.endswith("elsewhere/deep/o365_stem.jpg")

    assert dict(reader.stats.dropped) == {"duplicate_image_id": 1, "missing_image": 1, "size_mismatch": 1}
    assert dict(reader.objects_dropped) == {
        "annotation_unknown_image": 1,
        "bbox_malformed": 1,
        "bbox_not_finite": 1,
        "bbox_outside_image": 1,
        "bbox_zero_area": 1,
        "unknown_category": 1,
    }
    assert reader.notes == {"bbox_clipped": 1, "boxes_exif_transposed": 1, "size_rescaled": 1}
    assert (reader.stats.records_in, reader.stats.records_out) == (7, 5)


def test_coco_size_policy_drop(tmp_path):
    ann, root = _coco_fixture(tmp_path)
    reader = CocoReader(ann, root, on_size_mismatch="drop")
    ids = [r.image_id for r in reader.read(reader.items())]
    assert "o365_half" not in ids and "o365_rot_r" in ids  # the exact raw-grid match is not a mismatch
    assert reader.stats.dropped["size_mismatch"] == 2


def test_coco_error_policy_names_the_value(tmp_path):
    ann, root = _coco_fixture(tmp_path)
    with pytest.raises(BadInputError, match="o365_a.*duplicate_image_id"):
        CocoReader(ann, root, on_bad_input="error").items()


def test_coco_warn_policy_logs(tmp_path, caplog):
    ann, root = _coco_fixture(tmp_path)
    reader = CocoReader(ann, root, on_bad_input="warn")
    with caplog.at_level("WARNING"):
        list(reader.run(None, 0, 1))
    assert "o365_missing" in caplog.text and "[missing_image]" in caplog.text
    assert reader.stats.dropped["missing_image"] == 1


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not valid JSON"), (json.dumps({"images": []}), "must be a COCO-style object")],
)
def test_coco_broken_file_always_raises(tmp_path, text, message):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message):
        CocoReader(path, tmp_path, on_bad_input="skip").items()


def test_shards_cover_items_once(tmp_path):
    ann, root = _coco_fixture(tmp_path)
    for num_shards in (1, 2, 3, 10):
        seen = []
        for shard in range(num_shards):
            reader = CocoReader(ann, root)
            seen += [r.image_id for r in reader.read_shard(shard, num_shards)]
        assert seen == ["o365_a", "o365_half", "o365_rot_r", "o365_rot_t", "o365_stem"]
    assert shard_slice(10, 3, 4) == slice(7, 10)
    # parse-time problems are counted once, by shard 0
    counts = []
    for shard in range(3):
        reader = CocoReader(ann, root)
        list(reader.read_shard(shard, 3))
        counts.append(reader.stats.dropped["duplicate_image_id"])
    assert counts == [1, 0, 0]


# ------------------------------------------------------------------------------------ OpenImages


def _openimages_fixture(tmp_path):
    root = tmp_path / "oi"
    save_image(root / "train" / "data" / "000a.jpg", 200, 100)
    save_image(root / "train" / "data" / "000b.jpg", 40, 20, orientation=8)  # shown 20x40
    (tmp_path / "classes.csv").write_text("/m/01,Cup\n/m/02,Person\n")
    header = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
    rows = [
        "000a,xclick,/m/01,1,0.1,0.3,0.2,0.6,1,0,0,0,0",
        "000a,xclick,/m/02,1,0.5,1.0,0.0,1.0,0,1,1,0,0",
        "000a,xclick,/m/99,1,0.1,0.2,0.1,0.2,0,0,0,0,0",  # unknown MID
        "000a,xclick,/m/01,1,0.1,0.2",  # malformed row
        "000a,xclick,/m/01,1,abc,0.2,0.1,0.2,0,0,0,0,0",  # not a number
        "000b,xclick,/m/01,1,0.25,0.75,0.5,1.1,0,0,0,1,0",  # partly outside: clipped
        "000c,xclick,/m/01,1,0.25,0.75,0.5,1.0,0,0,0,0,0",  # no image file
    ]
    (tmp_path / "boxes.csv").write_text(header + "\n".join(rows) + "\n")
    (tmp_path / "labels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n000a,verification,/m/01,1\n000a,verification,/m/02,0\n000b,verification,/m/01,1\n"
    )
    return root


def test_openimages_reader(tmp_path):
    root = _openimages_fixture(tmp_path)
    reader = OpenImagesReader(tmp_path / "boxes.csv", root, tmp_path / "classes.csv", tmp_path / "labels.csv")
    assert reader.items() == ["000a", "000b", "000c"]
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    a, b = records["000a"], records["000b"]
    assert a.objects.xyxy.tolist() == [[20, 20, 60, 60], [100, 0, 200, 100]]
    assert a.objects.labels == ["Cup", "Person"]
    assert a.objects.is_occluded.tolist() == [True, False]
    assert a.objects.is_truncated.tolist() == [False, True]
    assert a.objects.is_group.tolist() == [False, True]
    assert a.exhaustive_labels == {"Cup"}  # Person was verified absent (Confidence 0)
    assert (b.width, b.height) == (20, 40)
    assert b.objects.xyxy.tolist() == [[5, 20, 15, 40]]
    assert b.objects.is_depiction.tolist() == [True]
    assert reader.stats.dropped == {"malformed_row": 1, "missing_image": 1}
    assert reader.objects_dropped == {"unknown_category": 1, "bbox_malformed": 1}
    assert reader.notes == {"bbox_clipped": 1}


def test_openimages_without_image_labels_disables_counting(tmp_path):
    root = _openimages_fixture(tmp_path)
    reader = OpenImagesReader(tmp_path / "boxes.csv", root, tmp_path / "classes.csv")
    assert all(r.exhaustive_labels == set() for r in reader.read(["000a", "000b"]))


def test_openimages_missing_columns_raise(tmp_path):
    root = _openimages_fixture(tmp_path)
    (tmp_path / "bad.csv").write_text("ImageID,LabelName\n000a,/m/01\n")
    with pytest.raises(BadInputError, match=r"lacks columns \['XMin'"):
        OpenImagesReader(tmp_path / "bad.csv", root, tmp_path / "classes.csv").items()


# ---------------------------------------------------------------------------------------- Pixmo


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_pixmo_reader_points(tmp_path, fmt):
    sha = "ab" * 32
    url = "https://example.com/cat.jpg"
    url_id = hashlib.sha256(url.encode()).hexdigest()
    save_image(tmp_path / "px" / sha, 50, 40)  # named by sha256, no extension
    save_image(tmp_path / "px" / f"{url_id}.jpg", 30, 30)
    rows = [
        {"image_url": "u", "image_sha256": sha, "label": "dog", "points": [{"x": 10, "y": 5}, {"x": 60, "y": 5}], "count": 2},
        {"image_url": "u", "image_sha256": sha, "label": "cup", "points": [{"x": 1.5, "y": 2.5}], "count": 1},
        {"image_url": "u", "image_sha256": sha, "label": "cup", "points": [{"x": 1.5, "y": 2.5}], "count": 1},  # repeat
        {"image_url": url, "image_sha256": None, "label": "cat", "points": [{"x": 3, "y": 4}], "count": 1},
        {"image_url": "v", "image_sha256": "f" * 64, "label": "cat", "points": [], "count": 0},  # no image
    ]
    if fmt == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    reader = PixmoReader(path, tmp_path / "px")
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    rec = records[sha]
    assert len(rec.objects) == 0 and rec.exhaustive_labels == set()
    assert rec.meta["points"] == [{"label": "dog", "x": 10.0, "y": 5.0}, {"label": "cup", "x": 1.5, "y": 2.5}]
    assert rec.meta["point_counts"] == {"cup": 1, "dog": 1}
    assert records[url_id].meta["point_counts"] == {"cat": 1}
    assert reader.objects_dropped == {"point_outside_image": 1, "duplicate_row": 1}
    expected_drops = {"missing_image": 1} | ({"malformed_line": 1} if fmt == "jsonl" else {})
    assert reader.stats.dropped == expected_drops


# --------------------------------------------------------------------------------------- folder


def test_folder_reader(tmp_path):
    root = make_folder(tmp_path / "photos", 3)
    save_image(root / "rot.jpg", 40, 20, orientation=6)
    save_image(root / "img_001.png", 8, 8, fmt="PNG")  # same id as img_001.jpg
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    reader = FolderReader(root, source="my_photos")
    assert reader.items() == ["broken", "img_001", "img_002", "rot", "sub/img_000"]
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    assert sorted(records) == ["img_001", "img_002", "rot", "sub/img_000"]
    assert records["img_001"].image_path.endswith("img_001.jpg")
    assert (records["rot"].width, records["rot"].height) == (20, 40)
    assert records["sub/img_000"].source == "my_photos" and len(records["sub/img_000"].objects) == 0
    assert reader.stats.dropped == {"duplicate_image_id": 1, "unreadable_image": 1}


# ------------------------------------------------------------------------------------------- HF


def test_hf_dataset_reader(tmp_path):
    from _pipeline_fixtures import hf_detection_dataset, jpeg_bytes as jpeg

    ds = hf_detection_dataset({
        "image_id": ["b", "a", "a"],
        "image": [{"bytes": jpeg(40, 20), "path": None}, {"bytes": jpeg(10, 10), "path": None}, {"bytes": jpeg(5, 5), "path": None}],
        "objects": [{"bbox": [[4, 2, 10, 6], [50, 50, 5, 5]], "category": [1, 0]}, {"bbox": [], "category": []}, {"bbox": [], "category": []}],
    }, names=["cup", "dog"])
    ds.save_to_disk(tmp_path / "ds")
    reader = HFDatasetReader(tmp_path / "ds", cache_dir=tmp_path / "cache", source="mydata")
    assert reader.items() == ["a", "b"]
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    b = records["b"]
    assert (b.width, b.height, b.source) == (40, 20, "mydata")
    assert b.objects.xyxy.tolist() == [[4, 2, 14, 8]] and b.objects.labels == ["dog"]
    assert b.load_image().size == (40, 20)
    assert reader.stats.dropped == {"duplicate_image_id": 1}
    assert reader.objects_dropped == {"bbox_outside_image": 1}
    assert math.isclose(records["a"].width, 10)


def test_hf_reader_local_imagefolder(tmp_path):
    """A local dataset folder (imagefolder + metadata.jsonl) goes through datasets.load_dataset."""
    root = tmp_path / "imgs"
    save_image(root / "train" / "x1.jpg", 30, 20)
    save_image(root / "train" / "x2.jpg", 20, 20)
    meta = [
        {"file_name": "x1.jpg", "image_id": "x1", "objects": {"bbox": [[1, 2, 10, 5]], "category": ["cup"]}},
        {"file_name": "x2.jpg", "image_id": "x2", "objects": {"bbox": [[0, 0, 0, 5]], "category": ["dog"]}},
    ]
    (root / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    reader = HFDatasetReader(root, cache_dir=tmp_path / "cache")
    records = {r.image_id: r for r in reader.run(None, 0, 1)}
    assert records["x1"].objects.xyxy.tolist() == [[1, 2, 11, 7]] and records["x1"].objects.labels == ["cup"]
    assert records["x1"].image_path.endswith("x1.jpg") and (records["x1"].width, records["x1"].height) == (30, 20)
    assert len(records["x2"].objects) == 0 and reader.objects_dropped == {"bbox_zero_area": 1}


# ------------------------------------------------------------------- annotation tables and cache


def _records(reader) -> dict:
    out = {}
    for r in reader.run(None, 0, 1):
        out[r.image_id] = (r.width, r.height, r.objects.xyxy.tolist(), r.objects.labels, r.objects.is_group.tolist(),
                           r.exhaustive_labels, r.meta.get("point_counts"))
    return out


def _counts(reader) -> tuple:
    return dict(reader.stats.dropped), dict(reader.objects_dropped), dict(reader.notes)


def _pixmo_fixture(tmp_path):
    sha = "ab" * 32
    save_image(tmp_path / "px" / sha, 50, 40)
    rows = [
        {"image_sha256": sha, "label": "dog", "points": [{"x": 10, "y": 5}, {"x": 60, "y": 5}]},
        {"image_sha256": sha, "label": "dog", "points": [{"x": 10, "y": 5}, {"x": 60, "y": 5}]},  # repeat
        {"image_sha256": sha, "label": "cup", "points": "nope"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    return path, tmp_path / "px"


def _make_readers(kind, tmp_path):
    """A factory of readers of one fixture (``cache_dir`` passed through) and the annotation file to touch."""
    if kind == "coco":
        ann, root = _coco_fixture(tmp_path)
        return (lambda **kw: CocoReader(ann, root, **kw)), ann
    if kind == "openimages":
        root = _openimages_fixture(tmp_path)
        return (lambda **kw: OpenImagesReader(tmp_path / "boxes.csv", root, tmp_path / "classes.csv", tmp_path / "labels.csv", **kw)), tmp_path / "boxes.csv"
    path, root = _pixmo_fixture(tmp_path)
    return (lambda **kw: PixmoReader(path, root, **kw)), path


@pytest.mark.parametrize("kind", ["coco", "openimages", "pixmo"])
def test_cache_built_once_reused_and_same_as_in_memory(tmp_path, monkeypatch, kind):
    make, _ = _make_readers(kind, tmp_path)
    cls = type(make())
    calls = []
    convert = cls._convert
    monkeypatch.setattr(cls, "_convert", lambda self, events: calls.append(1) or convert(self, events))

    memory = make()
    expected, expected_counts = _records(memory), _counts(memory)
    assert len(calls) == 1 and memory.cache_path is None

    cache = tmp_path / "cache"
    first, second = make(cache_dir=cache), make(cache_dir=cache)
    assert (_records(first), _counts(first)) == (expected, expected_counts)
    assert first.cache_built and first.cache_path.is_file() and first.cache_path.parent == cache
    stamp = first.cache_path.stat().st_mtime_ns
    assert (_records(second), _counts(second)) == (expected, expected_counts)  # parse-time counts come from the cache
    assert not second.cache_built and second.cache_path == first.cache_path
    assert len(calls) == 2  # in memory once, into the cache once
    assert first.cache_path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"{cls.kind}.lock", first.cache_path.name])


@pytest.mark.parametrize("kind", ["coco", "openimages"])
def test_changed_annotations_rebuild_the_cache(tmp_path, kind):
    make, ann = _make_readers(kind, tmp_path)
    cache = tmp_path / "cache"
    first = make(cache_dir=cache)
    n_before = len(first.items())
    if kind == "coco":
        data = json.loads(ann.read_text())
        data["images"] = data["images"][:2]
        ann.write_text(json.dumps(data))
    else:
        ann.write_text(ann.read_text().replace("000c,", "000d,"))
    os.utime(ann, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    second = make(cache_dir=cache)
    items = second.items()
    assert second.cache_built and second.cache_path != first.cache_path
    assert not first.cache_path.exists()  # the table of the old input is removed
    assert (len(items), n_before) == ((2, 7) if kind == "coco" else (3, 3))
    assert kind == "coco" or items == ["000a", "000b", "000d"]


def test_half_written_or_broken_cache_is_not_used(tmp_path):
    make, _ = _make_readers("coco", tmp_path)
    cache = tmp_path / "cache"
    reference = make(cache_dir=cache)
    expected = (_records(reference), _counts(reference))
    path = reference.cache_path
    # a conversion killed before its rename leaves only a tmp file
    path.rename(path.with_name(path.name + ".tmp-4242"))
    again = make(cache_dir=cache)
    assert (_records(again), _counts(again)) == expected and again.cache_built
    assert [p.name for p in cache.glob("*.tmp-*")] == []  # the lock holder removed it
    # a truncated table under the final name (e.g. a crash without fsync) is converted again
    path.write_bytes(path.read_bytes()[:100])
    third = make(cache_dir=cache)
    assert (_records(third), _counts(third)) == expected and third.cache_built


def test_policies_apply_to_problems_stored_in_the_cache(tmp_path, caplog):
    make, _ = _make_readers("coco", tmp_path)
    cache = tmp_path / "cache"
    make(cache_dir=cache).items()  # converted under "skip"
    with pytest.raises(BadInputError, match="o365_a.*duplicate_image_id"):
        make(cache_dir=cache, on_bad_input="error").items()
    with caplog.at_level("WARNING"):
        make(cache_dir=cache, on_bad_input="warn").items()
    assert "annotation_unknown_image" in caplog.text and "unknown image_id 42" in caplog.text


def test_shard_reads_cover_items_once_from_the_cache(tmp_path):
    ann, root = _coco_fixture(tmp_path)
    import spatialforge.processing.readers as readers

    for num_shards in (1, 3, 10):
        seen, dropped = [], Counter()
        for shard in range(num_shards):
            reader = CocoReader(ann, root, cache_dir=tmp_path / "cache")
            seen += [r.image_id for r in reader.read_shard(shard, num_shards)]
            dropped += reader.stats.dropped
        assert seen == ["o365_a", "o365_half", "o365_rot_r", "o365_rot_t", "o365_stem"]
        assert dropped == {"duplicate_image_id": 1, "missing_image": 1, "size_mismatch": 1}
    # several row groups: a shard reads only its own
    table = readers.AnnotationTable(path=reader.cache_path)
    assert table.num_rows == 7 and table.row(6)["image_id"] == "o365_stem"


@pytest.mark.parametrize("order", [("annotations", "categories", "images"), ("categories", "annotations", "images"),
                                   ("images", "annotations", "categories")])
def test_coco_key_order_does_not_change_records_or_counts(tmp_path, order):
    """Categories after the annotations (COCO's own layout) are resolved after one pass, images after
    them in a second pass; an unknown category wins over a malformed box or keypoint list, as before."""
    ann, root = _coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"] += [{"image_id": 1, "category_id": 77, "bbox": [1, 2]},
                            {"image_id": 1, "category_id": 77, "bbox": [1, 1, 2, 2], "keypoints": [1, 2]},
                            {"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "keypoints": [1, 2]}]
    ann.write_text(json.dumps(data))
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps({"info": {"x": [1, {"y": None}]}, **{k: data[k] for k in order}}, indent=1))
    a, b = CocoReader(ann, root), CocoReader(reordered, root)
    assert (_records(a), _counts(a)) == (_records(b), _counts(b))
    assert b.objects_dropped["unknown_category"] == 3 and b.objects_dropped["bbox_malformed"] == 1
    assert b.notes["keypoints_malformed"] == 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_json_stream_matches_json_load_at_any_chunk_size(chunk):
    import io

    from spatialforge.processing.readers.json_stream import _JsonStream

    doc = {"a": [1, -2.5e-3, 12345678901234567890, 0.1, True, None, "x\u00e9\\\"y", {"k": [1.0, []]}, [], float("nan")],
           "b": 17, "c": [], "d": [{"bbox": [1e10, 2.25, 3, 4]}, 1234.5678e2, "\ud83d\ude00"]}
    text = json.dumps(doc, indent=1)
    got: dict = {}
    kinds = _JsonStream(io.StringIO(text), "doc", chunk_chars=chunk).walk_object(lambda key: got.setdefault(key, []).append)
    assert kinds == {"a": "list", "b": "int", "c": "list", "d": "list"}
    assert json.dumps(got) == json.dumps({k: v if isinstance(v, list) else [] for k, v in doc.items()})


@pytest.mark.parametrize("text", ["", "{", '{"images": [1, 2', '{"images": [1 2]}', '{"a": 1} x', '{"a": tru}', '{"a": [1.]}'])
def test_json_stream_rejects_broken_documents(text):
    import io

    from spatialforge.processing.readers.json_stream import _JsonStream

    with pytest.raises(BadInputError, match="not valid JSON"):
        _JsonStream(io.StringIO(text), "doc", chunk_chars=2).walk_object(lambda key: None)


def test_openimages_csv_edge_rows_counted_as_before(tmp_path):
    """Blank lines, quoted fields and short rows: counted by the streaming parse as by csv rows."""
    root = _openimages_fixture(tmp_path)
    header = (tmp_path / "boxes.csv").read_text().splitlines()[0]
    (tmp_path / "edge.csv").write_text(header + "\n\n" + '"000a",xclick,"/m/01",1,0.1,0.3,0.2,0.6,0,0,0,0,0\n'
                                       + "000a,xclick,/m/01,1,0.1,0.3\n\n")
    reader = OpenImagesReader(tmp_path / "edge.csv", root, tmp_path / "classes.csv")
    assert _records(reader)["000a"][2] == [[20, 20, 60, 60]]
    assert reader.stats.dropped == {"malformed_row": 3}


def _generate_stats(cfg_kwargs, out, workers):
    from spatialforge.processing.pipeline import GenerateConfig, generate

    return generate(GenerateConfig(out=out, num_shards=3, workers=workers, progress=False, **cfg_kwargs))


def test_generate_converts_once_for_all_workers_and_reruns(tmp_path, monkeypatch):
    """Drop counts in stats.json do not depend on workers; the conversion runs once, before the
    workers start, and a resume reuses it."""
    ann, root = _coco_fixture(tmp_path)
    kwargs = {"source": "objects365", "annotations": ann, "images": root, "tasks": ("grounding",)}
    from spatialforge.processing import pipeline

    calls, stamps = [], []
    convert, prepare = CocoReader._convert, pipeline.prepare_inputs
    cache = tmp_path / "w2" / ".spatialforge" / "cache" / "annotations"

    def prepare_and_stamp(cfg):
        prepare(cfg)
        stamps.extend((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("coco-*.parquet"))

    monkeypatch.setattr(CocoReader, "_convert", lambda self, events: calls.append(1) or convert(self, events))
    monkeypatch.setattr(pipeline, "prepare_inputs", prepare_and_stamp)
    s1 = _generate_stats(kwargs, tmp_path / "w1", 1)
    s2 = _generate_stats(kwargs, tmp_path / "w2", 2)
    assert len(calls) == 2  # one per run folder, in this process before the workers start
    (table,) = cache.glob("coco-*.parquet")
    stamp = (table.name, table.stat().st_ino, table.stat().st_mtime_ns)
    assert stamps == [stamp]  # the spawned workers read the table, none converted again
    expected = {"dropped": {"duplicate_image_id": 1, "missing_image": 1, "size_mismatch": 1},
                "objects_dropped": {"annotation_unknown_image": 1, "bbox_malformed": 1, "bbox_not_finite": 1,
                                    "bbox_outside_image": 1, "bbox_zero_area": 1, "unknown_category": 1}}
    for stats in (s1, s2, json.loads((tmp_path / "w2" / "stats.json").read_text())):
        reader = stats["steps"][0]
        assert {k: reader[k] for k in expected} == expected
        assert (reader["records_in"], reader["records_out"]) == (7, 5)
    # resume after a "kill": shard 0 (which counts the parse-time problems) runs again, from the cache
    (tmp_path / "w2" / ".spatialforge" / "markers" / "shard-00000.json").unlink()
    s3 = _generate_stats(kwargs, tmp_path / "w2", 2)
    assert len(calls) == 2 and (table.name, table.stat().st_ino, table.stat().st_mtime_ns) == stamp
    assert {k: s3["steps"][0][k] for k in expected} == expected
