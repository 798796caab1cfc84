"""Bad inputs, one table: each case asserts its exact outcome.

An outcome is one of
* ``Refused(code, *names)``: the CLI exits with ``code`` and one line on stderr naming the flag /
  file / id (``names``), no traceback;
* ``Raises(type, *names)``: the library raises ``type`` with a message naming them;
* ``Dropped(reason, ids)``: the offending rows / images / depth maps are dropped and counted under
  ``reason`` (exactly ``len(ids)`` of them), and every other row or record is the one of the clean
  input, unchanged.

The truth every case is compared with comes from the fixtures (rows written by hand, scenes with
known boxes), never from the code under test.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from _loader_fixtures import make_dataset, make_jpeg, write_shards
from _pipeline_fixtures import make_coco_scene
from spatialforge.builders.schema import DATA_DIR, TASKS, arrow_schema


class Outcome:
    """``Refused(code, *names)``, ``Raises(type, *names)``, ``Dropped(reason, *ids)``: ``head`` and ``names``."""

    def __init__(self, head: Any, *names: str) -> None:
        self.head, self.names = head, names

    def __repr__(self) -> str:
        return f"{type(self).__name__}{(self.head, *self.names)!r}"


class Refused(Outcome):
    pass


class Raises(Outcome):
    pass


class Dropped(Outcome):
    pass


@dataclass
class Accepted:
    """Nothing dropped: every row / record equals the clean input's."""


def _cli(args: list[str], env: dict | None = None):
    from spatialforge.processing.cli import _register, app

    _register()
    return CliRunner().invoke(app, args, env=env)


def _assert_refused(res, want: Refused, tmp: Path) -> None:
    assert res.exit_code == want.head, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.stderr
    for name in want.names:
        assert name.format(tmp=tmp) in errors[0], (name, errors[0])


# == 1. Loaded shards ==============================================================================
def _rows_of(builder) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "image"} for row in builder.as_streaming_dataset(split="train")]


def _first_shard(folder: str, task: str) -> str:
    return sorted(str(p) for p in (Path(folder) / DATA_DIR / task).glob("*.parquet"))[0]


def _rewrite(path: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or arrow_schema()), path)


def _edit_row(fx, task: str, edit: Callable[[dict], None]) -> str:
    """Apply ``edit`` to the first row of ``task``'s first shard; return that row's id."""
    path = _first_shard(fx.annotations, task)
    rows = pq.read_table(path).to_pylist()
    edit(rows[0])
    _rewrite(path, rows)
    return rows[0]["id"]


def _drop_column(fx, task: str, column: str) -> str:
    path = _first_shard(fx.annotations, task)
    pq.write_table(pq.read_table(path).drop_columns([column]), path)
    return path


def _retype_column(fx, task: str, column: str, values: Callable[[int], list]) -> str:
    path = _first_shard(fx.annotations, task)
    table = pq.read_table(path)
    i = table.column_names.index(column)
    pq.write_table(table.set_column(i, column, pa.array(values(table.num_rows))), path)
    return path


def _move_row(fx, src: str, dst: str) -> str:
    """Put the first row of ``src``'s first shard into ``dst``'s first shard (a row in the wrong folder)."""
    s, d = _first_shard(fx.annotations, src), _first_shard(fx.annotations, dst)
    rows_s, rows_d = pq.read_table(s).to_pylist(), pq.read_table(d).to_pylist()
    moved = rows_s.pop(0)
    _rewrite(s, rows_s)
    _rewrite(d, rows_d + [moved])
    return moved["id"]


def _as_jsonl(fx, prefix: bytes = b"", line: bytes | None = None) -> str:
    """The dataset as JSON lines (``prefix`` before the first byte; ``line`` appended to grounding)."""
    folder = os.path.join(fx.root, "jsonl")
    write_shards(folder, fx.rows, fmt="jsonl", shards_per_task=1)
    if prefix or line is not None:
        path = sorted((Path(folder) / DATA_DIR / "grounding").glob("*.jsonl"))[0]
        data = prefix + path.read_bytes() + (line + b"\n" if line is not None else b"")
        path.write_bytes(data)
    fx.annotations = folder
    return str(path) if prefix or line is not None else folder


def _garbage(fx, data: bytes) -> str:
    path = _first_shard(fx.annotations, "counting")
    Path(path).write_bytes(data)
    return path


def _empty_task_folder(fx) -> str:
    for p in (Path(fx.annotations) / DATA_DIR / "grounding").glob("*"):
        p.unlink()
    return "data/grounding/"


def _bbox(k: int, value: int) -> Callable[[dict], None]:
    def edit(row: dict) -> None:
        row["objects"][0]["bbox"][k] = value

    return edit


