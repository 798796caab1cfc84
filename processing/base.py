"""Pipeline steps: each maps an iterator of records to an iterator of records.

A pipeline is a plain list of steps. Executors (local processes, Ray Data) run the same list over
shards of the input, selected by ``rank`` / ``world_size``. Each role has one method to override:

* :class:`Step.process` for a step that handles one record at a time (return ``None`` to drop the
  record; count why with ``record.drop(reason)`` or :meth:`Step.count`);
* :class:`BatchStep.process_batch` for model steps that run batches (weights load once per worker in
  :meth:`BatchStep.setup`, which executors call lazily on first use).

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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .records import Record


@dataclass
class StepStats:
    """Counts and timings of one step on one shard; merge with ``+``."""

    name: str
    records_in: int = 0
    records_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(
            self.name,
            self.records_in + other.records_in,
            self.records_out + other.records_out,
            self.seconds + other.seconds,
            self.dropped + other.dropped,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "seconds": round(self.seconds, 6),
            "dropped": dict(sorted(self.dropped.items())),
        }


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


class BatchStep(Step):
    """A step that works on batches of records (model inference). Override :meth:`process_batch`."""

    batch_size: int = 8

    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__()
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            self.batch_size = batch_size

    def process_batch(self, records: list[Record]) -> list[Record | None]:
        raise NotImplementedError

    def process(self, record: Record) -> Record | None:
        return self.process_batch([record])[0]

    def run(self, records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
        self.setup()
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch: list[Record]) -> Iterator[Record]:
        self.stats.records_in += len(batch)
        start = time.perf_counter()
        outs = self.process_batch(batch)
        self.stats.seconds += time.perf_counter() - start
        for out in outs:
            if out is not None:
                self.stats.records_out += 1
                yield out


def run_pipeline(steps: list[Step], records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
    """Chain ``steps`` lazily over ``records``."""
    stream: Iterable[Record] = records
    for step in steps:
        stream = step.run(stream, rank=rank, world_size=world_size)
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
