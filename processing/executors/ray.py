"""Run a pipeline on Ray Data: the same steps, shards, files and markers as the local executor.

The input is cut into the same ``num_shards`` shards as :class:`~..executor.LocalExecutor`, and each
shard into *chunks* of ``chunk_size`` consecutive records (the model steps' batch size, so a chunk
holds exactly the batches the local executor runs). A chunk is one row of the Ray Dataset; the
steps between the reader and the writer run on chunks as ``map_batches`` stages::

    from_items(shards) -> flat_map(read shard into chunks)                      CPU actors
      -> map_batches(prepare: decode + preprocess)  -> map_batches(model step)   CPU actors, then
         ...                                                                     model actors with
      -> map_batches(relations, tasks, verification)                             num_gpus each
      -> driver: the shard's chunks are gathered; the writer writes its Parquet files, then its marker

Model steps (:class:`~..base.BatchStep`) are callable classes: the weights load once per actor,
``concurrency`` actors per model step, each with ``num_gpus``. Their CPU work
(:meth:`~..base.BatchStep.prepare_batch`: JPEG decoding, the image processor) runs in a CPU stage
before them, so the accelerator does not wait on it. The writer runs on the driver, shard by shard
as each one's last chunk arrives: Parquet files and markers are written by one process, markers
appear while the run goes on, and a killed run resumes from its finished shards, exactly like a
local one. The images, the annotations and the output folder (the readers read the annotations the
driver converted into it) must be at the same paths on every node.

Same inputs and seed give the same Parquet bytes as the local executor: every record of a shard
meets the same steps in the same batches (cut by the record's position, :data:`~..base.SEQ_KEY`),
and the writer orders rows by id.

Example:
    >>> executor = RayExecutor(partial(build_steps, cfg), out_dir="out/", num_shards=64,
    ...                        address="auto", concurrency=4, num_gpus=1)        # doctest: +SKIP
    >>> stats = executor.run()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import math
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..base import PREPARED_KEY, SEQ_KEY, BatchStep, Step, number_records, require
from .local import (
    LocalExecutor,
    ShardFailed,
    _reset,
    finish_shard,
    merge_reports,
    shard_summary,
    step_counters,
    step_report,
)
from ..output.parquet import VALIDATED_ROWS

logger = logging.getLogger(__name__)

_KEEP_META = (SEQ_KEY, VALIDATED_ROWS)  # what the writer still reads of record.meta


@dataclass
class Chunk:
    """Consecutive records of one shard, and the stats of every step that ran on them."""

    shard: int
    index: int
    records: list
    reports: list[tuple[int, dict[str, Any], dict[str, dict[str, int]]]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # files the steps read for these records (resume checks)
    chunks: int = -1  # on the shard's last chunk: how many chunks the shard has


def _row(chunk: Chunk) -> dict[str, Any]:
    return {"shard": chunk.shard, "chunk": chunk.index, "payload": pickle.dumps(chunk, protocol=5)}


def chunk_size_of(steps: list[Step]) -> int:
    """Records per chunk: a multiple of every batch step's batch size (their batches never straddle chunks)."""
    sizes = [s.batch_size for s in steps if isinstance(s, BatchStep)]
    return math.lcm(*sizes) if sizes else 64


class _ReadShard:
    """``flat_map`` callable: one shard's records, read by the pipeline's first step, as chunks."""

    def __init__(self, build: Callable[[], list[Step]], num_shards: int, chunk_size: int) -> None:
        self.reader = build()[0]
        self.num_shards, self.chunk_size = num_shards, chunk_size

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        shard = int(row["shard"])
        try:
            yield from self._read(shard)
        except Exception as err:
            raise ShardFailed(shard, err) from err

    def _read(self, shard: int) -> Iterator[dict[str, Any]]:
        _reset(self.reader)
        chunk = Chunk(shard, 0, [])
        for record in number_records(self.reader.run([], rank=shard, world_size=self.num_shards)):
            index = record.meta[SEQ_KEY] // self.chunk_size
            if index != chunk.index:
                yield _row(chunk)
                chunk = Chunk(shard, index, [])
            chunk.records.append(record)
        chunk.reports.append((0, step_report(self.reader), step_counters(self.reader)))
        chunk.inputs.extend(getattr(self.reader, "inputs_used", None) or ())
        chunk.chunks = chunk.index + 1
        yield _row(chunk)