def _set(**values: Any) -> Callable[[dict], None]:
    def edit(row: dict) -> None:
        for key, value in values.items():
            if key.startswith("fact."):
                row["fact"][key[5:]] = value
            else:
                row[key] = value

    return edit


def _swap_x(row: dict) -> None:
    box = row["objects"][0]["bbox"]
    box[0], box[2] = max(box[0], box[2]) + 1, min(box[0], box[2])


# (case, setup(fx) -> {"id": dropped id} or {"file": path}, config kwargs, outcome)
SHARD_CASES: list[tuple[str, Callable, dict, Any]] = [
    ("corrupt_parquet", lambda fx: {"file": _garbage(fx, b"not parquet at all" * 20)}, {},
     Raises(ValueError, "{file}", "not a readable Parquet file")),
    ("empty_parquet", lambda fx: {"file": _garbage(fx, b"")}, {}, Raises(ValueError, "{file}", "an empty file")),
    ("parquet_cut_short", lambda fx: {"file": _garbage(fx, Path(_first_shard(fx.annotations, "counting")).read_bytes()[:-40])},
     {}, Raises(ValueError, "{file}", "not a readable Parquet file")),
    ("no_question_column", lambda fx: {"file": _drop_column(fx, "counting", "question")}, {},
     Raises(ValueError, "{file}", "'question'")),
    ("no_answer_column", lambda fx: {"file": _drop_column(fx, "near_far", "answer")}, {},
     Raises(ValueError, "{file}", "'answer'")),
    ("no_image_id_column", lambda fx: {"file": _drop_column(fx, "grounding", "image_id")}, {},
     Raises(ValueError, "{file}", "'image_id'")),
    ("no_width_column", lambda fx: {"file": _drop_column(fx, "referring", "width")}, {},
     Raises(ValueError, "{file}", "'width'")),
    ("no_height_column", lambda fx: {"file": _drop_column(fx, "left_right", "height")}, {},
     Raises(ValueError, "{file}", "'height'")),
    ("width_as_text", lambda fx: {"file": _retype_column(fx, "counting", "width", lambda n: ["wide"] * n)}, {},
     Raises(ValueError, "{file}", "column 'width'", "objects365-")),
    ("objects_as_text", lambda fx: {"file": _retype_column(fx, "grounding", "objects", lambda n: ["a box"] * n)}, {},
     Raises(ValueError, "{file}", "column 'objects'")),
    ("jsonl_not_utf8", lambda fx: {"file": _as_jsonl(fx, line='{"id": "caf\xe9"}'.encode("latin-1"))}, {},
     Raises(ValueError, "{file}:", "not UTF-8")),
    ("jsonl_not_json", lambda fx: {"file": _as_jsonl(fx, line=b"{oops")}, {}, Raises(ValueError, "{file}:", "not a JSON object")),
    ("jsonl_a_list", lambda fx: {"file": _as_jsonl(fx, line=b"[1, 2]")}, {}, Raises(ValueError, "{file}:", "got list")),
    ("jsonl_with_bom", lambda fx: {"folder": _as_jsonl(fx, prefix=b"\xef\xbb\xbf")}, {}, Accepted()),
    ("empty_task_folder", lambda fx: {"folder": _empty_task_folder(fx)}, {"config_name": "grounding"},
     Raises(FileNotFoundError, "data/grounding/ holds no .parquet or .jsonl file")),
    ("no_data_folder", lambda fx: {"x": shutil.rmtree(Path(fx.annotations) / DATA_DIR)}, {},
     Raises(FileNotFoundError, "there is no data/ folder")),
    ("mistyped_local_folder", lambda fx: {"x": setattr(fx, "annotations", fx.annotations + "z")}, {},
     Raises(FileNotFoundError, "annotationsz", "does not exist (a local path, not a Hub repo id)")),
    ("task_mismatch_error", lambda fx: {"id": _move_row(fx, "near_far", "grounding")}, {},
     Raises(ValueError, "task_mismatch: 1 rows, column task", "data/grounding/", "{id}")),
    ("task_mismatch_skip", lambda fx: {"id": _move_row(fx, "near_far", "grounding")}, {"on_invalid_row": "skip"},
     Dropped("task_mismatch", "{id}")),
    ("bbox_above_1000_error", lambda fx: {"id": _edit_row(fx, "grounding", _bbox(2, 1001))}, {},
     Raises(ValueError, "bbox_out_of_range: 1 rows, column objects.bbox", "{id}", "on_invalid_row")),
    ("bbox_above_1000_skip", lambda fx: {"id": _edit_row(fx, "grounding", _bbox(2, 1001))}, {"on_invalid_row": "skip"},
     Dropped("bbox_out_of_range", "{id}")),
    ("bbox_negative_skip", lambda fx: {"id": _edit_row(fx, "referring", _bbox(1, -4))}, {"on_invalid_row": "skip"},
     Dropped("bbox_out_of_range", "{id}")),
    ("bbox_inverted_skip", lambda fx: {"id": _edit_row(fx, "counting", _swap_x)}, {"on_invalid_row": "skip"},
     Dropped("bbox_out_of_range", "{id}")),
    ("bbox_of_the_person_warn", lambda fx: {"id": _edit_row(fx, "perspective", lambda r: r["objects"][1]["bbox"].__setitem__(3, 5000))},
     {"on_invalid_row": "warn"}, Dropped("bbox_out_of_range", "{id}")),
    ("width_zero_skip", lambda fx: {"id": _edit_row(fx, "grounding", _set(width=0))}, {"on_invalid_row": "skip"},
     Dropped("bad_size", "{id}")),
    ("height_negative_skip", lambda fx: {"id": _edit_row(fx, "near_far", _set(height=-3))}, {"on_invalid_row": "skip"},
     Dropped("bad_size", "{id}")),
    ("width_zero_error", lambda fx: {"id": _edit_row(fx, "grounding", _set(width=0))}, {},
     Raises(ValueError, "bad_size: 1 rows, column width/height", "{id}")),
    ("question_null_skip", lambda fx: {"id": _edit_row(fx, "counting", _set(question=None))}, {"on_invalid_row": "skip"},
     Dropped("null_question", "{id}")),
    ("answer_null_error", lambda fx: {"id": _edit_row(fx, "left_right", _set(answer=None))}, {},
     Raises(ValueError, "null_answer: 1 rows, column answer", "{id}")),
    ("unknown_task_skip", lambda fx: {"id": _edit_row(fx, "referring", _set(task="depth"))}, {"on_invalid_row": "skip"},
     Dropped("unknown_task", "{id}")),
    ("fact_null_skip", lambda fx: {"id": _edit_row(fx, "near_far", _set(fact=None))}, {"on_invalid_row": "skip"},
     Dropped("bad_fact", "{id}")),
    ("fact_index_outside_skip", lambda fx: {"id": _edit_row(fx, "left_right", _set(**{"fact.subject": 5}))},
     {"on_invalid_row": "skip"}, Dropped("bad_fact", "{id}")),
    ("count_negative_skip", lambda fx: {"id": _edit_row(fx, "counting", _set(count=-1))}, {"on_invalid_row": "skip"},
     Dropped("bad_count", "{id}")),
    ("count_null_error", lambda fx: {"id": _edit_row(fx, "counting", _set(count=None))}, {},
     Raises(ValueError, "bad_count: 1 rows, column count", "{id}")),
]


