"""Counting rows from Pixmo point counts, and images without boxes counted as ``no_objects``."""

from __future__ import annotations

import json
import logging
import re

import pyarrow.parquet as pq
from _pipeline_fixtures import make_folder, save_image

from spatialforge.builders.schema import validate_row
from spatialforge.processing.pipeline import GenerateConfig, build_steps, generate
from spatialforge.processing.records import Record
from spatialforge.processing.tasks.point_counting import PointCounting
from spatialforge.processing.tasks.verify import VerifyConfig


def _record(counts: dict[str, int]) -> Record:
    return Record("pixmo", "abc", 64, 48, meta={"point_counts": counts})


def test_point_counts_become_counting_rows():
    counts = {"apple": 3, "car": 0, "bird": 12, "traffic light": 1}
    rec = PointCounting(max_per_image=None).process(_record(counts))
    assert [(r["id"], r["count"], r["objects"], r["fact"]) for r in rec.rows] == [
        ("pixmo-abc-counting-000", 3, [], None), ("pixmo-abc-counting-001", 1, [], None)]
    for row, words in zip(rec.rows, (("apple", "3"), ("traffic light", "1"))):
        validate_row(row)
        assert words[0] in row["question"] and words[1] in row["answer"]
        assert row["verification"]["checks"] == ["point_count"] and row["verification"]["box_source"] == "points"
    assert rec.drops == {"counting/count_out_of_range": 2}  # 0 (not asked by default) and 12 (> count_max)
    zero = PointCounting(config=VerifyConfig(count_zero=True), max_per_image=None).process(_record(counts))
    assert sorted(r["count"] for r in zero.rows) == [0, 1, 3]


def test_point_counting_cap_and_seed_are_deterministic():
    counts = {f"label{k}": k + 1 for k in range(6)}
    runs = [PointCounting(seed=s).process(_record(counts)).rows for s in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1] and len(runs[0]) == 1  # default cap: one counting row per image
    assert len({r[0]["question"] + r[0]["answer"] for r in runs}) > 1  # the seed changes the choices
    rec = PointCounting().process(_record(counts))
    assert rec.drops == {"counting/over_cap": 5}
    asked = re.search(r"label(\d)", rec.rows[0]["question"]).group(0)
    assert rec.rows[0]["count"] == counts[asked]  # the kept row counts the label it asks about
    # ids continue after counting rows the record already has
    rec = _record({"apple": 2})
    rec.rows.append({"task": "counting", "id": "x"})
    assert PointCounting().process(rec).rows[1]["id"] == "pixmo-abc-counting-001"


def _pixmo(tmp_path):
    sha1, sha2 = "ab" * 32, "cd" * 32
    save_image(tmp_path / "px" / sha1, 50, 40)
    save_image(tmp_path / "px" / sha2, 50, 40, seed=1)
    rows = [
        {"image_sha256": sha1, "label": "dog", "points": [{"x": 10, "y": 5}, {"x": 30, "y": 5}, {"x": 40, "y": 20}]},
        {"image_sha256": sha2, "label": "cup", "points": [{"x": 1, "y": 2}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, tmp_path / "px", (sha1, sha2)


def test_pixmo_generate_counts_points_and_reports_no_objects(tmp_path, caplog):
    ann, images, (sha1, sha2) = _pixmo(tmp_path)
    cfg = GenerateConfig(source="pixmo", annotations=ann, images=images, out=tmp_path / "o", num_shards=2, progress=False)
    assert [s.name for s in build_steps(cfg)][-2:] == ["point_counting", "writer"]
    with caplog.at_level(logging.WARNING, logger="spatialforge.processing.pipeline"):
        stats = generate(cfg)
    rows = [r for p in sorted((tmp_path / "o" / "data" / "counting").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert {(r["image_id"], r["count"]) for r in rows} == {(sha1, 3), (sha2, 1)}
    assert stats["rows_per_task"]["counting"] == 2 and stats["no_objects"] == 2
    assert "2 of 2 images have no boxes" in caplog.text and "--detector" in caplog.text
    assert "`no_objects`" in (tmp_path / "o" / "README.md").read_text()


def test_folder_without_detector_counts_no_objects(tmp_path, caplog):
    images = make_folder(tmp_path / "imgs", 3)
    cfg = GenerateConfig(source="folder", images=images, out=tmp_path / "o", num_shards=2, progress=False)
    assert "point_counting" not in [s.name for s in build_steps(cfg)]
    with caplog.at_level(logging.WARNING, logger="spatialforge.processing.pipeline"):
        stats = generate(cfg)
    assert stats["rows_total"] == 0 and stats["no_objects"] == 3
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["no_objects"] == 3
    card = (tmp_path / "o" / "README.md").read_text()
    assert "images without any box (`no_objects`: no question about objects can be asked): 3" in card
    assert caplog.text.count("--detector") == 1
