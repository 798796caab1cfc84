"""Chat formats from stored rows: box text per model family, and each framework's reading rules.

The rules each file is checked against are the ones the frameworks apply when they read it (from
their own code): Qwen-VL finetune's ``_build_messages`` (every ``<image>`` consumes one image, none
left over; paths joined to ``data_path``), LLaVA's first-turn ``<image>``, InternVL's meta keys and
``os.path.join(root, image)``, LLaMA-Factory's sharegpt converter (roles alternate user/assistant,
``<image>`` count == images, ``media_dir`` join) and ms-swift's ``<bbox>`` / ``objects`` with
``bbox_type`` ``norm1`` (``int(round(x * 1000))`` for 0..1000 templates).
"""

from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image

from spatialforge.processing.training.export import EXPORT_FORMATS, export_dataset
from spatialforge.processing.training.formats import (
    MODEL_FAMILIES,
    FormatError,
    Sample,
    row_text,
    smart_resize,
    swift_record,
    to_messages,
)

REFERRING = {
    "id": "o365-1-referring-000", "source": "objects365", "image_id": "1", "width": 640, "height": 480,
    "task": "referring", "question": "What is the object in the region [100, 200, 300, 400]?", "answer": "Cup",
    "objects": [{"label": "cup", "bbox": [100, 200, 300, 400]}], "fact": None, "count": None,
}
GROUNDING = {
    "id": "o365-1-grounding-000", "source": "objects365", "image_id": "1", "width": 640, "height": 480,
    "task": "grounding", "question": "Where are the cups in the image?",
    # the stored text is stale on purpose: boxes come from `objects`, never from the text
    "answer": '[{"bbox_2d": [0, 0, 1, 1], "label": "cup"}]',
    "objects": [{"label": "cup", "bbox": [100, 200, 300, 400]}, {"label": "cup", "bbox": [500, 500, 1000, 1000]}],
    "fact": None, "count": None,
}
RELATION = {
    "id": "o365-1-near_far-000", "source": "objects365", "image_id": "1", "width": 640, "height": 480,
    "task": "near_far", "question": "Which is closer to the camera, the cup at [100, 200, 300, 400] or the lamp?",
    "answer": "The cup at [100, 200, 300, 400].",
    "objects": [{"label": "cup", "bbox": [100, 200, 300, 400]}, {"label": "lamp", "bbox": [600, 0, 700, 300]}],
    "fact": {"subject": 0, "predicate": "nearer_than", "object": 1, "frame": "camera"}, "count": None,
}


# ---------------------------------------------------------------------------------- family table
# Values worked out by hand: 640x480 resizes to 644x476 for Qwen2.5-VL (round(640/28)=23 -> 644,
# round(480/28)=17 -> 476; 644*476 is inside [3136, 1003520]); 100/1000*644=64.4 -> 64, 200/1000*476
# = 95.2 -> 95, 300/1000*644 = 193.2 -> 193, 400/1000*476 = 190.4 -> 190.
@pytest.mark.parametrize(
    "family, question",
    [
        ("qwen3-vl", "What is the object in the region [100, 200, 300, 400]?"),
        ("qwen2-vl", "What is the object in the region <|box_start|>(100,200),(300,400)<|box_end|>?"),
        ("internvl", "What is the object in the region <box>[[100, 200, 300, 400]]</box>?"),
        ("qwen2.5-vl", "What is the object in the region [64, 95, 193, 190]?"),
    ],
)
def test_box_text_in_questions_per_family(family, question):
    assert row_text(REFERRING, family) == (question, "Cup")


@pytest.mark.parametrize(
    "family, answer",
    [
        ("qwen3-vl", '[{"bbox_2d": [100, 200, 300, 400], "label": "cup"}, {"bbox_2d": [500, 500, 1000, 1000], "label": "cup"}]'),
        ("qwen2.5-vl", '[{"bbox_2d": [64, 95, 193, 190], "label": "cup"}, {"bbox_2d": [322, 238, 644, 476], "label": "cup"}]'),
        ("qwen2-vl", "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>"
                     "<|box_start|>(500,500),(1000,1000)<|box_end|>"),
        ("internvl", "<ref>cup</ref><box>[[100, 200, 300, 400], [500, 500, 1000, 1000]]</box>"),
    ],
)
def test_grounding_answer_is_rebuilt_from_objects(family, answer):
    assert row_text(GROUNDING, family)[1] == answer


