"""Pipeline steps: each maps an iterator of records to an iterator of records.

A pipeline is a plain list of steps. Executors (local processes, Ray Data) run the same list over
shards of the input, selected by ``rank`` / ``world_size``. Each role has one method to override:

* :class:`Step.process` for a step that handles one record at a time (return ``None`` to drop the
  record; count why with ``record.drop(reason)`` or :meth:`Step.count`);
* :class:`BatchStep.process_batch` for model steps that run batches (weights load once per worker in
  :meth:`BatchStep.setup`, which executors call lazily on first use); the CPU work before the model
  (decoding, preprocessing) may go into :meth:`BatchStep.prepare_batch`, which runs ahead of the
  model in a small thread pool (``prefetch``) or in a CPU stage of its own (Ray Data).

Example:
    >>> class Upper(Step):
    ...     name = "upper"
    ...     def process(self, record):
    ...         record.meta["seen"] = True
    ...         return record
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .records import Record


@dataclass
class StepStats:
    """Counts and timings of one step on one shard; merge with ``+``."""

    name: str
    records_in: int = 0
    records_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    wait_seconds: float | None = None  # batch steps: time the step waited for its next batch's input

    def __add__(self, other: StepStats) -> StepStats:
        waits = [w for w in (self.wait_seconds, other.wait_seconds) if w is not None]
        return StepStats(
            self.name,
            self.records_in + other.records_in,
            self.records_out + other.records_out,
            self.seconds + other.seconds,
            self.dropped + other.dropped,
            sum(waits) if waits else None,
        )

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "seconds": round(self.seconds, 6),
            "dropped": dict(sorted(self.dropped.items())),
        }
        if self.wait_seconds is not None:
            out["input_wait_seconds"] = round(self.wait_seconds, 6)
        return out


def require(module: str, extra: str, package: str | None = None):
    """Import an optional heavy dependency, or fail saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is needed here but is not installed: pip install 'spatialforge[{extra}]'"
            f" (or pip install {package or module})"
        ) from err


