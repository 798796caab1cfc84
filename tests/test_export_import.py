"""Export then import: the demo's rows through every training format and back through the builder.

Also: missing images are reported and never replaced, output is deterministic byte for byte, image
paths map to (source, image_id) through the resolvers' layouts, answers of peer-style files (no
structured rows) parse back into objects / fact / count, and what the text lacks is counted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from spatialforge.builders.annotations import locate_shards
from spatialforge.processing.tasks.templates import display_label
from spatialforge.processing.training.export import EXPORT_FORMATS, _read_rows, export_dataset
from spatialforge.processing.training.parse import ChatReader

FILES = {"qwen-vl": "qwen_vl.json", "llava": "llava.json", "internvl": "internvl_meta.json",
         "llamafactory": "spatialforge.json", "swift": "swift.jsonl"}
TEXT_FIELDS = ("source", "image_id", "width", "height", "task", "question", "answer", "fact", "count")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from spatialforge.processing.synth.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, scenes=30, passes=("exact",), load=False)
    dataset = str(out / "dataset-exact")
    rows = [r for b in _read_rows(locate_shards(dataset)) for r in b]
    return {"dataset": dataset, "images": str(out / "objects365" / "images"), "rows": rows, "root": out}


def _export(demo, out, fmt, **kw):
    return export_dataset(demo["dataset"], fmt, {"objects365": demo["images"]}, str(out), **kw)


# Every format in both modes; llava (and internvl in memory) run in `make test-fast` as well.
@pytest.mark.parametrize("fmt, streaming", [
    pytest.param(fmt, streaming, marks=() if (fmt, streaming) in (("llava", False), ("llava", True), ("internvl", False))
                 else pytest.mark.slow)
    for fmt in sorted(FILES) for streaming in (False, True)
])
def test_export_then_import_through_the_builder_gives_the_same_rows(demo, tmp_path, fmt, streaming):
    from spatialforge_10m import SpatialForge10M

    _export(demo, tmp_path / "out", fmt, group_by_image=fmt in ("llava", "swift"))
    builder = SpatialForge10M(config_name="all", annotations=str(tmp_path / "out" / FILES[fmt]),
                              image_dirs={"objects365": demo["images"]}, cache_dir=str(tmp_path / "cache"))
    if streaming:
        got = list(builder.as_streaming_dataset(split="train"))
    else:
        builder.download_and_prepare()
        got = list(builder.as_dataset(split="train"))
    images = {r["id"]: r.pop("image") for r in got}
    assert sorted(got, key=lambda r: r["id"]) == sorted(demo["rows"], key=lambda r: r["id"])
    first = demo["rows"][0]
    assert images[first["id"]].size == (first["width"], first["height"])
    assert builder.image_stats["chat_import"] == {"rows": len(demo["rows"]), "rows_structured": len(demo["rows"])}


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen2-vl", "internvl"])
def test_structured_round_trip_is_exact_for_every_family(demo, tmp_path, family):
    """Even on Qwen2.5-VL's pixel grid (coarser than 0..1000), boxes come back as the stored ones."""
    _export(demo, tmp_path, "qwen-vl", model_family=family)
    text = (tmp_path / "qwen_vl.json").read_text()
    assert ("<|box_start|>" in text) == (family == "qwen2-vl") and ("<box>[[" in text) == (family == "internvl")
    got = list(ChatReader(model_family=family).read(str(tmp_path / "qwen_vl.json")))
    assert sorted(got, key=lambda r: r["id"]) == sorted(demo["rows"], key=lambda r: r["id"])


def _by_position(rows) -> dict:
    """``(source, image_id, task, k)`` -> the k-th row of that image and task, in id order."""
    seen: dict = {}
    out = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row["source"], row["image_id"], row["task"])
        out[(*key, seen.setdefault(key, 0))] = row
        seen[key] += 1
    return out


@pytest.mark.parametrize("fmt, family", [("llava", "qwen3-vl"), ("internvl", "internvl"), ("llamafactory", "qwen2-vl"),
                                         ("swift", "qwen3-vl"), ("qwen-vl", "qwen2.5-vl")])
def test_peer_style_files_parse_back_from_text(demo, tmp_path, fmt, family):
    """Without the structured rows, every field the text carries comes back (boxes on 0..1000)."""
    _export(demo, tmp_path, fmt, model_family=family, structured_rows=False)
    reader = ChatReader(image_dirs={"objects365": demo["images"]}, model_family=family)
    # peer files carry no row ids: the k-th question about an image and task pairs with its k-th row
    got = _by_position(reader.read(str(tmp_path / FILES[fmt])))
    rows = demo["rows"]
    assert len(got) == len(rows)
    lossy = family == "qwen2.5-vl" and fmt != "swift"  # pixels of the resized image: one grid step
    for key, row in _by_position(rows).items():
        back = got[key]
        if not lossy:
            assert {k: back[k] for k in TEXT_FIELDS} == {k: row[k] for k in TEXT_FIELDS}, row["id"]
        else:
            assert {k: back[k] for k in TEXT_FIELDS if k not in ("question", "answer")} == \
                   {k: row[k] for k in TEXT_FIELDS if k not in ("question", "answer")}
        assert [display_label(o["label"]) for o in back["objects"]] == (
            [display_label(o["label"]) for o in row["objects"]] if row["task"] != "counting" else [])
        for o_back, o in zip(back["objects"], row["objects"]):
            if o_back["bbox"] is not None:
                assert all(abs(a - b) <= (3 if lossy else 0) for a, b in zip(o_back["bbox"], o["bbox"]))
    # what the text cannot carry is counted: counting boxes, and boxes of objects named by label alone
    bare = sum(1 for r in rows if r["task"] in ("near_far", "left_right", "perspective")
               for o in r["objects"] if f"{display_label(o['label'])} at [" not in r["question"])
    expected = {"rows": len(rows), "count_boxes_not_in_text": sum(r["task"] == "counting" for r in rows),
                "object_box_not_in_text": bare}
    assert reader.counts == {k: v for k, v in expected.items() if v}