class _RunSteps:
    """``map_batches`` callable: steps ``positions`` of the pipeline on each chunk of the batch.

    ``prepare=True``: only :meth:`~..base.BatchStep.prepare_batch` of one batch step, each batch's
    result left on its first record for the model stage that follows. Model steps set up (load
    weights) when the actor starts, once.
    """

    def __init__(self, build: Callable[[], list[Step]], positions: list[int], num_shards: int,
                 prepare: bool = False, last: bool = False) -> None:
        steps = build()
        self.steps = [(i, steps[i]) for i in positions]
        self.num_shards, self.prepare, self.last = num_shards, prepare, last
        for _, step in self.steps:
            if prepare:
                step.setup_inputs()  # the image processor; the weights load in the model stage only
                continue
            if isinstance(step, BatchStep):
                step.prefetch = 0  # the CPU stage before this one prepared the batches
            step.setup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        payloads = [self._chunk(pickle.loads(blob)) for blob in batch["payload"]]
        return {"shard": batch["shard"], "chunk": batch["chunk"], "payload": payloads}

    def _chunk(self, chunk: Chunk) -> bytes:
        try:
            return self._run(chunk)
        except Exception as err:
            raise ShardFailed(chunk.shard, err) from err

    def _run(self, chunk: Chunk) -> bytes:
        for i, step in self.steps:
            if self.prepare:
                for records in step.batches(chunk.records):
                    records[0].meta[PREPARED_KEY] = step.prepare_batch(records)
                continue
            _reset(step)
            chunk.records = list(step.run(chunk.records, rank=chunk.shard, world_size=self.num_shards))
            chunk.reports.append((i, step_report(step), step_counters(step)))
            chunk.inputs.extend(getattr(step, "inputs_used", None) or ())
        if self.last:  # the driver needs rows, drops and boxes only: leave depth maps and images here
            for record in chunk.records:
                record.depth = None
                record.meta = {k: record.meta[k] for k in _KEEP_META if k in record.meta}
        return pickle.dumps(chunk, protocol=5)


@dataclass
class Stage:
    """One ``map_batches`` stage of the plan: the step positions it runs, and on what."""

    positions: list[int]
    prepare: bool = False  # the CPU half of a batch step
    model: bool = False  # a model step: concurrency / num_gpus of the model actors


def plan(steps: list[Step]) -> list[Stage]:
    """The stages between the reader (first step) and the writer (last): consecutive plain steps
    share one CPU stage; a batch step gets a CPU stage for its ``prepare_batch`` (when it has one)
    and a model stage."""
    stages: list[Stage] = []
    for i in range(1, len(steps) - 1):
        step = steps[i]
        if isinstance(step, BatchStep):
            if step.prepares:
                stages.append(Stage([i], prepare=True))
            stages.append(Stage([i], model=True))
        elif stages and not stages[-1].prepare and not stages[-1].model:
            stages[-1].positions.append(i)
        else:
            stages.append(Stage([i]))
    return stages