class Step:
    """One stage of the pipeline. Subclasses override :meth:`process` (or :meth:`run`)."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def setup(self) -> None:
        """Load heavy state (models) once per worker; called before the first record."""

    def count(self, reason: str, n: int = 1) -> None:
        """Count records this step dropped whole (not candidates inside a record)."""
        self.stats.dropped[reason] += n

    def process(self, record: Record) -> Record | None:
        raise NotImplementedError

    def run(self, records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
        self.setup()
        for record in records:
            self.stats.records_in += 1
            start = time.perf_counter()
            out = self.process(record)
            self.stats.seconds += time.perf_counter() - start
            if out is not None:
                self.stats.records_out += 1
                yield out


SEQ_KEY = "_seq"
"""``record.meta`` key: the record's position in its shard, as the first step (the reader) yields it.
Batches are cut by it (``seq // batch_size``), so a record dropped upstream leaves its batch one
shorter instead of shifting every later batch: every executor forms the same batches."""

PREPARED_KEY = "_prepared"
"""``record.meta`` key on a batch's first record: the batch's :meth:`BatchStep.prepare_batch` result,
when a separate stage (Ray Data's CPU map) prepared it; the step then uses it instead of preparing."""


class BatchStep(Step):
    """A step that works on batches of records (model inference). Override :meth:`process_batch`.

    Steps whose CPU work before the model can run apart from it (decoding JPEGs, the image
    processor) put it into :meth:`prepare_batch` and take its result in ``process_batch(records,
    prepared)``. With ``prefetch > 0`` the next ``prefetch`` batches are prepared in a thread pool
    while the current one runs, so the accelerator does not wait on decoding; the output is the
    same. ``stats.wait_seconds`` is the time the step waited for input: pulling records from the
    step before it, and preparing batches (inline, or what the pool had not finished yet).
    """

    batch_size: int = 8
    prefetch: int = 0  # batches prepared ahead in threads (0: prepared inline, just before the model runs)

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__()
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            self.batch_size = batch_size

    def prepare_batch(self, records: list[Record]) -> Any:
        """CPU work on a batch before the model (decode, preprocess); may run in another thread or process.

        Must not change the step's own counters (return what to count; ``process_batch`` counts
        it) nor anything but the batch's records. Default: nothing to prepare.
        """
        return None

    def setup_inputs(self) -> None:
        """Load what :meth:`prepare_batch` needs (an image processor, not the weights). Default: :meth:`setup`."""
        self.setup()

    @property
    def prepares(self) -> bool:
        """Whether this step overrides :meth:`prepare_batch`."""
        return type(self).prepare_batch is not BatchStep.prepare_batch

    def process_batch(self, records: list[Record], prepared: Any = None) -> list[Record | None]:
        raise NotImplementedError

    def process(self, record: Record) -> Record | None:
        return self.process_batch([record])[0]

    def batches(self, records: Iterable[Record]) -> Iterator[list[Record]]:
        """Consecutive records with the same ``seq // batch_size`` (:data:`SEQ_KEY`; position in
        ``records`` where a record has none)."""
        batch: list[Record] = []
        key = None
        for i, record in enumerate(records):
            k = record.meta.get(SEQ_KEY, i) // self.batch_size
            if batch and k != key:
                yield batch
                batch = []
            batch.append(record)
            key = k
        if batch:
            yield batch

    def run(self, records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
        self.setup()
        if self.stats.wait_seconds is None:
            self.stats.wait_seconds = 0.0
        batches = self.batches(records)
        source = self._prefetched(batches) if self.prefetch > 0 and self.prepares else self._inline(batches)
        while True:
            start = time.perf_counter()
            try:
                batch, prepared = next(source)
            except StopIteration:
                return
            finally:
                self.stats.wait_seconds += time.perf_counter() - start
            yield from self._flush(batch, prepared)

    def _inline(self, batches: Iterator[list[Record]]) -> Iterator[tuple[list[Record], Any]]:
        for batch in batches:
            prepared = None
            if self.prepares:
                prepared = batch[0].meta.pop(PREPARED_KEY, None)
                if prepared is None:
                    prepared = self.prepare_batch(batch)
            yield batch, prepared

    def _prefetched(self, batches: Iterator[list[Record]]) -> Iterator[tuple[list[Record], Any]]:
        # Records are pulled here (this thread: upstream steps never run concurrently); only
        # prepare_batch runs in the pool, on batches this thread does not touch until their turn.
        from concurrent.futures import ThreadPoolExecutor

        pending: deque = deque()
        pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix=f"{self.name}-prefetch")
        try:
            for batch in batches:
                ready = batch[0].meta.pop(PREPARED_KEY, None)
                pending.append((batch, ready if ready is not None else pool.submit(self.prepare_batch, batch)))
                if len(pending) > self.prefetch:
                    yield self._take(pending)
            while pending:
                yield self._take(pending)
        finally:
            for _, job in pending:
                if hasattr(job, "cancel"):
                    job.cancel()
            pool.shutdown(wait=True)

    @staticmethod
    def _take(pending: deque) -> tuple[list[Record], Any]:
        batch, job = pending.popleft()
        return batch, job.result() if hasattr(job, "result") else job

    def _flush(self, batch: list[Record], prepared: Any = None) -> Iterator[Record]:
        self.stats.records_in += len(batch)
        start = time.perf_counter()
        outs = self.process_batch(batch, prepared) if self.prepares else self.process_batch(batch)
        self.stats.seconds += time.perf_counter() - start
        for out in outs:
            if out is not None:
                self.stats.records_out += 1
                yield out


def number_records(records: Iterable[Record]) -> Iterator[Record]:
    """Set :data:`SEQ_KEY` (the position in ``records``) on each record."""
    for i, record in enumerate(records):
        record.meta[SEQ_KEY] = i
        yield record


def run_pipeline(steps: list[Step], records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
    """Chain ``steps`` lazily over ``records``; the first step's records are numbered (:data:`SEQ_KEY`)."""
    stream: Iterable[Record] = records
    for i, step in enumerate(steps):
        stream = step.run(stream, rank=rank, world_size=world_size)
        if i == 0:
            stream = number_records(stream)
    return iter(stream)


GC_THRESHOLD = 50_000
"""Container allocations between young-generation collections while a shard runs (Python: 700)."""


@contextlib.contextmanager
def steady_gc(threshold: int = GC_THRESHOLD) -> Iterator[Callable[[], None]]:
    """Tune Python's cycle collector for a pipeline's steady state; everything is restored on exit.

    Why: a pipeline allocates many short-lived small containers per record (row dicts and lists,
    candidates, numpy array objects) and makes no reference cycles on its hot path, so reference
    counting frees them. With the default threshold the collector still runs every 700
    allocations, and every 10th / 100th run walks the older generations too: every object that
    imports (numpy, pyarrow, datasets, torch) and model setup left behind, and every row the writer
    holds until the shard ends. That is ~7 % of the time at 1,000 images/s on one core.

    Inside the block the objects alive on entry are frozen (:func:`gc.freeze`: never walked again,
    still freed by reference counting) and the young generation is collected every ``threshold``
    allocations; cycles are still collected, only later. The yielded ``settle()`` freezes again
    once every step has set up (call it after the first record: models are loaded by then).
    On exit the thresholds are restored and the frozen objects unfrozen; when objects were already
    frozen on entry (the caller manages freezing), nothing is frozen or unfrozen here.
    """
    old = gc.get_threshold()
    owns_freeze = gc.get_freeze_count() == 0

    def settle() -> None:
        if owns_freeze:
            gc.freeze()

    settle()
    gc.set_threshold(threshold, *old[1:])
    try:
        yield settle
    finally:
        gc.set_threshold(*old)
        if owns_freeze:
            gc.unfreeze()
