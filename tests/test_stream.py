"""The training stream: seeded shuffle, DataLoader workers, DDP ranks, resume, images gone bad mid-stream."""

from __future__ import annotations

import logging
import os
import socket

import pyarrow.parquet as pq
import pytest
import torch
from _loader_fixtures import make_jpeg
from torchdata.stateful_dataloader import StatefulDataLoader

from spatialforge.builders.schema import arrow_schema, make_id, validate_row
from spatialforge.processing.training.stream import TrainingStream

N_IMAGES, N_PER_IMAGE = 10, 3


def _row(image_id: str, k: int, task: str = "counting") -> dict:
    row = {
        "id": make_id("mine", image_id, task, k),
        "source": "mine",
        "image_id": image_id,
        "width": 32,
        "height": 24,
        "task": task,
        "question": f"How many boxes, question {k}?",
        "answer": str(k + 1),
        "objects": [{"label": "box", "bbox": [10, 20, 300, 400]}],
        "fact": None,
        "count": k + 1 if task == "counting" else None,
        "verification": {"checks": [], "depth_margin": None, "box_gap": None, "overlap": None, "min_box_area": None,
                         "facing_score": None, "depth_source": None, "box_source": "annotation"},
    }
    return row


@pytest.fixture
def data(tmp_path):
    """10 images x 3 rows (adjacent, as the writer keeps them: sorted by id) in 2 Parquet shards."""
    images = tmp_path / "images"
    rows = []
    for i in range(N_IMAGES):
        iid = f"img{i:03d}"
        make_jpeg(str(images / f"{iid}.png"), (32, 24), (2, 2, 10, 10), fmt="PNG")
        rows += [_row(iid, k) for k in range(N_PER_IMAGE)]
    for r in rows:
        validate_row(r)
    folder = tmp_path / "ann" / "data" / "counting"
    folder.mkdir(parents=True)
    half = len(rows) // 2 + 1  # the cut falls inside one image's rows
    for k, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa_table(part), folder / f"train-{k:05d}-of-00002.parquet")
    return {"annotations": str(tmp_path / "ann"), "image_dirs": {"mine": str(images)}, "rows": rows,
            "index_dir": str(tmp_path / "index")}


def pa_table(rows):
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=arrow_schema())


def _stream(data, **kw) -> TrainingStream:
    kw.setdefault("shuffle_buffer", 7)
    return TrainingStream(data["annotations"], "counting", data["image_dirs"], index_dir=data["index_dir"], **kw)


def _ids(samples) -> list[str]:
    return [r["id"] for s in samples for r in s["rows"]]


def _keep(batch):
    return batch


@pytest.mark.parametrize("group_by_image", [False, True])
def test_every_row_once_shuffled_and_the_same_for_the_same_seed(data, group_by_image):
    a = list(_stream(data, seed=1, group_by_image=group_by_image))
    b = list(_stream(data, seed=1, group_by_image=group_by_image))
    c = list(_stream(data, seed=2, group_by_image=group_by_image))
    truth = [r["id"] for r in data["rows"]]
    assert sorted(_ids(a)) == sorted(truth)
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c) and _ids(a) != truth
    for s in a:  # every sample is one image with its decoded pixels
        assert {r["image_id"] for r in s["rows"]} == {os.path.splitext(os.path.basename(s["image_path"]))[0]}
        assert s["image"].size == (32, 24) and s["image"].getpixel((5, 5)) == (255, 0, 0)
    if group_by_image:  # 3 adjacent rows per image (one process reads the cut image's rows in a row)
        assert [len(s["rows"]) for s in a] == [N_PER_IMAGE] * N_IMAGES


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("group_by_image", [False, True])
def test_stop_mid_epoch_and_resume_gives_exactly_the_remaining_rows(data, num_workers, group_by_image):
    def loader(stream):
        return StatefulDataLoader(stream, batch_size=2, num_workers=num_workers, collate_fn=_keep)

    full = _ids(s for batch in loader(_stream(data, seed=3, group_by_image=group_by_image)) for s in batch)
    first = loader(_stream(data, seed=3, group_by_image=group_by_image))
    seen = []
    for k, batch in enumerate(first):
        seen += _ids(batch)
        if k == 3:
            break
    state = first.state_dict()
    del first  # a new process would start from the saved state alone
    resumed = loader(_stream(data, seed=3, group_by_image=group_by_image))
    resumed.load_state_dict(state)
    rest = _ids(s for batch in resumed for s in batch)
    assert len(seen) >= 4 and rest
    assert seen + rest == full  # nothing lost, nothing twice, same order as the run never stopped
    assert sorted(full) == sorted(r["id"] for r in data["rows"])


