"""Parquet writer: QA rows of one shard -> ``data/<task>/<shard name>.parquet`` in a dataset folder.

The layout is the one the dataset card's ``configs:`` point at (one folder per task)::

    out/
      README.md                 dataset card (builders/card.py)
      stats.json
      data/
        near_far/train-00000-of-00004.parquet
        counting/train-00000-of-00004.parquet
        ...

Files are written with the declared schema (:func:`spatialforge.builders.schema.arrow_schema`,
which carries the ``datasets`` features in its metadata), rows sorted by ``id`` so a shard's bytes
do not depend on how records were batched, and atomically: a ``.parquet.tmp-<pid>`` file renamed into
place, so a reader (or a resumed run) never sees half a file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ...builders import schema
from ..base import Step
from ..records import Record

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
VALIDATED_ROWS = "validated_rows"
"""``record.meta`` key: the first this many ``record.rows`` were checked with ``validate_row`` by the
step that made them (the task step), so the writer does not check them twice. A step that edits
rows after that must lower it (or delete it)."""


SPLIT = "train"  # the split every shard belongs to (the card's data_files say the same)


def shard_name(shard: int, num_shards: int) -> str:
    """``train-00003-of-00016``: split, shard and count, as ``datasets`` names the shards it writes
    (``push_to_hub``, ``save_to_disk``); sorts in shard order and names every file of the shard."""
    return f"{SPLIT}-{shard:05d}-of-{num_shards:05d}"


def task_path(out_dir: str | os.PathLike, task: str, name: str) -> Path:
    return Path(out_dir) / schema.DATA_DIR / task / f"{name}.parquet"


def write_parquet(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` (schema dicts) to ``path`` with the declared schema, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow_schema = schema.arrow_schema()
    # Column by column: the same arrays as Table.from_pylist, in about half its time.
    columns = [pa.array([row.get(f.name) for row in rows], type=f.type) for f in arrow_schema]
    table = pa.Table.from_arrays(columns, schema=arrow_schema)
    # pid in the name: two processes on one shard (an orphan of a killed run and its rerun) never share a tmp file
    tmp = path.with_name(f"{path.name}{TMP_SUFFIX}-{os.getpid()}")
    if not table.num_rows:  # no row group at all: a 0-row group makes datasets' Parquet reader fail
        pq.ParquetWriter(tmp, table.schema).close()
    else:
        pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


DROPS_DIR = "drops"
"""Per-image candidate drops of a run that keeps them (``keep_drops``): ``drops/<shard name>.parquet``
with columns source, image_id, reason, count (outside ``data/``: not part of any config)."""


def write_drops(drops: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write per-image candidate drops (sorted, so the bytes do not depend on batching), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = pa.schema([("source", pa.string()), ("image_id", pa.string()), ("reason", pa.string()), ("count", pa.int64())])
    rows = sorted(drops, key=lambda d: (d["source"], d["image_id"], d["reason"]))
    table = pa.Table.from_pylist(rows, schema=fields)
    tmp = path.with_name(f"{path.name}{TMP_SUFFIX}-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


class ParquetWriter(Step):
    """Last step: gather ``record.rows`` of a shard and write one Parquet file per task.

    Records pass through unchanged (so it can sit anywhere at the end of a pipeline). ``tasks``: tasks
    whose file every shard writes, empty (with the schema) when the shard has no rows of it, so each
    requested task has a loadable config. Counts:
    ``rows_per_task``, ``candidate_drops`` (every ``record.drops`` merged) and, in
    ``stats.dropped``, rows refused by :func:`~spatialforge.builders.schema.validate_row`
    (``invalid_row``) or repeating an id (``duplicate_row_id``), each logged with the reason.
    Rows the task step already validated (``record.meta[VALIDATED_ROWS]``) are not checked twice.

    Example:
        >>> writer = ParquetWriter("out/")                                  # doctest: +SKIP
        >>> list(writer.run(records, rank=0, world_size=4))                 # doctest: +SKIP
        >>> writer.written                                                  # doctest: +SKIP
        ['out/data/near_far/train-00000-of-00004.parquet', ...]
    """

    name = "writer"

    def __init__(self, out_dir: str | os.PathLike, validate: bool = True, tasks: Sequence[str] = (),
                 keep_drops: bool = False) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.validate = validate
        self.tasks = tuple(tasks)
        self.keep_drops = keep_drops  # also write each image's candidate drops to drops/<shard>.parquet
        self.rows_per_task: Counter = Counter()
        self.candidate_drops: Counter = Counter()
        self.written: list[str] = []

    def run(self, records: Iterable[Record], rank: int = 0, world_size: int = 1) -> Iterator[Record]:
        import time

        by_task: dict[str, dict[str, dict[str, Any]]] = {}
        drops: list[dict[str, Any]] = []
        for record in records:
            start = time.perf_counter()
            self.stats.records_in += 1
            self.candidate_drops.update(record.drops)
            if self.keep_drops:
                drops += [{"source": record.source, "image_id": record.image_id, "reason": reason, "count": int(n)}
                          for reason, n in record.drops.items() if n]
            validated = record.meta.get(VALIDATED_ROWS, 0)
            for k, row in enumerate(record.rows):
                self._add(by_task, row, check=k >= validated)
            self.stats.records_out += 1
            self.stats.seconds += time.perf_counter() - start
            yield record
        start = time.perf_counter()
        name = shard_name(rank, world_size)
        for task in sorted(set(by_task) | set(self.tasks)):
            rows = [by_task[task][rid] for rid in sorted(by_task.get(task, ()))]
            self.written.append(str(write_parquet(rows, task_path(self.out_dir, task, name))))
            self.rows_per_task[task] += len(rows)
        if self.keep_drops:
            self.written.append(str(write_drops(drops, self.out_dir / DROPS_DIR / f"{name}.parquet")))
        self.stats.seconds += time.perf_counter() - start

    def _add(self, by_task: dict[str, dict[str, dict[str, Any]]], row: dict[str, Any], check: bool = True) -> None:
        if self.validate and check:
            try:
                schema.validate_row(row)
            except ValueError as err:
                self.count("invalid_row")
                logger.warning("row not written: %s", err)
                return
        rows = by_task.setdefault(row["task"], {})
        if row["id"] in rows:
            self.count("duplicate_row_id")
            logger.warning("row id %r repeats within a shard; keeping the first", row["id"])
            return
        rows[row["id"]] = row