def test_relation_mentions_rewritten_in_question_and_answer():
    q, a = row_text(RELATION, "internvl")
    assert q == "Which is closer to the camera, the cup at <box>[[100, 200, 300, 400]]</box> or the lamp?"
    assert a == "The cup at <box>[[100, 200, 300, 400]]</box>."
    q, a = row_text(RELATION, "qwen2.5-vl", image_size=(1280, 960))  # the file is twice the recorded size
    # 1280x960 -> round(960/28)=34 -> 952, round(1280/28)=46 -> 1288; 952*1288 = 1226176 > 1003520, so
    # beta = sqrt(1228800/1003520) = 1.10657: floor(960/1.10657/28)=30 -> 840, floor(1280/1.10657/28)=41 -> 1148
    assert smart_resize(960, 1280) == (840, 1148)
    assert a == "The cup at [115, 168, 344, 336]."  # 100/1000*1148 = 114.8, 200/1000*840 = 168, ...


def test_scale_phrases_follow_the_family():
    row = dict(REFERRING, task="grounding", question="Find the cup and give its box as [x1, y1, x2, y2] on a 0-1000 scale.")
    assert row_text(row, "qwen3-vl")[0] == row["question"]
    assert row_text(row, "qwen2.5-vl")[0] == "Find the cup and give its box as [x1, y1, x2, y2] in pixels."


def test_box_that_matches_no_object_is_an_error():
    row = dict(REFERRING, question="What is the object in the region [1, 2, 3, 4]?")
    with pytest.raises(FormatError, match=r"\[1, 2, 3, 4\].*matches none of its objects") as err:
        row_text(row, "qwen3-vl")
    assert err.value.reason == "box_not_in_objects"
    with pytest.raises(ValueError, match="model_family must be one of"):
        row_text(REFERRING, "llava-9")


def test_families_table_is_data():
    assert {name: f.coords for name, f in MODEL_FAMILIES.items()} == {
        "qwen3-vl": "relative", "qwen2.5-vl": "resized_pixels", "qwen2-vl": "relative", "internvl": "relative"}


