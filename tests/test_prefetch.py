"""Model steps prepare (decode, preprocess) the next batches while one runs: same output, input wait reported."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from _model_fixtures import make_model_scene, model_config

from spatialforge.processing.base import SEQ_KEY, BatchStep, run_pipeline
from spatialforge.processing.executors.local import merge_stats
from spatialforge.processing.pipeline import generate
from spatialforge.processing.records import Record


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").rglob("*")) if p.is_file()}


class Doubler(BatchStep):
    """Prepares ``2 * width`` per record in ``prepare_batch`` (noting the thread), writes it in ``process_batch``."""

    name = "doubler"

    def __init__(self, batch_size: int, prefetch: int, fail_at: int | None = None) -> None:
        super().__init__(batch_size)
        self.prefetch, self.fail_at = prefetch, fail_at
        self.batches_seen: list[list[str]] = []
        self.prepare_threads: set[int] = set()

    def prepare_batch(self, records):
        self.prepare_threads.add(threading.get_ident())
        if self.fail_at is not None and any(r.width == self.fail_at for r in records):
            raise ValueError(f"cannot prepare width {self.fail_at}")
        return [2 * r.width for r in records]

    def process_batch(self, records, prepared=None):
        prepared = prepared if prepared is not None else self.prepare_batch(records)
        self.batches_seen.append([r.image_id for r in records])
        for record, value in zip(records, prepared):
            record.meta["doubled"] = value
        return [None if r.width == 3 else r for r in records]  # drops one record, counted as records_out - 1


def _records(n: int) -> list[Record]:
    return [Record(source="t", image_id=f"i{k}", width=k + 1, height=1) for k in range(n)]


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_keeps_batches_order_and_values(prefetch):
    step = Doubler(batch_size=2, prefetch=prefetch)
    out = list(step.run(_records(7)))
    assert [r.image_id for r in out] == ["i0", "i1", "i3", "i4", "i5", "i6"]
    assert [r.meta["doubled"] for r in out] == [2, 4, 8, 10, 12, 14]
    assert step.batches_seen == [["i0", "i1"], ["i2", "i3"], ["i4", "i5"], ["i6"]]
    assert (step.stats.records_in, step.stats.records_out) == (7, 6)
    assert step.stats.wait_seconds is not None and step.stats.wait_seconds >= 0
    assert "input_wait_seconds" in step.stats.to_dict()
    if prefetch:  # prepared in the pool, not in this thread
        assert threading.get_ident() not in step.prepare_threads
    else:
        assert step.prepare_threads == {threading.get_ident()}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_error_while_preparing_reaches_the_caller(prefetch):
    step = Doubler(batch_size=2, prefetch=prefetch, fail_at=5)
    with pytest.raises(ValueError, match="cannot prepare width 5"):
        list(step.run(_records(8)))


def test_batches_are_cut_by_position_so_an_upstream_drop_does_not_shift_them():
    records = _records(6)
    for k, record in enumerate(records):
        record.meta[SEQ_KEY] = k
    del records[2]  # dropped by an earlier step
    step = Doubler(batch_size=2, prefetch=0)
    list(step.run(records))
    assert step.batches_seen == [["i0", "i1"], ["i3"], ["i4", "i5"]]


def test_run_pipeline_numbers_the_first_steps_records():
    class Source(BatchStep):
        name = "source"

        def run(self, records, rank=0, world_size=1):
            yield from _records(3)

    out = list(run_pipeline([Source()], []))
    assert [r.meta[SEQ_KEY] for r in out] == [0, 1, 2]


def test_merged_stats_sum_the_input_wait():
    shard = {"shard": 0, "num_shards": 2, "records_in": 1, "records_out": 1, "seconds": 1.0, "rows_per_task": {},
             "candidate_drops": {}, "steps": [{"name": "m", "records_in": 1, "records_out": 1, "seconds": 0.5,
                                               "input_wait_seconds": 0.25, "dropped": {}}]}
    merged = merge_stats([shard, {**shard, "shard": 1}])
    assert merged["steps"][0]["input_wait_seconds"] == 0.5
    assert merged["steps"][0]["seconds"] == 1.0


@pytest.fixture(scope="module")
def model_scene(tmp_path_factory):
    return make_model_scene(tmp_path_factory.mktemp("model-scene"))


@pytest.mark.slow
def test_model_steps_give_the_same_bytes_with_and_without_prefetch(model_scene, tmp_path):
    plain = generate(model_config(model_scene, tmp_path / "plain", prefetch=0))
    ahead = generate(model_config(model_scene, tmp_path / "ahead", prefetch=2))
    assert plain["rows_total"] > 0
    assert _files(tmp_path / "plain") == _files(tmp_path / "ahead")
    for stats in (plain, ahead):
        steps = {s["name"]: s for s in stats["steps"]}
        for name in ("detection", "depth_model", "pose"):
            assert steps[name]["records_in"] == steps[name]["records_out"] == 8, steps[name]
            assert steps[name]["input_wait_seconds"] >= 0, steps[name]
        assert "input_wait_seconds" not in steps["tasks"]
    assert plain["candidate_drops"] == ahead["candidate_drops"]