def test_unparsable_text_is_kept_and_counted(tmp_path):
    img = tmp_path / "pixmo" / ("ab" * 32 + ".png")
    img.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (50, 40)).save(img)
    samples = [
        {"image": str(img), "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the sky?"}, {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "How many cups are there in the image?"}, {"from": "gpt", "value": "3"},
            {"from": "human", "value": "Is the cup at [10, 20, 30, 40] to the left of the plate in the image?"},
            {"from": "gpt", "value": "No."}]},
        {"image": "open/train/000a1249af2bc5f0.jpg", "conversations": [
            {"from": "human", "value": "Where is the dog?"}, {"from": "gpt", "value": '[{"bbox_2d": [1, 2, 3, 4], "label": "dog"}]'}]},
        {"image": "elsewhere/holiday.jpg", "conversations": [
            {"from": "human", "value": "Describe the object in region [5, 6, 7, 8] with its category name."},
            {"from": "gpt", "value": "It is labeled TV."}]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(samples))
    reader = ChatReader()
    rows = list(reader.read(str(path)))
    by_q = {r["question"]: r for r in rows}
    sky = by_q["What colour is the sky?"]
    assert (sky["task"], sky["answer"], sky["source"], sky["image_id"], sky["width"], sky["height"]) == (
        None, "Blue.", "pixmo", "ab" * 32, 50, 40)
    assert by_q["How many cups are there in the image?"]["count"] == 3
    rel = by_q["Is the cup at [10, 20, 30, 40] to the left of the plate in the image?"]
    assert rel["task"] == "left_right" and rel["objects"] == [{"label": "cup", "bbox": [10, 20, 30, 40]},
                                                              {"label": "plate", "bbox": None}]
    assert rel["fact"] == {"subject": 0, "predicate": "right_of", "object": 1, "frame": "camera"}  # "No" to left_of
    dog = by_q["Where is the dog?"]
    assert (dog["task"], dog["source"], dog["image_id"], dog["objects"]) == (
        "grounding", "openimages", "000a1249af2bc5f0", [{"label": "dog", "bbox": [1, 2, 3, 4]}])
    tv = by_q["Describe the object in region [5, 6, 7, 8] with its category name."]
    assert (tv["task"], tv["source"], tv["objects"]) == ("referring", "unknown", [{"label": "TV", "bbox": [5, 6, 7, 8]}])
    # "Where is the dog?" is no template: read from its bbox_2d answer, and counted as such
    assert reader.counts == {"rows": 5, "unknown_question": 1, "count_boxes_not_in_text": 1, "object_box_not_in_text": 1,
                             "question_not_a_template": 1, "image_size_unknown": 2, "unknown_image_source": 1}


