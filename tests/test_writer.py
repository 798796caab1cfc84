"""Parquet writer (schema, order, atomic names) and dataset card (YAML, plain load_dataset)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from spatialforge.builders import schema
from spatialforge.builders.card import acceptance, card_yaml, write_card
from spatialforge.processing.records import Record
from spatialforge.processing.output.parquet import ParquetWriter


def _row(image_id: str, task: str, k: int = 0) -> dict:
    objects = [{"label": "cup", "bbox": [10, 20, 30, 40]}, {"label": "dog", "bbox": [500, 500, 900, 950]}]
    row = {
        "id": schema.make_id("t", image_id, task, k), "source": "t", "image_id": image_id, "width": 64, "height": 48,
        "task": task, "question": "q", "answer": "a", "objects": objects, "fact": None, "count": None,
        "verification": {"checks": ["c"], "depth_margin": 0.25},
    }
    if task == "near_far":
        row["fact"] = {"subject": 0, "predicate": "nearer_than", "object": 1, "frame": "camera"}
    if task == "counting":
        row["count"], row["objects"] = 2, []
    return row


def _write(out, records, rank=0, world_size=2):
    writer = ParquetWriter(out)
    list(writer.run(records, rank=rank, world_size=world_size))
    return writer


def test_writer_sorted_rows_declared_schema_and_counts(tmp_path):
    r1 = Record("t", "img2", 64, 48, rows=[_row("img2", "near_far"), _row("img2", "counting")])
    r2 = Record("t", "img1", 64, 48, rows=[_row("img1", "near_far"), _row("img1", "near_far")])  # repeated id
    r2.drop("near_far:margin_small", 3)
    bad = _row("img3", "near_far")
    bad["objects"][0]["bbox"] = [10, 20, 5, 40]  # x1 > x2
    r3 = Record("t", "img3", 64, 48, rows=[bad])
    writer = _write(tmp_path, [r1, r2, r3])
    path = tmp_path / "data" / "near_far" / "train-00000-of-00002.parquet"
    table = pq.read_table(path)
    assert table.schema.equals(schema.arrow_schema())
    assert table.schema.metadata == schema.arrow_schema().metadata  # the datasets features travel along
    assert table.column("id").to_pylist() == ["t-img1-near_far-000", "t-img2-near_far-000"]
    assert writer.rows_per_task == {"near_far": 2, "counting": 1}
    assert writer.candidate_drops == {"near_far:margin_small": 3}
    assert writer.stats.dropped == {"duplicate_row_id": 1, "invalid_row": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["data", "near_far", "counting", "train-00000-of-00002.parquet", "train-00000-of-00002.parquet"]
    )  # no tmp files left


def test_card_yaml_configs_and_zero_row_tasks(tmp_path):
    stats = {"rows_per_task": {"near_far": 2, "counting": 1, "left_right": 0}, "candidate_drops": {"near_far:margin": 2},
             "records_in": 3, "records_out": 2, "num_shards": 2, "steps": []}
    meta = yaml.safe_load(card_yaml(stats))
    assert meta["license"] == "cc-by-nc-4.0"
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"all", "near_far", "counting"}  # no config for a task without rows
    assert configs["all"]["default"] is True
    assert configs["all"]["data_files"] == [{"split": "train", "path": "data/*/*.parquet"}]
    assert configs["near_far"]["data_files"] == [{"split": "train", "path": "data/near_far/*.parquet"}]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert infos["near_far"]["splits"] == [{"name": "train", "num_bytes": 0, "num_examples": 2}]
    assert infos["all"]["features"] == schema.FEATURES._to_yaml_list()
    assert acceptance(stats)["near_far"] == pytest.approx(0.5)


def test_card_with_no_rows_has_no_configs(tmp_path):
    write_card(tmp_path, {"rows_per_task": {}, "records_in": 0, "records_out": 0})
    text = (tmp_path / "README.md").read_text()
    assert "configs" not in yaml.safe_load(text.split("---")[1])
    assert json.loads((tmp_path / "stats.json").read_text())["records_in"] == 0


def test_plain_load_dataset_reads_the_folder(tmp_path):
    import datasets

    _write(tmp_path, [Record("t", "a", 64, 48, rows=[_row("a", "near_far"), _row("a", "counting")])], 0, 2)
    _write(tmp_path, [Record("t", "b", 64, 48, rows=[_row("b", "near_far")])], 1, 2)
    write_card(tmp_path, {"rows_per_task": {"near_far": 2, "counting": 1}, "records_in": 2, "records_out": 2})
    body = (tmp_path / "README.md").read_text()
    assert "liu2026spatialforge" in body and "2605.11462" in body and "| near_far | 2 |" in body
    ds = datasets.load_dataset(str(tmp_path), "near_far", split="train")
    assert ds.features == schema.FEATURES
    assert ds["id"] == ["t-a-near_far-000", "t-b-near_far-000"]
    assert ds[0]["fact"] == {"subject": 0, "predicate": "nearer_than", "object": 1, "frame": "camera"}
    assert ds[0]["objects"][1] == {"label": "dog", "bbox": [500, 500, 900, 950]}
    everything = datasets.load_dataset(str(tmp_path), split="train")  # the default config: all tasks
    assert sorted(everything["task"]) == ["counting", "near_far", "near_far"]


def test_requested_task_without_rows_keeps_its_files_but_gets_no_config(tmp_path):
    import datasets

    tasks = ("near_far", "perspective")
    for rank, records in enumerate([[Record("t", "a", 64, 48, rows=[_row("a", "near_far")])], []]):
        writer = ParquetWriter(tmp_path, tasks=tasks)
        list(writer.run(records, rank=rank, world_size=2))
        assert writer.rows_per_task["perspective"] == 0
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data").rglob("*.parquet"))
    assert files == [f"data/{t}/train-0000{k}-of-00002.parquet" for t in tasks for k in (0, 1)]
    empty = pq.read_table(tmp_path / "data" / "perspective" / "train-00000-of-00002.parquet")
    assert empty.num_rows == 0 and empty.schema.equals(schema.arrow_schema())
    write_card(tmp_path, {"rows_per_task": {"near_far": 1, "perspective": 0}, "config": {"tasks": list(tasks)}})
    text = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    # datasets cannot hold a split without rows in memory (huggingface/datasets#8401): no config for it
    assert {c["config_name"] for c in meta["configs"]} == {"all", "near_far"}
    assert "Tasks without rows (perspective) have no config" in text
    for name in ("all", "near_far"):  # every declared config loads, in both modes
        for streaming in (False, True):
            ds = datasets.load_dataset(str(tmp_path), name, split="train", streaming=streaming)
            assert [r["id"] for r in ds] == ["t-a-near_far-000"]


def test_stats_json_is_path_free(tmp_path):
    model = tmp_path / "models" / "dav2"
    stats = {"rows_per_task": {"near_far": 1},
             "config": {"annotations": str(tmp_path / "in" / "ann.json"), "depth_model": str(model),
                        "detector": "facebook/detr-resnet-50", "tasks": ["near_far"],
                        "inputs": {"annotations": {"size": 3, "mtime_ns": 1}}}}
    write_card(tmp_path / "out", stats)
    text = (tmp_path / "out" / "stats.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["config"] == {"annotations": "ann.json", "depth_model": "dav2",
                                          "detector": "facebook/detr-resnet-50", "tasks": ["near_far"]}


def test_synthetic_tag_only_for_synthetic_images(tmp_path):
    stats = {"rows_per_task": {"near_far": 1}}
    assert "synthetic" not in yaml.safe_load(card_yaml(stats))["tags"]
    assert "synthetic" in yaml.safe_load(card_yaml(stats, synthetic=True))["tags"]


def test_card_lists_every_reading_drop_and_top_candidate_drops_per_task(tmp_path):
    from spatialforge.builders.card import TOP_REASONS, card_body

    reader_drops = {f"reason_{k:02d}": 1000 - k for k in range(20)}
    reader_drops["duplicate_image_id"] = 3  # parse-time drops: not among the 10 images read
    stats = {
        "rows_per_task": {"near_far": 4}, "records_in": 10, "records_out": 8, "num_shards": 1,
        "candidate_drops": {**{f"near_far/check_{k}": 500 + k for k in range(TOP_REASONS + 3)},
                            "counting/not_exhaustive": 7, "near_far/over_cap": 1, "pose_box_too_small": 2},
        "steps": [
            {"name": "reader", "records_in": 10, "records_out": 8, "dropped": {**reader_drops},
             "objects_dropped": {"bbox_not_finite": 1, "unknown_category": 2}},
            {"name": "depth_files", "records_in": 8, "records_out": 8, "dropped": {}},
            {"name": "writer", "records_in": 8, "records_out": 8, "dropped": {"invalid_row": 1}},
        ],
    }
    # reader: 20 reasons counted + 3 duplicates, of which 2 happened to images read (10 in, 8 out)
    stats["steps"][0]["dropped"] = {"missing_image": 2, "duplicate_image_id": 3}
    body = card_body(stats)
    assert "images read: 13 entries in the input, 3 of them dropped while parsing" in body
    stats["steps"][0]["dropped"] = {**reader_drops, "missing_image": 2}
    body = card_body(stats)
    reading, candidates = body.split("## Images and objects dropped")[1].split("## Candidate drops per task")
    for reason in [*reader_drops, "missing_image"]:
        assert f"| reader (images) | `{reason}` |" in reading  # every data-loss reason, however rare
    assert "| reader (objects) | `bbox_not_finite` | 1 |" in reading
    assert "| reader (objects) | `unknown_category` | 2 |" in reading
    assert "| writer (rows) | `invalid_row` | 1 |" in reading
    assert "check_" not in reading
    shown = [line for line in candidates.splitlines() if line.startswith("| near_far |")]
    assert len(shown) == TOP_REASONS and f"`check_{TOP_REASONS + 2}` | {500 + TOP_REASONS + 2:,}" in shown[0]
    assert "| counting | `not_exhaustive` | 7 |" in candidates and "| other | `pose_box_too_small` | 2 |" in candidates
    assert "4 more reasons in `stats.json`" in candidates  # 3 near_far checks + over_cap
