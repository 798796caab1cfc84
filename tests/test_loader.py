"""The SpatialForge10M builder: configs, both modes, EXIF boxes, sources of annotations, sharding."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest
from _loader_fixtures import RECT_COLOR, make_dataset, make_jpeg, rows_for_image, train_split, write_shards, FixtureImage
from datasets.distributed import split_dataset_by_node

from spatialforge.builders.schema import ALL_CONFIG, COLUMNS, TASKS, denormalize_bbox
from spatialforge_10m import SpatialForge10M, load_dataset


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sf"))


def _builder(fx, task, tmp_path, **kw):
    kw.setdefault("image_dirs", fx.image_dirs)
    return SpatialForge10M(config_name=task, annotations=fx.annotations, cache_dir=str(tmp_path / "cache"), **kw)


def _load(builder, streaming, decode=True):
    ds = train_split(builder, streaming)
    return list(ds if decode else ds.cast_column("image", datasets.Image(decode=False)))


def _plain(row):
    return {c: row[c] for c in COLUMNS}


def _path_of(fx, row):
    return next(im.path for im in fx.images if (im.source, im.image_id) == (row["source"], row["image_id"]))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("task", TASKS + (ALL_CONFIG,))
def test_every_config_yields_its_rows_with_images(fx, tmp_path, task, streaming):
    builder = _builder(fx, task, tmp_path)
    rows = _load(builder, streaming)
    want = fx.rows_of(task)
    assert [_plain(r) for r in rows] == want  # same values, same order (tasks in TASKS order, then shards)
    for r in rows:
        assert r["image"].size == (r["width"], r["height"])  # EXIF-transposed grid
        assert all(0 <= v <= 1000 for o in r["objects"] for v in o["bbox"])
    refs = _load(builder, streaming, decode=False)
    assert [r["image"] for r in refs] == [{"path": os.path.realpath(_path_of(fx, r)), "bytes": None} for r in refs]


def test_memory_and_streaming_rows_are_identical(fx, tmp_path):
    mem = _load(_builder(fx, ALL_CONFIG, tmp_path), streaming=False)
    stream = _load(_builder(fx, ALL_CONFIG, tmp_path), streaming=True)
    assert [_plain(r) for r in mem] == [_plain(r) for r in stream]
    assert all(np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) for a, b in zip(mem, stream))


def test_images_are_referenced_by_path_not_copied(fx, tmp_path):
    b = _builder(fx, "counting", tmp_path)
    b.download_and_prepare()
    ds = b.as_dataset(split="train").cast_column("image", datasets.Image(decode=False))
    assert all(im["bytes"] is None and os.path.isabs(im["path"]) for im in ds["image"])


@pytest.mark.parametrize("streaming", [False, True])
def test_box_finds_the_rectangle_on_the_exif_transposed_image(tmp_path, streaming):
    # Stored 48x80 (portrait), EXIF orientation 6 -> displayed 80x48; the rectangle is drawn on the
    # displayed grid and its box recorded there.
    root = tmp_path / "images" / "objects365"
    im = FixtureImage("objects365", "objects365_v2_00000042", str(root / "train" / "patch0" / "objects365_v2_00000042.jpg"),
                      80, 48, (50, 10, 74, 30), orientation=6)
    make_jpeg(im.path, (im.width, im.height), im.rect, im.orientation)
    write_shards(str(tmp_path / "ann"), rows_for_image(im, ("grounding",)))
    b = SpatialForge10M(config_name="grounding", annotations=str(tmp_path / "ann"),
                        image_dirs={"objects365": str(root)}, cache_dir=str(tmp_path / "cache"))
    (row,) = _load(b, streaming)
    image = np.asarray(row["image"].convert("RGB")).astype(int)
    assert image.shape == (48, 80, 3)
    x1, y1, x2, y2 = (round(v) for v in denormalize_bbox(row["objects"][0]["bbox"], row["width"], row["height"]))
    inside = image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert np.abs(inside - RECT_COLOR).max() < 40  # red inside the box
    assert np.abs(image[:, : x1 - 2] - (128, 128, 128)).max() < 40  # gray left of it


@pytest.mark.parametrize("streaming", [False, True])
def test_jsonl_annotations_give_the_same_rows(tmp_path, fx, streaming):
    from _loader_fixtures import write_shards as ws

    folder = ws(str(tmp_path / "jsonl"), fx.rows, fmt="jsonl")
    b = SpatialForge10M(config_name="left_right", annotations=folder, image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c"))
    assert [_plain(r) for r in _load(b, streaming)] == fx.rows_of("left_right")
    # a single file / glob of mixed tasks is filtered by the config's task
    b = SpatialForge10M(config_name="counting", annotations=os.path.join(folder, "data", "*", "*.jsonl"),
                        image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c2"))
    assert [_plain(r) for r in _load(b, streaming)] == fx.rows_of("counting")


def test_plain_datasets_load_dataset_reads_the_folder_without_project_code(fx):
    ds = datasets.load_dataset(fx.annotations, "near_far", split="train")
    assert ds.num_rows == len(fx.rows_of("near_far"))
    assert sorted(ds["id"]) == sorted(r["id"] for r in fx.rows_of("near_far"))
    default = datasets.load_dataset(fx.annotations, split="train")  # the "all" config is the default
    assert default.num_rows == len(fx.rows)


def test_split_dataset_by_node_gives_disjoint_shards_covering_all_rows(fx, tmp_path):
    ds = _builder(fx, ALL_CONFIG, tmp_path).as_streaming_dataset(split="train")
    assert ds.num_shards == 12  # 6 tasks x 2 shards
    parts = [[r["id"] for r in split_dataset_by_node(ds, rank=k, world_size=3)] for k in range(3)]
    assert all(parts)
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == len(fx.rows)
    assert set(flat) == {r["id"] for r in fx.rows}


def _keep(batch):
    return batch


@pytest.mark.slow
def test_torch_dataloader_two_workers_yield_every_row_once(fx, tmp_path):
    torch = pytest.importorskip("torch")
    ds = _builder(fx, ALL_CONFIG, tmp_path).as_streaming_dataset(split="train").remove_columns("image")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=_keep)
    ids = [r["id"] for batch in loader for r in batch]
    assert len(ids) == len(fx.rows)
    assert sorted(ids) == sorted(r["id"] for r in fx.rows)


def test_load_dataset_one_liner(fx, tmp_path):
    ds = load_dataset(fx.annotations, task="perspective", split="train", image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c"))
    assert isinstance(ds, datasets.Dataset) and ds["id"] == [r["id"] for r in fx.rows_of("perspective")]
    it = load_dataset(fx.annotations, "perspective", "train", image_dirs=fx.image_dirs, streaming=True)
    assert isinstance(it, datasets.IterableDataset) and [r["id"] for r in it] == ds["id"]


def test_cache_follows_the_content_of_the_inputs(fx, tmp_path):
    b1 = _builder(fx, "referring", tmp_path)
    b2 = _builder(fx, "referring", tmp_path)
    assert b1.cache_dir == b2.cache_dir
    b1.download_and_prepare()
    b2.download_and_prepare()  # reuses the cache: the counts come from the file kept beside it
    assert SpatialForge10M(config_name="referring", annotations=fx.annotations, image_dirs=fx.image_dirs,
                           cache_dir=str(tmp_path / "cache")).image_stats["rows"] == len(fx.rows_of("referring"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_missing_image": "ignore"}, "on_missing_image must be one of .* got 'ignore'"),
        ({"image_dirs": {"pixmo": "/nonexistent/dir"}}, "image_dirs\\['pixmo'\\] must be an existing folder, got '/nonexistent/dir'"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"max_image_pixels": -5}, "max_image_pixels must be a positive int or None, got -5"),
    ],
)
def test_config_rejects_bad_values_naming_them(fx, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatialForge10M(config_name="counting", annotations=fx.annotations, cache_dir=str(tmp_path / "c"), **kwargs)


def test_unknown_task_is_named():
    from spatialforge.builders.config import SpatialForgeConfig

    with pytest.raises(ValueError, match="got 'depth'"):
        SpatialForgeConfig(name="x", task="depth")


# -- empty results --------------------------------------------------------------------------------
def _empty_task_folder(tmp_path, fx):
    """Shards of every task but ``perspective``, which has one Parquet shard with the schema and no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spatialforge.builders.schema import arrow_schema

    folder = write_shards(str(tmp_path / "ann"), [r for r in fx.rows if r["task"] != "perspective"])
    os.makedirs(os.path.join(folder, "data", "perspective"))
    pq.write_table(arrow_schema().empty_table(), os.path.join(folder, "data", "perspective", "train-00000-of-00001.parquet"))
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_task_with_an_empty_shard_loads_as_an_empty_dataset(fx, tmp_path, streaming):
    from spatialforge.builders.schema import features_with_image

    folder = _empty_task_folder(tmp_path, fx)
    b = SpatialForge10M(config_name="perspective", annotations=folder, image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c"))
    ds = train_split(b, streaming)
    if not streaming:
        assert ds.num_rows == 0
    assert ds.features == features_with_image()
    assert list(ds) == []
    assert b.image_stats["rows"] == 0 and b.dropped_rows == 0
    # the other tasks of the same folder are unaffected
    b = SpatialForge10M(annotations=folder, image_dirs=fx.image_dirs, cache_dir=str(tmp_path / "c"))
    rows = _load(b, streaming)
    assert [_plain(r) for r in rows] == [r for r in fx.rows if r["task"] != "perspective"]