def test_dataloader_workers_read_disjoint_shards(data):
    stream = _stream(data, seed=0)
    assert stream.num_shards == 2
    per_worker: dict[int, list[str]] = {}
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, collate_fn=_keep,
                                         worker_init_fn=None)
    for s in loader:
        shard = 0 if s["rows"][0]["id"] in {r["id"] for r in data["rows"][:16]} else 1
        per_worker.setdefault(shard, []).append(s["id"])
    ids = [i for v in per_worker.values() for i in v]
    assert len(ids) == len(set(ids)) == len(data["rows"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_rows_together_all_and_check_only_their_images(data, world_size, caplog):
    parts, checked = [], []
    with caplog.at_level(logging.WARNING):
        for rank in range(world_size):
            stream = _stream(data, seed=0, rank=rank, world_size=world_size)
            parts.append(_ids(stream))
            checked.append(stream.image_stats["rows"])
    flat = [i for p in parts for i in p]
    assert all(parts) and len(flat) == len(set(flat)) == len(data["rows"])
    # each rank checked the images of its own rows only (the pre-scan counts them), not all 30
    assert checked == [len(p) for p in parts]
    cut = [r for r in caplog.records if "not a multiple of world_size" in r.getMessage()]
    assert bool(cut) == (world_size == 3)  # 2 files: re-sharded for 3 ranks, not for 2
    if world_size == 3:  # by row ranges: each rank reads a third of each file (16 and 14 rows)
        assert [len(p) for p in parts] == [5 + 4, 5 + 5, 6 + 5]


def _ddp_rank(rank: int, world_size: int, port: int, data: dict, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        stream = _stream(data, seed=0)  # rank and world size come from torch.distributed
        out.put((rank, stream.rank, _ids(stream)))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ddp_ranks_read_disjoint_rows_that_together_are_all(data):
    ctx = torch.multiprocessing.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, data, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [(r, seen_rank) for r, seen_rank, _ in got] == [(0, 0), (1, 1)]
    a, b = got[0][2], got[1][2]
    assert a and b and not set(a) & set(b)
    assert sorted(a + b) == sorted(r["id"] for r in data["rows"])


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:  # header intact, pixel data cut: passes a header check, fails to decode
        f.write(data[: len(data) // 2])


def test_image_that_goes_bad_mid_stream_is_counted_and_skipped(data, tmp_path):
    stream = _stream(data, seed=0, group_by_image=True, on_missing_image="skip")
    images = data["image_dirs"]["mine"]
    _truncate(os.path.join(images, "img004.png"))  # after the pre-scan: as if it broke during training
    os.remove(os.path.join(images, "img007.png"))
    ids = _ids(stream)
    bad = {r["id"] for r in data["rows"] if r["image_id"] in ("img004", "img007")}
    assert sorted(ids) == sorted(r["id"] for r in data["rows"] if r["id"] not in bad)
    assert stream.counts["corrupt"] == 1 and stream.counts["missing"] == 1
    assert stream.counts["corrupt_rows"] + stream.counts["missing_rows"] == len(bad)


def test_image_that_goes_bad_mid_stream_fails_naming_it_under_error(data):
    stream = _stream(data, seed=0, on_missing_image="error")
    _truncate(os.path.join(data["image_dirs"]["mine"], "img002.png"))
    with pytest.raises(OSError, match=r"img002\.png.*corrupt"):
        list(stream)


def test_bad_arguments_are_named(data):
    with pytest.raises(ValueError, match="shuffle_buffer"):
        _stream(data, shuffle_buffer=-1)
    with pytest.raises(ValueError, match="rank"):
        _stream(data, rank=2, world_size=2)


@pytest.fixture
def two_tasks(data, tmp_path):
    """The counting rows plus 2 grounding rows per image, written as the pipeline does: shard k of
    each task from the same images (images 0-4 in shard 0, 5-9 in shard 1)."""
    rows = {"counting": [], "grounding": []}
    for i in range(N_IMAGES):
        iid = f"img{i:03d}"
        rows["counting"] += [_row(iid, k) for k in range(N_PER_IMAGE)]
        rows["grounding"] += [_row(iid, k, "grounding") for k in range(2)]
    root = tmp_path / "ann2"
    for task, task_rows in rows.items():
        folder = root / "data" / task
        folder.mkdir(parents=True)
        half = len(task_rows) // 2
        for k, part in enumerate((task_rows[:half], task_rows[half:])):
            pq.write_table(pa_table(part), folder / f"shard-{k:05d}-of-00002.parquet")
    return dict(data, annotations=str(root), rows=rows["counting"] + rows["grounding"])


def _all(data, **kw):
    kw.setdefault("shuffle_buffer", 4)
    return TrainingStream(data["annotations"], "all", data["image_dirs"], index_dir=data["index_dir"], **kw)


def test_grouping_across_tasks_gives_one_sample_per_image(two_tasks):
    samples = list(_all(two_tasks, seed=0, group_by_image=True))
    assert len(samples) == N_IMAGES
    for s in samples:  # every row of the image, its tasks in the order of the schema's TASKS
        assert [r["task"] for r in s["rows"]] == ["grounding"] * 2 + ["counting"] * N_PER_IMAGE
        assert len({r["image_id"] for r in s["rows"]}) == 1
    assert sorted(_ids(samples)) == sorted(r["id"] for r in two_tasks["rows"])
    flat = list(_all(two_tasks, seed=0))  # one row per sample: the files one by one, as before
    assert sorted(_ids(flat)) == sorted(_ids(samples)) and len(flat) == len(two_tasks["rows"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_grouped_across_tasks_resumes_exactly(two_tasks, num_workers):
    def loader():
        return StatefulDataLoader(_all(two_tasks, seed=5, group_by_image=True), batch_size=1,
                                  num_workers=num_workers, collate_fn=_keep)

    full = _ids(s for b in loader() for s in b)
    first, seen = loader(), []
    for k, batch in enumerate(first):
        seen += _ids(batch)
        if k == 3:
            break
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert seen + _ids(s for b in resumed for s in b) == full


@pytest.mark.parametrize("world_size", [2, 3])
def test_grouped_across_tasks_under_ddp(two_tasks, world_size, caplog):
    with caplog.at_level(logging.WARNING):
        parts = [_ids(_all(two_tasks, group_by_image=True, rank=r, world_size=world_size)) for r in range(world_size)]
    flat = [i for p in parts for i in p]
    assert all(parts) and len(flat) == len(set(flat)) == len(two_tasks["rows"])
    fallback = [r for r in caplog.records if "group_tasks off" in r.getMessage()]
    assert bool(fallback) == (world_size == 3)  # 2 shard names: grouped for 2 ranks; 3 ranks read files one by one


def test_images_come_on_the_grid_the_boxes_refer_to(tmp_path):
    from _loader_fixtures import make_dataset

    fx = make_dataset(str(tmp_path / "fx"))
    rotated = next(im for im in fx.images if im.orientation == 6)
    stream = TrainingStream(fx.annotations, "counting", fx.image_dirs, index_dir=str(tmp_path / "index"))
    samples = {s["rows"][0]["image_id"]: s for s in stream}
    assert len(samples) == len(fx.images)
    for im in fx.images:  # EXIF-transposed size, and the red rectangle where the rows' boxes say
        got = samples[im.image_id]["image"]
        x1, y1, x2, y2 = im.rect
        assert got.size == (im.width, im.height) and got.mode == "RGB"
        assert all(abs(a - b) < 40 for a, b in zip(got.getpixel(((x1 + x2) // 2, (y1 + y2) // 2)), (255, 0, 0)))
    assert samples[rotated.image_id]["image"].size == (rotated.width, rotated.height)