def test_objects365_patch_path_maps_through_the_layout(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "patch16/objects365_v2_00908726.jpg"},
                                     {"type": "text", "text": "How many chairs are there in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]}) + "\n")
    (row,) = ChatReader().read(str(path))
    assert (row["source"], row["image_id"], row["task"], row["count"], row["id"]) == (
        "objects365", "objects365_v2_00908726", "counting", 2, "objects365-objects365_v2_00908726-counting-000")


# --------------------------------------------------------------------------- images and policies
def _drop_image(demo, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(demo["images"], images)
    gone = sorted(images.rglob("*.jpg"))[0]
    gone.unlink()
    return images, gone.stem


def test_missing_image_fails_under_error_and_is_never_replaced(demo, tmp_path):
    images, stem = _drop_image(demo, tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"1 images .* missing .*objects365/{stem} \(missing\)"):
        export_dataset(demo["dataset"], "llava", {"objects365": str(images)}, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "llava.json").exists()
    report = export_dataset(demo["dataset"], "llava", {"objects365": str(images)}, str(tmp_path / "out"),
                            on_missing_image="skip")
    lost = [r["id"] for r in demo["rows"] if r["image_id"] == stem]
    assert lost and report.dropped == {"image_missing": len(lost)}
    lines = (tmp_path / "out" / "missing_rows.tsv").read_text().splitlines()
    assert lines[1:] == [f"{i}\tobjects365\t{stem}\tmissing" for i in lost]
    data = json.loads((tmp_path / "out" / "llava.json").read_text())
    assert len(data) == len(demo["rows"]) - len(lost)
    assert all(stem not in item["image"] and os.path.isfile(item["image"]) for item in data)
    written = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert written["dropped_rows_by_reason"] == {"image_missing": len(lost)}


def test_output_is_deterministic_byte_for_byte(demo, tmp_path):
    first = {}
    for fmt in EXPORT_FORMATS:
        _export(demo, tmp_path / fmt, fmt, group_by_image=True)
        first.update({(fmt, p.name): p.read_bytes() for p in (tmp_path / fmt).iterdir()})
        _export(demo, tmp_path / fmt, fmt, group_by_image=True)
    again = {(fmt, p.name): p.read_bytes() for fmt in EXPORT_FORMATS for p in (tmp_path / fmt).iterdir()}
    assert len(first) == 19 and again == first  # 9 data files + 5 x (missing_rows.tsv, export_report.json)


def test_group_by_image_makes_one_sample_per_image(demo, tmp_path):
    report = _export(demo, tmp_path, "qwen-vl", group_by_image=True)
    images = {r["image_id"] for r in demo["rows"]}
    assert report.samples == len(images) == 30 and report.rows_written == len(demo["rows"])
    lines = [json.loads(x) for x in (tmp_path / "messages.jsonl").read_text().splitlines()]
    turns = sum(len(x["messages"]) for x in lines) // 2
    assert turns == len(demo["rows"]) and turns / len(lines) > 3  # several QA pairs per decoded image
    for x in lines:
        parts = [p for m in x["messages"] for p in m["content"] if p["type"] == "image"]
        assert len(parts) == 1 and x["messages"][0]["content"][0] == parts[0]


@pytest.mark.slow  # three CLI processes
def test_cli_export(demo, tmp_path):
    cli = [sys.executable, "-m", "spatialforge.processing.cli"]
    done = subprocess.run(cli + ["export", demo["dataset"], "--format", "internvl", "--image-dir",
                                 f"objects365={demo['images']}", "--to", str(tmp_path / "x"), "--media-root",
                                 demo["images"], "--task", "counting"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    n = sum(r["task"] == "counting" for r in demo["rows"])
    assert f"wrote {n} internvl samples ({n} of {n} rows, model family internvl)" in done.stdout
    bad = subprocess.run(cli + ["export", demo["dataset"], "--format", "nope", "--to", str(tmp_path / "y")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("Error:") == 1 and "--format" in bad.stderr.splitlines()[-1]
    images, stem = _drop_image(demo, tmp_path)
    miss = subprocess.run(cli + ["export", demo["dataset"], "--format", "llava", "--image-dir", f"objects365={images}",
                                 "--to", str(tmp_path / "z")], capture_output=True, text=True)
    last = miss.stderr.splitlines()[-1]  # log lines come first; the error is one line
    assert miss.returncode == 1 and miss.stderr.count("Error:") == 1 and last.startswith("Error:") and stem in last


def test_builder_task_config_filters_chat_rows(demo, tmp_path):
    from spatialforge_10m import SpatialForge10M

    _export(demo, tmp_path / "out", "llava", group_by_image=True, structured_rows=False)
    builder = SpatialForge10M(config_name="counting", annotations=str(tmp_path / "out" / "llava.json"),
                              image_dirs={"objects365": demo["images"]}, cache_dir=str(tmp_path / "cache"))
    got = list(builder.as_streaming_dataset(split="train"))
    want = [r for r in demo["rows"] if r["task"] == "counting"]
    assert sorted((r["id"], r["count"], r["question"]) for r in got) == sorted((r["id"], r["count"], r["question"]) for r in want)
    assert builder.image_stats["chat_import"]["count_boxes_not_in_text"] == len(want)


def test_swift_ignores_model_family_and_says_so(demo, tmp_path, caplog):
    report = _export(demo, tmp_path, "swift", model_family="qwen2.5-vl")
    assert report.model_family == "swift template"
    assert "--model-family qwen2.5-vl is not used by swift" in caplog.text
    with pytest.raises(FileNotFoundError, match="no annotation files match"):
        export_dataset(str(tmp_path / "nothing-*.parquet"), "llava", {}, str(tmp_path / "o"))


def test_images_outside_media_root_fail_and_leave_nothing(demo, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError, match=r"is not under --media-root"):
        _export(demo, tmp_path / "out", "llava", media_root=str(other))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_builder_rejects_bad_chat_options(demo, tmp_path):
    from spatialforge_10m import SpatialForge10M

    _export(demo, tmp_path / "out", "llava", group_by_image=True)
    ann = str(tmp_path / "out" / "llava.json")
    with pytest.raises(ValueError, match=r"model_family must be one of \['internvl', 'qwen2-vl', 'qwen2.5-vl', 'qwen3-vl'\], got 'llava-9'"):
        SpatialForge10M(annotations=ann, image_dirs={"objects365": demo["images"]}, model_family="llava-9")
    with pytest.raises(ValueError, match="media_root must be an existing folder"):
        SpatialForge10M(annotations=ann, media_root=str(tmp_path / "nowhere"))