class RayExecutor(LocalExecutor):
    """Run a pipeline on Ray Data over ``num_shards`` shards; resumable; same output as :class:`LocalExecutor`.

    Args (besides those of :class:`~..executor.LocalExecutor`, but ``workers``):
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); ``None``
            joins the instance this process already started, or starts a local one.
        concurrency: actors per model step (each loads the weights once).
        num_gpus: GPUs per model actor (``0.5`` packs two actors on a GPU; ``0`` runs on CPUs).
        cpu_concurrency: actors per CPU stage (reading, decoding / preprocessing, tasks).
        num_cpus: CPUs per actor; ``None``: 1, or less where the cluster has fewer CPUs than the
            plan has actors (every actor of the plan must fit at once or the run would wait forever).
        chunk_size: records per Dataset row; ``None``: a multiple of the batch steps' batch sizes.
    """

    def __init__(self, build: Callable[[], list[Step]], out_dir: str | os.PathLike, *, address: str | None = None,
                 concurrency: int = 1, num_gpus: float = 0.0, cpu_concurrency: int = 1, num_cpus: float | None = None,
                 chunk_size: int | None = None, **kwargs: Any) -> None:
        kwargs.pop("workers", None)
        super().__init__(build, out_dir, **kwargs)
        for name, value in (("concurrency", concurrency), ("cpu_concurrency", cpu_concurrency)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {num_gpus!r}")
        if num_cpus is not None and num_cpus <= 0:
            raise ValueError(f"num_cpus must be > 0, got {num_cpus!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self.address, self.concurrency, self.num_gpus = address, concurrency, num_gpus
        self.cpu_concurrency, self.num_cpus, self.chunk_size = cpu_concurrency, num_cpus, chunk_size

    def _connect(self):
        ray = require("ray", "ray", "'ray[data]'")
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        return ray

    def _run_todo(self, todo: list[int], shard_bar, record_bar) -> None:
        self._started_ns = time.time_ns()  # inputs read from here on are recorded with this time
        ray = self._connect()
        try:
            self._run_dataset(ray, todo, shard_bar, record_bar)
        finally:
            if getattr(self, "_owns_ray", False):
                ray.shutdown()
                self._owns_ray = False

    def _dataset(self, ray, steps: list[Step], todo: list[int]):
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # this executor's own bars report
        context.raise_original_map_exception = True  # a step's ShardFailed, not Ray's wrapper of its text
        stages = plan(steps)
        chunk_size = self.chunk_size or chunk_size_of(steps)
        sizes = [s.batch_size for s in steps if isinstance(s, BatchStep)]
        if any(chunk_size % size for size in sizes):
            raise ValueError(f"chunk_size={chunk_size} must be a multiple of every batch step's batch_size, got {sizes}")
        actors = self.cpu_concurrency * (1 + sum(not s.model for s in stages)) + self.concurrency * sum(s.model for s in stages)
        num_cpus = self.num_cpus
        if num_cpus is None:
            cluster = float(ray.cluster_resources().get("CPU", 1))
            num_cpus = min(1.0, cluster / actors)
        cpu_pool = ActorPoolStrategy(size=self.cpu_concurrency)
        ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
        ds = ds.flat_map(_ReadShard, fn_constructor_args=(self.build, self.num_shards, chunk_size),
                         compute=cpu_pool, num_cpus=num_cpus)
        for k, stage in enumerate(stages):
            args = (self.build, stage.positions, self.num_shards, stage.prepare, k == len(stages) - 1)
            if stage.model:
                compute, gpus = ActorPoolStrategy(size=self.concurrency), self.num_gpus
            else:
                compute, gpus = ActorPoolStrategy(size=self.cpu_concurrency), 0
            ds = ds.map_batches(_RunSteps, fn_constructor_args=args, batch_size=1, batch_format="numpy",
                                compute=compute, num_cpus=num_cpus, num_gpus=gpus or None,
                                udf_modifying_row_count=False)
        return ds

    def _run_dataset(self, ray, todo: list[int], shard_bar, record_bar) -> None:
        steps = self.build()  # here: the writer, and the plan (no model is loaded on the driver)
        ds = self._dataset(ray, steps, todo)
        got: dict[int, dict[int, Chunk]] = {}
        try:
            for row in ds.iter_rows():
                chunk: Chunk = pickle.loads(row["payload"])
                got.setdefault(chunk.shard, {})[chunk.index] = chunk
                record_bar.update(len(chunk.records))
                mine = got[chunk.shard]
                last = next((c.chunks for c in mine.values() if c.chunks >= 0), None)
                if last is not None and len(mine) == last:
                    stats = self._finish(steps, chunk.shard, [mine[i] for i in range(last)])
                    del got[chunk.shard]
                    shard_bar.update(1)
                    shard_bar.set_postfix(last_rows=sum(stats["rows_per_task"].values()))
        except Exception as err:
            failed = _shard_failure(err)
            if failed is None:
                raise
            raise ShardFailed(failed.shard, failed.error) from failed.error
        logger.debug("Ray Data stats of the run:\n%s", ds.stats())
        if got:  # cannot happen unless a stage lost rows: say so rather than leave shards silently undone
            raise RuntimeError(f"shards {sorted(got)} did not receive all their chunks")

    def _finish(self, steps: list[Step], shard: int, chunks: list[Chunk]) -> dict[str, Any]:
        """Write one shard (its writer runs here) and its marker; return its stats."""
        writer = steps[-1]
        records = [r for c in chunks for r in c.records]
        by_position: dict[int, list] = {}
        for c in chunks:
            for i, report, counters in c.reports:
                by_position.setdefault(i, []).append((report, counters))
        _reset(writer)
        try:
            for _ in writer.run(records, rank=shard, world_size=self.num_shards):
                pass
        except Exception as err:
            raise ShardFailed(shard, err) from err
        reports, counters = [], []
        for i in range(len(steps) - 1):
            parts = by_position.get(i) or [(step_report(_fresh(steps[i])), {})]
            reports.append(merge_reports([r for r, _ in parts]))
            merged: dict[str, dict[str, int]] = {}
            for _, c in parts:
                for key, counts in c.items():
                    for k, n in counts.items():
                        merged.setdefault(key, {})[k] = merged.get(key, {}).get(k, 0) + n
            counters.append(merged)
        reports.append(step_report(writer))
        counters.append(step_counters(writer))
        no_objects = sum(not len(r.objects) for r in records)
        stats = shard_summary(shard, self.num_shards, reports, counters, len(records), no_objects,
                              sum(r["seconds"] for r in reports))
        used = [p for c in chunks for p in c.inputs]
        return finish_shard(self.out_dir, shard, stats, writer.written, used, self._started_ns)


def _fresh(step: Step) -> Step:
    _reset(step)
    return step


def _shard_failure(err: BaseException | None) -> ShardFailed | None:
    """The :class:`ShardFailed` a stage raised, found in the chain of errors Ray wraps it in."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ShardFailed):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None