@pytest.mark.parametrize("case, setup, config, want", SHARD_CASES, ids=[c[0] for c in SHARD_CASES])
def test_loaded_shards(tmp_path, case, setup, config, want, caplog):
    from spatialforge_10m import SpatialForge10M

    fx = make_dataset(tmp_path, n_per_source=1, shards_per_task=1)
    named = {k: v for k, v in (setup(fx) or {}).items() if isinstance(v, str)}
    kwargs = {"config_name": "all", "annotations": fx.annotations, "image_dirs": fx.image_dirs,
              "cache_dir": str(tmp_path / "cache"), **config}
    task = kwargs["config_name"]
    if isinstance(want, Raises):
        with pytest.raises(want.head) as err:
            _rows_of(SpatialForge10M(**kwargs))
        for name in want.names:
            assert name.format(**named) in str(err.value), (name, str(err.value))
        return
    builder = SpatialForge10M(**kwargs)
    with caplog.at_level(logging.WARNING):
        rows = _rows_of(builder)
    dropped = {name.format(**named) for name in want.names} if isinstance(want, Dropped) else set()
    expected = [r for r in fx.rows_of(task) if r["id"] not in dropped]
    assert sorted(rows, key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])
    stats = builder.image_stats
    if isinstance(want, Dropped):
        assert stats["invalid_rows_by_reason"] == {want.head: len(dropped)}
        assert stats["dropped_rows"] == len(dropped) and stats["dropped_rows_by_reason"] == {want.head: len(dropped)}
        assert any(want.head in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    else:
        assert stats["invalid_rows"] == 0 and stats["dropped_rows"] == 0


# == 2. Images the loader checks ===================================================================
def _append_after_eoi(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"\x00APP-TRAILER" * 40)  # bytes after the end marker, as phones write them


def _corrupt_scan(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    sos = data.find(b"\xff\xda")
    data[sos + 40 : sos + 50] = b"\xff\xc4" * 5  # a table marker inside the entropy-coded scan
    Path(path).write_bytes(bytes(data))


IMAGE_CASES = [
    ("bytes_after_jpeg_end", _append_after_eoi, "skip", Accepted()),
    ("corrupt_scan_skip", _corrupt_scan, "skip", Dropped("corrupt", "{image_id}")),
    ("corrupt_scan_error", _corrupt_scan, "error", Raises(FileNotFoundError, "{image_id}", "corrupt")),
    ("corrupt_scan_warn", _corrupt_scan, "warn", Dropped("corrupt", "{image_id}")),
]


@pytest.mark.parametrize("case, damage, policy, want", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_loader_images_decoded_where_the_cheap_check_cannot_tell(tmp_path, case, damage, policy, want):
    from spatialforge_10m import SpatialForge10M

    fx = make_dataset(tmp_path, n_per_source=1, shards_per_task=1)
    victim = next(im for im in fx.images if im.source == "openimages")  # a plain JPEG
    damage(victim.path)
    kwargs = {"config_name": "counting", "annotations": fx.annotations, "image_dirs": fx.image_dirs,
              "on_missing_image": policy, "cache_dir": str(tmp_path / "cache")}
    if isinstance(want, Raises):
        with pytest.raises(want.head) as err:
            _rows_of(SpatialForge10M(**kwargs))
        assert f"openimages/{victim.image_id}" in str(err.value) and "corrupt" in str(err.value)
        return
    builder = SpatialForge10M(**kwargs)
    rows = _rows_of(builder)
    gone = {victim.image_id} if isinstance(want, Dropped) else set()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in fx.rows_of("counting") if r["image_id"] not in gone)
    assert builder.image_stats["dropped_rows_by_reason"] == ({want.head: 1} if gone else {})


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_an_image_truncated_after_a_cached_load_is_caught_when_the_cache_is_reused(tmp_path, policy):
    from spatialforge_10m import SpatialForge10M

    fx = make_dataset(tmp_path, n_per_source=1, shards_per_task=1)
    kwargs = {"config_name": "counting", "annotations": fx.annotations, "image_dirs": fx.image_dirs,
              "on_missing_image": policy, "cache_dir": str(tmp_path / "cache")}
    first = SpatialForge10M(**kwargs)
    first.download_and_prepare()
    assert len(first.as_dataset(split="train")) == 4
    victim = next(im for im in fx.images if im.source == "openimages")
    st = os.stat(victim.path)
    data = Path(victim.path).read_bytes()
    Path(victim.path).write_bytes(data[:-20])  # truncated in place: its end marker is gone
    os.utime(victim.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    again = SpatialForge10M(**kwargs)
    again.download_and_prepare()  # the Arrow cache is reused
    if policy == "error":
        with pytest.raises(FileNotFoundError, match=victim.image_id):
            again.as_dataset(split="train")
        return
    ds = again.as_dataset(split="train")
    assert sorted(ds["id"]) == sorted(r["id"] for r in fx.rows_of("counting") if r["image_id"] != victim.image_id)
    assert again.image_stats["dropped_rows_by_reason"] == {"truncated": 1}
    row = ds[0]
    assert row["image"].size == (row["width"], row["height"])  # every served row still decodes


def test_a_16_bit_png_reaches_the_models_scaled_not_white(tmp_path):
    from spatialforge.processing.records import Record

    values = np.array([[0, 1000, 32768, 65535]] * 2, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL's convert("RGB") of this mode clips to white
    rgb = np.asarray(Record(source="t", image_id="deep", width=4, height=2, image_path=str(path)).load_image())
    assert rgb.shape == (2, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, round(1000 / 65535 * 255), round(32768 / 65535 * 255), 255]


# == 3. Depth files ===============================================================================
def _npy(dtype) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        np.save(path, np.ones((2, 4), dtype=dtype))

    return write


def _npz_named_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, depth=np.ones((2, 4), np.float32))


def _huge_header(path: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += " " * (117 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)


def _short_data(path: Path) -> None:
    np.save(path, np.ones((2, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-8])


DEPTH_CASES = [
    ("bool", _npy(bool), "skip", Dropped("depth_malformed"), "bool"),
    ("complex", _npy(np.complex64), "skip", Dropped("depth_malformed"), "complex64"),
    ("int32", _npy(np.int32), "skip", Dropped("depth_malformed"), "int32"),
    ("uint16", _npy(np.uint16), "warn", Dropped("depth_malformed"), "uint16"),
    ("strings", lambda p: np.save(p, np.array([["a"] * 4] * 2)), "skip", Dropped("depth_malformed"), "<U1"),
    ("npz_named_npy", _npz_named_npy, "skip", Dropped("depth_malformed"), ".npz archive"),
    ("huge_header", _huge_header, "skip", Dropped("depth_malformed"), "100000x100000"),
    ("huge_header_error", _huge_header, "error", Raises(Exception, "100000x100000"), "100000x100000"),
    ("int_error", _npy(np.int64), "error", Raises(Exception, "int64"), "int64"),
    ("cut_short", _short_data, "skip", Dropped("depth_malformed"), "cut short"),
    ("float16_ok", _npy(np.float16), "skip", Accepted(), ""),
]


@pytest.mark.parametrize("case, write, policy, want, detail", DEPTH_CASES, ids=[c[0] for c in DEPTH_CASES])
def test_depth_files(tmp_path, case, write, policy, want, detail, caplog):
    from spatialforge.processing.perception.depth_files import DepthFromFiles
    from spatialforge.processing.readers import BadInputError
    from spatialforge.processing.records import Record

    np.save(tmp_path / "good.npy", np.full((2, 4), 3.0, np.float32))
    write(tmp_path / "bad.npy")
    step = DepthFromFiles(tmp_path, on_bad_input=policy)
    records = [Record(source="t", image_id=i, width=4, height=2) for i in ("good", "bad")]
    if isinstance(want, Raises):
        with pytest.raises(BadInputError) as err:
            [step.process(r) for r in records]
        assert str(tmp_path / "bad.npy") in str(err.value) and detail in str(err.value)
        return
    with caplog.at_level(logging.WARNING):
        out = [step.process(r) for r in records]
    assert out[0] is not None and out[0].depth.values.tolist() == [[3.0] * 4] * 2  # the other record: unchanged
    if isinstance(want, Dropped):
        assert out[1] is None and dict(step.stats.dropped) == {want.head: 1}
        if policy == "warn":
            assert any(detail in r.getMessage() and "bad.npy" in r.getMessage() for r in caplog.records)
    else:
        assert out[1].depth.values.tolist() == [[1.0] * 4] * 2 and not step.stats.dropped


# == 4. Source annotations (COCO / Objects365) ====================================================
def _records(ann: Path, images: Path, policy: str = "skip") -> tuple[dict, Any]:
    from spatialforge.processing.readers import CocoReader

    reader = CocoReader(ann, images, source="objects365", on_bad_input=policy)
    recs = {r.image_id: (r.width, r.height, r.objects.xyxy.tolist(), list(r.objects.labels)) for r in reader.run(None, 0, 1)}
    return recs, reader


def _coco_edit(edit: Callable[[dict], Any]) -> Callable[[Path], Any]:
    def apply(ann: Path) -> Any:
        data = json.loads(ann.read_text())
        out = edit(data)
        ann.write_text(json.dumps(data))
        return out

    return apply


def _image_size(key: str, value: Any) -> Callable[[Path], Any]:
    def edit(data: dict) -> str:
        data["images"][1][key] = value
        return Path(data["images"][1]["file_name"]).stem

    return _coco_edit(edit)


def _dup_category(name: str | None) -> Callable[[Path], Any]:
    def edit(data: dict) -> None:
        first = data["categories"][0]
        data["categories"].append({"id": first["id"], "name": name or first["name"]})

    return _coco_edit(edit)


def _bom(ann: Path) -> None:
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())


def _latin1(ann: Path) -> None:
    data = json.loads(ann.read_text())
    data["categories"][0]["name"] = "caf\xe9"
    ann.write_bytes(json.dumps(data, ensure_ascii=False).encode("latin-1"))


COCO_CASES = [
    ("width_as_text", _image_size("width", "96"), "skip", Dropped("malformed_image_size", "{id}")),
    ("width_zero", _image_size("width", 0), "skip", Dropped("malformed_image_size", "{id}")),
    ("height_negative", _image_size("height", -64), "skip", Dropped("malformed_image_size", "{id}")),
    ("height_as_text_error", _image_size("height", "64px"), "error", Raises(Exception, "{id}", "'64px'", "malformed_image_size")),
    ("category_twice_two_names", _dup_category("teapot"), "skip", Raises(Exception, "category id 1", "'cup'", "'teapot'")),
    ("category_twice_two_names_error", _dup_category("teapot"), "error", Raises(Exception, "category id 1", "'teapot'")),
    ("category_twice_same_name", _dup_category(None), "error", Accepted()),
    ("json_with_bom", _bom, "error", Accepted()),
    ("json_not_utf8", _latin1, "skip", Raises(Exception, "annotations.json", "not UTF-8")),
]


@pytest.mark.parametrize("case, edit, policy, want", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_annotations(tmp_path, case, edit, policy, want):
    scene = make_coco_scene(tmp_path, 3)
    truth, _ = _records(scene["annotations"], scene["images"])
    assert len(truth) == 3
    named = {"id": edit(scene["annotations"]) or ""}
    if isinstance(want, Raises):
        with pytest.raises(want.head) as err:
            _records(scene["annotations"], scene["images"], policy)
        for name in want.names:
            assert name.format(**named) in str(err.value), (name, str(err.value))
        return
    got, reader = _records(scene["annotations"], scene["images"], policy)
    gone = {name.format(**named) for name in want.names} if isinstance(want, Dropped) else set()
    assert got == {k: v for k, v in truth.items() if k not in gone}
    assert dict(reader.stats.dropped) == ({want.head: len(gone)} if gone else {})
    assert not reader.objects_dropped  # its annotations went with the image, not counted as unknown


# == 5. The command line ==========================================================================
def _tiny_config_folder(tmp: Path, text: str | None) -> str:
    folder = tmp / "model"
    folder.mkdir(exist_ok=True)
    if text is not None:
        (folder / "config.json").write_text(text)
    return str(folder)


CLI_CASES: list[tuple[str, Callable[[Path, dict], list[str]], Any]] = [
    ("tasks_twice", lambda t, s: [*_gen(t, s), "--tasks", "grounding,counting,grounding"],
     Refused(2, "'--tasks'", "['grounding']")),
    ("detector_labels_twice", lambda t, s: [*_gen(t, s), "--detector-labels", "cup,cup"], Refused(2, "'--detector-labels'", "['cup']")),
    ("unknown_task", lambda t, s: [*_gen(t, s), "--tasks", "depth"], Refused(2, "'--tasks'", "depth")),
    ("device_gpu", lambda t, s: [*_gen(t, s), "--device", "gpu"], Refused(2, "'--device'", "'gpu'")),
    ("device_cuda_x", lambda t, s: [*_gen(t, s), "--device", "cuda:x"], Refused(2, "'--device'", "'cuda:x'")),
    ("device_that_does_not_exist", lambda t, s: [*_gen(t, s), "--device", "cuda:99", "--depth-model",
                                                 _tiny_config_folder(t, "{}")], Refused(2, "--device", "cuda:99")),
    ("depth_kind_bogus", lambda t, s: [*_gen(t, s), "--depth-kind", "meters"], Refused(2, "'--depth-kind'", "'meters'")),
    ("on_bad_input_bogus", lambda t, s: [*_gen(t, s), "--on-bad-input", "ignore"], Refused(2, "'--on-bad-input'", "'ignore'")),
    ("on_size_mismatch_bogus", lambda t, s: [*_gen(t, s), "--on-size-mismatch", "crop"], Refused(2, "'--on-size-mismatch'")),
    ("workers_zero", lambda t, s: [*_gen(t, s), "--workers", "0"], Refused(2, "'--workers'")),
    ("image_dir_missing", lambda t, s: ["generate", "--source", "objects365", "--annotations", str(s["annotations"]),
                                        "--image-dir", str(t / "nope"), "--out", str(t / "out")], Refused(2, "'--image-dir'", "nope")),
    ("annotations_missing", lambda t, s: ["generate", "--source", "objects365", "--annotations", str(t / "nope.json"),
                                          "--image-dir", str(s["images"]), "--out", str(t / "out")], Refused(2, "'--annotations'", "nope.json")),
    ("old_and_new_image_flag", lambda t, s: [*_gen(t, s), "--images", str(s["images"])], Refused(2, "--image-dir", "--images")),
    ("model_folder_missing", lambda t, s: [*_gen(t, s), "--depth-model", str(t / "models" / "depth")],
     Refused(2, "--depth-model", "no such folder")),
    ("model_folder_without_config", lambda t, s: [*_gen(t, s), "--detector", _tiny_config_folder(t, None)],
     Refused(2, "--detector", "no config.json")),
    ("model_config_broken", lambda t, s: [*_gen(t, s), "--pose-model", _tiny_config_folder(t, "{not json")],
     Refused(2, "--pose-model", "config.json")),
    ("model_hub_id_offline", lambda t, s: [*_gen(t, s), "--depth-model", "nobody-here/no-such-depth-model"],
     Refused(2, "--depth-model", "nobody-here/no-such-depth-model", "HF_HUB_OFFLINE")),
    ("out_is_a_file", lambda t, s: _gen(t, s, out=_a_file(t)), Refused(2, "{tmp}/a-file")),
    ("check_dataset_missing", lambda t, s: ["check-images"], Refused(2, "'DATASET'")),
    ("check_dataset_mistyped", lambda t, s: ["check-images", str(t / "ds") + "z"], Refused(2, "'DATASET'", "dsz", "does not exist")),
    ("check_image_dir_twice", lambda t, s: ["check-images", str(t / "ds"), "--image-dir", f"objects365={t}",
                                            "--image-dir", f"objects365={t / 'ds'}"], Refused(2, "'--image-dir'", "'objects365'", "twice")),
    ("check_unknown_source", lambda t, s: ["check-images", str(t / "ds"), "--image-dir", f"o365={t}"],
     Refused(2, "'--image-dir'", "['o365']", "objects365")),
    ("check_image_dir_syntax", lambda t, s: ["check-images", str(t / "ds"), "--image-dir", str(t)], Refused(2, "'--image-dir'", "SOURCE=DIR")),
    ("check_max_pixels_zero", lambda t, s: ["check-images", str(t / "ds"), "--max-pixels", "0"], Refused(2, "'--max-pixels'")),
    ("check_max_pixels_negative", lambda t, s: ["check-images", str(t / "ds"), "--max-pixels", "-5"], Refused(2, "'--max-pixels'")),
    ("check_missing_out_folder", lambda t, s: ["check-images", str(t / "ds"), "--missing-out", str(t / "no" / "m.txt")],
     Refused(2, "'--missing-out'", "{tmp}/no")),
    ("check_bad_task", lambda t, s: ["check-images", str(t / "ds"), "--task", "depth"], Refused(2, "'--task'", "'depth'")),
    ("check_image_check_bogus", lambda t, s: ["check-images", str(t / "ds"), "--image-check", "fast"], Refused(2, "'--image-check'")),
    ("check_invalid_rows", lambda t, s: ["check-images", _invalid_dataset(t)], Refused(2, "bbox_out_of_range: 1 rows", "bad-ds", "-counting-000")),
    ("check_images_missing", lambda t, s: ["check-images", str(t / "ds")], Refused(1, "images are missing")),
    ("index_folder_missing", lambda t, s: ["index", "--source", "objects365", "--image-dir", str(t / "nope")],
     Refused(2, "'--image-dir'", "nope")),
    ("index_old_root_and_new", lambda t, s: ["index", "--source", "x", "--image-dir", str(t), "--root", str(t)],
     Refused(2, "--image-dir", "--root")),
    ("unknown_flag", lambda t, s: ["generate", "--imagez", "x"], Refused(2, "--imagez")),
]


def _gen(tmp: Path, scene: dict, out: str | None = None) -> list[str]:
    return ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--image-dir",
            str(scene["images"]), "--out", out or str(tmp / "out"), "--num-shards", "1", "--no-progress"]


def _a_file(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a folder")
    return str(tmp / "a-file")


def _invalid_dataset(tmp: Path) -> str:
    folder = tmp / "bad-ds"
    rows = pq.read_table(_first_shard(str(tmp / "ds"), "counting")).to_pylist()
    rows[0]["objects"][0]["bbox"][2] = 1200
    write_shards(str(folder), rows, shards_per_task=1)
    return str(folder)


@pytest.mark.parametrize("case, argv, want", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli(tmp_path, monkeypatch, case, argv, want):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    scene = make_coco_scene(tmp_path / "scene", 1)
    ds = make_dataset(tmp_path / "dsroot", n_per_source=1, shards_per_task=1)
    shutil.copytree(ds.annotations, tmp_path / "ds")
    res = _cli(argv(tmp_path, scene))
    _assert_refused(res, want, tmp_path)
    if case.startswith(("model_", "device_")):
        assert not (tmp_path / "out").exists()  # refused before the run folder was created


def test_old_flag_spellings_still_work_and_warn(tmp_path, caplog):
    fx = make_dataset(tmp_path, n_per_source=1, shards_per_task=1)
    with caplog.at_level(logging.WARNING):
        res = _cli(["check-images", "--annotations", fx.annotations, "--task", "counting",
                    *[a for s, r in fx.image_dirs.items() for a in ("--image-dir", f"{s}={r}")]])
        assert res.exit_code == 0, res.output
        res = _cli(["index", "--source", "objects365", "--root", fx.image_dirs["objects365"]])
        assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "--annotations is deprecated, use DATASET" in warned and "--root is deprecated, use --image-dir" in warned


def test_the_table_holds_at_least_sixty_inputs():
    assert len(SHARD_CASES) + len(IMAGE_CASES) + 2 + 1 + len(DEPTH_CASES) + len(COCO_CASES) + len(CLI_CASES) >= 60


def test_output_of_source_hf_loads_back_with_its_images(tmp_path):
    """Images stored as bytes in a Hugging Face dataset are extracted as <image_id>.<ext>, which the
    loader's resolver finds: every row of the output comes back with its image."""
    from _pipeline_fixtures import hf_detection_dataset, jpeg_bytes

    from spatialforge_10m import SpatialForge10M

    sizes = {"kitchen-01": (64, 48), "kitchen-02": (80, 40)}
    ds = hf_detection_dataset({
        "image_id": list(sizes),
        "image": [{"bytes": jpeg_bytes(*sizes[k], c), "path": None} for k, c in zip(sizes, ("red", "blue"))],
        "objects": [{"bbox": [[2, 2, 20, 20], [30, 4, 20, 30]], "category": [0, 1]}] * 2,
    }, names=["cup", "dog"])
    ds.save_to_disk(tmp_path / "ds")
    out = tmp_path / "out"
    res = _cli(["generate", "--source", "hf", "--annotations", str(tmp_path / "ds"), "--out", str(out), "--tasks",
                "grounding,referring", "--num-shards", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    written = pq.read_table(sorted((out / DATA_DIR / "grounding").glob("*.parquet"))[0]).to_pylist()
    assert {r["image_id"] for r in written} == set(sizes)
    builder = SpatialForge10M(config_name="all", annotations=str(out), cache_dir=str(tmp_path / "cache"),
                              image_dirs={"hf": str(out / ".spatialforge" / "cache" / "images")})
    rows = list(builder.as_streaming_dataset(split="train"))
    assert builder.image_stats["dropped_rows"] == 0 and builder.image_stats["rows_affected"] == 0
    ids = [r["id"] for t in ("grounding", "referring") for f in (out / DATA_DIR / t).glob("*.parquet")
           for r in pq.read_table(f, columns=["id"]).to_pylist()]
    assert len(ids) > 0 and sorted(r["id"] for r in rows) == sorted(ids)  # every written row, none missing
    for row in rows:
        assert row["image"].size == sizes[row["image_id"]] == (row["width"], row["height"])


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_decompression_bomb_in_generate_is_counted_or_named(tmp_path, monkeypatch, policy):
    from PIL import Image as PILImage

    from spatialforge.processing.readers import BadInputError

    scene = make_coco_scene(tmp_path, 3)
    truth, _ = _records(scene["annotations"], scene["images"])
    bomb = sorted(scene["images"].rglob("*.jpg"))[1]
    PILImage.new("RGB", (960, 640), "gray").save(bomb)  # 10x the pixels of the others, same aspect
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100_000)  # 96x64 passes, 960x640 is a bomb
    if policy == "error":
        with pytest.raises(BadInputError, match=rf"{bomb.stem}.*(960x640|614400 pixels).*too_many_pixels"):
            _records(scene["annotations"], scene["images"], policy)
        return
    got, reader = _records(scene["annotations"], scene["images"], policy)
    assert got == {k: v for k, v in truth.items() if k != bomb.stem}
    assert dict(reader.stats.dropped) == {"too_many_pixels": 1}


def test_the_loader_names_an_image_dir_of_a_source_no_row_has(tmp_path, caplog):
    from spatialforge_10m import SpatialForge10M

    fx = make_dataset(tmp_path, n_per_source=1, shards_per_task=1)
    dirs = {("o365" if k == "objects365" else k): v for k, v in fx.image_dirs.items()}
    with caplog.at_level(logging.WARNING):
        builder = SpatialForge10M(config_name="counting", annotations=fx.annotations, image_dirs=dirs,
                                  on_missing_image="skip", cache_dir=str(tmp_path / "cache"))
        rows = _rows_of(builder)
    assert any("['o365']" in r.getMessage() and "objects365" in r.getMessage() for r in caplog.records)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in fx.rows_of("counting") if r["source"] != "objects365")
    assert builder.image_stats["dropped_rows_by_reason"] == {"missing": 1}


def test_generate_old_images_flag_still_works_and_warns(tmp_path, caplog):
    scene = make_coco_scene(tmp_path / "scene", 1)
    with caplog.at_level(logging.WARNING):
        res = _cli(["generate", "--source", "objects365", "--annotations", str(tmp_path / "nope.json"),
                    "--images", str(scene["images"]), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "'--annotations'" in res.stderr  # the next problem, after the old flag was taken
    assert "--images is deprecated, use --image-dir" in [r.getMessage() for r in caplog.records]


def test_the_images_progress_bar_of_generate_has_a_total(tmp_path, capfd):
    from functools import partial

    from _pipeline_fixtures import build_toy, make_folder

    from spatialforge.processing.pipeline import GenerateConfig, generate

    images = make_folder(tmp_path / "imgs", 5)
    cfg = GenerateConfig(source="folder", source_name="toy", images=str(images), out=str(tmp_path / "out"),
                         num_shards=2, progress=True)
    generate(cfg, build=partial(build_toy, cfg))
    err = capfd.readouterr().err
    assert "images: 100%" in err and "5/5" in err  # a total, so tqdm shows percent and ETA
