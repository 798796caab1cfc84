"""Values of the input data never name files outside the folders given (one rule, one wording).

A real image is planted outside ``--images`` where each bad value points; the generator must count
the entry as ``path_outside_root`` (or raise under ``on_bad_input="error"``), keep every other row as
a run without that entry has it, and never open anything outside: an audit hook
(``sys.addaudithook``) in the test process and in every worker logs each open under the planted
folder.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import _audit
import numpy as np
import pyarrow.parquet as pq
import pytest
from _pipeline_fixtures import make_coco_scene, save_image

from spatialforge.builders.paths import PathOutsideRoot, contained
from spatialforge.builders.resolvers import check_image_id
from spatialforge.processing.executors.local import ShardFailed
from spatialforge.processing.perception.depth_files import DepthFromFiles
from spatialforge.processing.pipeline import GenerateConfig, generate
from spatialforge.processing.readers import BadInputError
from spatialforge.processing.records import Record


def _rows(out: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((out / "data").rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[row["id"]] = row
    return rows


def _coco(tmp_path: Path, bad: str | None) -> dict:
    paths = make_coco_scene(tmp_path / "in", 3)
    if bad is not None:
        doc = json.loads(paths["annotations"].read_text())
        doc["images"].append({"id": 99, "file_name": bad, "width": 96, "height": 64})
        doc["annotations"].append({"id": 999, "image_id": 99, "category_id": 1, "bbox": [4, 4, 20, 20]})
        paths["annotations"].write_text(json.dumps(doc))
    return {"source": "objects365", "annotations": str(paths["annotations"]), "images": str(paths["images"]),
            "depth_dir": str(paths["depth"])}


def _openimages(tmp_path: Path, bad: str | None) -> dict:
    root = tmp_path / "in" / "oi"
    for i in range(3):
        save_image(root / f"00{i}a.jpg", 60, 40, seed=i)
    (tmp_path / "in" / "classes.csv").write_text("/m/01,Cup\n/m/02,Lamp\n")
    rows = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"]
    for image_id in [f"00{i}a" for i in range(3)] + ([bad] if bad is not None else []):
        rows += [f"{image_id},xclick,/m/01,1,0.1,0.3,0.2,0.6,0,0,0,0,0", f"{image_id},xclick,/m/02,1,0.5,0.9,0.1,0.5,0,0,0,0,0"]
    (tmp_path / "in" / "boxes.csv").write_text("\n".join(rows) + "\n")
    return {"source": "openimages", "annotations": str(tmp_path / "in" / "boxes.csv"), "images": str(root),
            "class_descriptions": str(tmp_path / "in" / "classes.csv")}


def _pixmo(tmp_path: Path, bad: str | None) -> dict:
    root = tmp_path / "in" / "px"
    shas = [f"{i}" * 64 for i in range(1, 4)]
    for i, sha in enumerate(shas):
        save_image(root / sha, 50, 40, seed=i)
    rows = [{"image_url": f"u{i}", "image_sha256": sha, "label": "dog", "points": [{"x": 10, "y": 5}, {"x": 30, "y": 20}]}
            for i, sha in enumerate(shas + ([bad] if bad is not None else []))]
    (tmp_path / "in" / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"source": "pixmo", "annotations": str(tmp_path / "in" / "rows.jsonl"), "images": str(root)}


FIXTURES = {"coco": (_coco, "file_name", ".jpg"), "openimages": (_openimages, "ImageID", ".jpg"), "pixmo": (_pixmo, "image_sha256", ".jpg")}
# (fixture, the bad value with {outside} for the planted folder, image root relative to tmp_path)
CASES = [
    ("coco", "../../outside/evil.jpg"),
    ("coco", "v2/../../../outside/evil.jpg"),
    ("coco", "{outside}/evil.jpg"),
    ("openimages", "../../outside/evil"),
    ("openimages", "{outside}/evil"),
    ("pixmo", "../../outside/evil"),
    ("pixmo", "{outside}/evil"),
]


def _plant(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    save_image(outside / "evil.jpg", 96, 64, seed=7)
    np.save(outside / "evil.npy", np.ones((64, 96), np.float32))
    return outside


def _generate_audited(cfg: GenerateConfig, outside: Path, log: Path) -> dict:
    """``generate(cfg)`` with every open under ``outside`` logged, here and in the workers; asserts there was none."""
    _audit.watch([str(outside)], str(log))
    try:
        stats = generate(cfg, build=partial(_audit.build_audited, cfg, [str(outside)], str(log)))
    finally:
        _audit.stop()
    assert _audit.seen(str(log)) == []
    return stats


@pytest.mark.parametrize(("kind", "bad"), CASES)
def test_generate_counts_a_path_outside_the_images_and_never_opens_it(tmp_path, kind, bad):
    outside = _plant(tmp_path)
    bad = bad.format(outside=outside)
    make, field, _ = FIXTURES[kind]
    ref = GenerateConfig(out=str(tmp_path / "ref"), progress=False, num_shards=2, **make(tmp_path / "r", None))
    generate(ref)
    inputs = make(tmp_path, bad)
    cfg = GenerateConfig(out=str(tmp_path / "out"), progress=False, num_shards=2, **inputs)
    stats = _generate_audited(cfg, outside, tmp_path / "opens.log")
    reader = stats["steps"][0]
    assert reader["dropped"].get("path_outside_root") == 1
    assert {k: v for k, v in reader["dropped"].items() if k != "path_outside_root"} == \
        json.loads((tmp_path / "ref" / "stats.json").read_text())["steps"][0]["dropped"]
    want = {rid: row for rid, row in _rows(tmp_path / "ref").items()}
    assert _rows(tmp_path / "out") == want and want  # every other row as without the bad entry

    err = GenerateConfig(out=str(tmp_path / "err"), progress=False, num_shards=2, on_bad_input="error", **inputs)
    with pytest.raises(ShardFailed) as info:
        generate(err)
    root = inputs["images"]
    assert isinstance(info.value.__cause__, BadInputError)
    assert str(info.value.__cause__).endswith(f"{field} {bad!r} would escape the image root {root!r} [path_outside_root]")


def test_workers_never_open_a_planted_file_either(tmp_path):
    """The same check with two worker processes, each with its own audit hook."""
    outside = _plant(tmp_path)
    inputs = _coco(tmp_path, "../../outside/evil.jpg")
    log = str(tmp_path / "opens.log")
    Path(log).touch()
    cfg = GenerateConfig(out=str(tmp_path / "out"), progress=False, num_shards=2, workers=2, **inputs)
    stats = generate(cfg, build=partial(_audit.build_audited, cfg, [str(outside)], log))
    assert stats["steps"][0]["dropped"] == {"path_outside_root": 1}
    assert stats["records_out"] == 3 and _audit.seen(log) == []


@pytest.mark.parametrize("policy", ["skip", "warn", "error"])
@pytest.mark.parametrize("image_id", ["../outside/evil", "a/../../outside/evil", "{outside}/evil"])
def test_depth_files_refuse_an_id_outside_the_depth_folder(tmp_path, policy, image_id):
    outside = _plant(tmp_path)
    image_id = image_id.format(outside=outside)
    depth = tmp_path / "depth"
    depth.mkdir()
    np.save(depth / "fine.npy", np.ones((4, 6), np.float32))
    step = DepthFromFiles(depth, on_bad_input=policy)
    ok = step.process(Record(source="hf", image_id="fine", width=6, height=4))
    assert ok is not None and ok.depth.values.shape == (4, 6)
    record = Record(source="hf", image_id=image_id, width=96, height=64)
    message = f"image_id {image_id!r} would escape the depth root {str(depth)!r}"
    if policy == "error":
        with pytest.raises(BadInputError, match="path_outside_root") as info:
            step.process(record)
        assert message in str(info.value)
    else:
        assert step.process(record) is None
        assert step.stats.dropped == {"path_outside_root": 1}


@pytest.mark.parametrize(("name", "escapes"), [
    ("a.jpg", False), ("sub/a.jpg", False), ("a..b.jpg", False), ("..a", False),
    ("../a", True), ("a/../../b", True), ("a\\..\\b", True), ("/etc/passwd", True), ("\\\\host\\x", True),
    ("C:evil", True), ("a\x00b", True),
])
def test_one_rule_for_generator_and_loader(tmp_path, name, escapes):
    root = str(tmp_path)
    if not escapes:
        assert contained(name, root) == name
        check_image_id(name, root)
        return
    with pytest.raises(PathOutsideRoot) as gen:
        contained(name, root)
    with pytest.raises(ValueError) as load:
        check_image_id(name, root)
    wording = f"image_id {name!r} would escape the image root {root!r}"
    assert str(gen.value) == wording and str(load.value).startswith(wording + "; refused under every")


def test_hf_ids_never_name_depth_files_outside_the_depth_folder(tmp_path):
    """source=hf: ids come from the dataset's column; the depth lookup by id refuses one that escapes."""
    import io

    import datasets
    from PIL import Image

    outside = _plant(tmp_path)
    depth = tmp_path / "depth"
    depth.mkdir()
    ids = ["a", "b", "../outside/evil"]
    for image_id in ids[:2]:
        np.save(depth / f"{image_id}.npy", np.ones((20, 30), np.float32))

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (30, 20), "red").save(buf, "JPEG")
        return buf.getvalue()

    features = datasets.Features({"image_id": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"image_id": ids, "image": [{"bytes": jpeg(), "path": None} for _ in ids]},
                               features=features).save_to_disk(tmp_path / "ds")
    cfg = GenerateConfig(source="hf", annotations=str(tmp_path / "ds"), depth_dir=str(depth), out=str(tmp_path / "out"),
                         num_shards=1, progress=False)
    stats = _generate_audited(cfg, outside, tmp_path / "opens.log")
    assert [s["name"] for s in stats["steps"]][:2] == ["reader", "depth_files"]
    assert stats["steps"][1]["dropped"] == {"path_outside_root": 1}
    assert stats["steps"][1]["records_out"] == 2