@pytest.mark.slow  # imports transformers (~15 s here)
@pytest.mark.parametrize("size", [(640, 480), (4000, 3000), (40, 30), (333, 1999), (28, 28), (1000, 20)])
def test_smart_resize_matches_the_qwen2_vl_image_processor(size):
    """The grid the real processor gives (image_grid_thw x patch 14) for an image of that size."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil()
    image = Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8))
    _, grid_h, grid_w = proc(images=[image], return_tensors="np")["image_grid_thw"][0].tolist()
    assert smart_resize(size[1], size[0]) == (grid_h * proc.patch_size, grid_w * proc.patch_size)


def test_to_messages_multi_turn_image_only_in_first_user_turn():
    msgs = to_messages([REFERRING, RELATION, GROUNDING], "/img/1.jpg")
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3
    assert msgs[0]["content"] == [{"type": "image", "image": "/img/1.jpg"},
                                  {"type": "text", "text": REFERRING["question"]}]
    assert all(p["type"] == "text" for m in msgs[1:] for p in m["content"])
    assert msgs[5]["content"][0]["text"].startswith('[{"bbox_2d": [100, 200, 300, 400]')
    assert to_messages([REFERRING], None)[0]["content"] == [{"type": "text", "text": REFERRING["question"]}]


def test_swift_objects_follow_bbox_placeholders():
    rec = swift_record(Sample([RELATION, GROUNDING], "1.jpg"))
    text = "".join(m["content"] for m in rec["messages"])
    assert text.count("<bbox>") == len(rec["objects"]["bbox"]) == len(rec["objects"]["ref"]) == 4
    assert rec["objects"]["ref"] == ["cup", "cup", "cup", "cup"]
    # ms-swift (template/base.py normalize_bbox): norm1 -> int(round(x / 1 * 1000)) for norm1000 templates
    assert [[int(round(v * 1000)) for v in b] for b in rec["objects"]["bbox"]] == [
        [100, 200, 300, 400], [100, 200, 300, 400], [100, 200, 300, 400], [500, 500, 1000, 1000]]
    assert rec["objects"]["bbox_type"] == "norm1"


# ------------------------------------------------------------------- files against reading rules
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from spatialforge.processing.synth.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, scenes=12, passes=("exact",), load=False)
    return {"dataset": str(out / "dataset-exact"), "images": str(out / "objects365" / "images"), "root": out}


def _rows(dataset):
    from spatialforge.processing.training.export import _read_rows
    from spatialforge.builders.annotations import locate_shards

    return [r for batch in _read_rows(locate_shards(dataset)) for r in batch]


def _export(demo, tmp_path, fmt, **kw):
    out = tmp_path / fmt
    report = export_dataset(demo["dataset"], fmt, {"objects365": demo["images"]}, str(out), **kw)
    return out, report


def _image_tags(turns, key):
    return sum(t[key].count("<image>") for t in turns)


@pytest.mark.parametrize("group", [False, True])
def test_qwen_vl_files_read_by_the_finetune_rules(demo, tmp_path, group):
    out, report = _export(demo, tmp_path, "qwen-vl", group_by_image=group, media_root=demo["images"])
    rows = _rows(demo["dataset"])
    entry = json.loads((out / "qwen_vl_dataset.json").read_text())
    assert entry == {"annotation_path": str(out / "qwen_vl.json"), "data_path": os.path.realpath(demo["images"])}
    items = json.loads((out / "qwen_vl.json").read_text())
    assert len(items) == (len({(r["source"], r["image_id"]) for r in rows}) if group else len(rows)) == report.samples
    by_id = {r["id"]: r for r in rows}
    for item, line in zip(items, (out / "messages.jsonl").read_text().splitlines()):
        pool = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
        rebuilt = []  # qwenvl/data/data_processor.py _build_messages
        for turn in item["conversations"]:
            role = "user" if turn["from"] == "human" else "assistant"
            if role == "user":
                content = []
                for seg in re.split(r"(<image>|<video>)", turn["value"]):
                    if seg == "<image>":
                        content.append({"type": "image", "image": str((os.path.join(entry["data_path"], pool.pop(0))))})
                    elif seg.strip():
                        content.append({"type": "text", "text": seg.strip()})
            else:
                content = [{"type": "text", "text": turn["value"]}]
            rebuilt.append({"role": role, "content": content})
        assert pool == []  # every image consumed by exactly one <image>
        assert os.path.isfile(rebuilt[0]["content"][0]["image"])
        record = json.loads(line)
        assert record["id"] == item["id"]
        # the messages file is the same conversation with the path as written
        assert [m["role"] for m in record["messages"]] == [m["role"] for m in rebuilt]
        ids = [r["id"] for r in item["spatialforge"]]
        assert [t["value"] for t in item["conversations"][1::2]] == [by_id[i]["answer"] for i in ids]


def test_llava_file(demo, tmp_path):
    out, report = _export(demo, tmp_path, "llava", group_by_image=True)
    items = json.loads((out / "llava.json").read_text())
    assert report.samples == len(items) == 12
    for item in items:
        assert set(item) == {"id", "image", "conversations", "spatialforge"}
        conv = item["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n") and _image_tags(conv, "value") == 1
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"])
        stem = os.path.splitext(os.path.basename(item["image"]))[0]
        assert {r["image_id"] for r in item["spatialforge"]} == {stem}


def test_internvl_meta_and_lines(demo, tmp_path):
    out, report = _export(demo, tmp_path, "internvl", media_root=demo["images"])
    meta = json.loads((out / "internvl_meta.json").read_text())
    (name, entry), = meta.items()
    assert set(entry) == {"root", "annotation", "data_augment", "max_dynamic_patch", "repeat_time", "length"}
    assert entry["annotation"].endswith("jsonl") and os.path.isfile(entry["annotation"])
    lines = [json.loads(x) for x in open(entry["annotation"])]
    assert entry["length"] == len(lines) == report.samples == report.rows
    assert entry["repeat_time"] == 1 and entry["data_augment"] is False
    for item in lines[:40]:
        path = os.path.join(entry["root"], item["image"])  # internvl_chat_finetune.get_image_path
        assert not os.path.isabs(item["image"]) and os.path.isfile(path)
        with Image.open(path) as im:
            assert (item["width"], item["height"]) == im.size
        conv = item["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and _image_tags(conv, "value") == 1
        row = item["spatialforge"][0]
        for obj in row["objects"]:  # InternVL boxes: 0..1000 in <box>[[...]]</box>
            box = "<box>[[{}, {}, {}, {}]]</box>".format(*obj["bbox"])
            if row["task"] == "referring":
                assert box in conv[0]["value"]
        outside = re.sub(r"<box>\[\[[\d, ]+\](, \[[\d, ]+\])*\]</box>", "", conv[0]["value"])
        assert not re.search(r"\[\d+, \d+, \d+, \d+\]", outside)  # no box left in the stored syntax


def test_llamafactory_dataset_info_and_sharegpt_rules(demo, tmp_path):
    out, report = _export(demo, tmp_path, "llamafactory", group_by_image=True, media_root=demo["images"])
    info = json.loads((out / "dataset_info.json").read_text())
    (name, attr), = info.items()
    assert attr["formatting"] == "sharegpt"
    assert attr["columns"] == {"messages": "messages", "images": "images"}
    tags = attr["tags"]
    data = json.loads((out / attr["file_name"]).read_text())
    assert len(data) == report.samples == 12
    for example in data:  # converter.SharegptDatasetConverter + mm_plugin._validate_messages
        msgs = example[attr["columns"]["messages"]]
        accept = ((tags["user_tag"],), (tags["assistant_tag"],))
        assert all(m[tags["role_tag"]] in accept[k % 2] for k, m in enumerate(msgs)) and len(msgs) % 2 == 0
        images = example[attr["columns"]["images"]]
        assert sum(m[tags["content_tag"]].count("<image>") for m in msgs) == len(images) == 1
        assert os.path.isfile(os.path.join(os.path.realpath(demo["images"]), images[0]))  # media_dir join


def test_swift_file(demo, tmp_path):
    out, report = _export(demo, tmp_path, "swift", group_by_image=True)
    lines = [json.loads(x) for x in (out / "swift.jsonl").read_text().splitlines()]
    assert len(lines) == report.samples == 12
    for item in lines:
        text = "".join(m["content"] for m in item["messages"])
        assert text.count("<image>") == len(item["images"]) == 1 and os.path.isfile(item["images"][0])
        objects = item["objects"]
        assert objects["bbox_type"] == "norm1" and text.count("<bbox>") == len(objects["bbox"]) == len(objects["ref"])
        stored = [o for r in item["spatialforge"] for o in r["objects"]]
        boxes = {tuple(o["bbox"]) for o in stored}
        assert {tuple(int(round(v * 1000)) for v in b) for b in objects["bbox"]} <= boxes


def test_every_format_is_tested():
    assert set(EXPORT_FORMATS) == {"qwen-vl", "llava", "internvl", "llamafactory", "swift"}


def test_qwen25_boxes_in_the_file_are_pixels_of_the_resized_image(demo, tmp_path):
    """Demo images are 320x240: the Qwen2.5-VL processor resizes them to 308x252 (round(320/28)=11,
    round(240/28)=9 times 28), so a stored x of 500 is written round(0.5 * 308) = 154."""
    out, _ = _export(demo, tmp_path, "qwen-vl", model_family="qwen2.5-vl")
    items = json.loads((out / "qwen_vl.json").read_text())
    checked = 0
    for item in items:
        row = item["spatialforge"][0]
        q, a = item["conversations"][0]["value"], item["conversations"][1]["value"]
        with Image.open(item["image"]) as im:
            assert im.size == (row["width"], row["height"]) == (320, 240)
        pixels = [[round(b[0] * 308 / 1000), round(b[1] * 252 / 1000), round(b[2] * 308 / 1000), round(b[3] * 252 / 1000)]
                  for b in (o["bbox"] for o in row["objects"])]
        if row["task"] == "grounding":
            assert [d["bbox_2d"] for d in json.loads(a)] == pixels
            checked += 1
        elif row["task"] == "referring":
            assert "[{}, {}, {}, {}]".format(*pixels[0]) in q
            checked += 1
        assert "0-1000" not in q
    assert checked >= 20
