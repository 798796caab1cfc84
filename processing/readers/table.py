"""Annotation tables: parse a big annotation file once into a per-image Parquet cache, read any shard of it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..records import NUM_KEYPOINTS, Record
from .base import _MAX_LOGGED_PER_REASON, BadInputError, Reader, _Raw, shard_slice

logger = logging.getLogger(__name__)

# Annotation tables: parse a big annotation file once, read any shard of it

CACHE_VERSION = 1  # bump when the table layout or the parsing changes: older caches are rebuilt
ROWS_PER_GROUP = 1024  # images per Parquet row group: the unit a worker reads
_CHUNK_ROWS = 1 << 16  # parsed boxes buffered as Python tuples before they become Arrow arrays
_META_KEY = b"spatialforge.annotations"
# problems of one image found while parsing (counted when the image is read, in its shard)
_ISSUES: tuple[str, ...] = ("unknown_category", "bbox_malformed", "keypoints_malformed", "malformed_points", "duplicate_row")
_ISSUE_CODE = {name: i + 1 for i, name in enumerate(_ISSUES)}  # kind 0 is a box


class _Events:
    """Problems found while parsing a whole file (counted once, with shard 0): count per reason and
    the first few messages, in order of first occurrence. Stored with the cache, so a reuse reports
    (and, under ``"warn"``/``"error"``, logs or raises) exactly what a fresh parse would."""

    def __init__(self, raise_as: str | None = None) -> None:
        self.items: dict[tuple[str, str], list] = {}  # (counter, reason) -> [count, messages]
        self.raise_as = raise_as  # source name: raise on the first problem (policy "error")

    def add(self, counter: Literal["image", "object"], reason: str, message: str | Callable[[], str], n: int = 1) -> None:
        entry = self.items.setdefault((counter, reason), [0, []])
        entry[0] += n
        if len(entry[1]) < _MAX_LOGGED_PER_REASON or self.raise_as is not None:
            text = message() if callable(message) else message  # built lazily: millions of problems may be counted
            if self.raise_as is not None:
                raise BadInputError(f"{self.raise_as}: {text} [{reason}]")
            entry[1].append(text)

    def to_json(self) -> list[list[Any]]:
        return [[counter, reason, n, messages] for (counter, reason), (n, messages) in self.items.items()]

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> _Events:
        out = cls()
        for counter, reason, n, messages in data:
            out.items[(counter, reason)] = [int(n), list(messages)]
        return out


class _Rows:
    """Boxes (and per-image problems) of a parse, in file order, as Arrow chunks rather than Python objects.

    ``img`` is an image's index in the parse's image list (int) or its id (str, OpenImages).
    """

    def __init__(self, img_type: Any) -> None:
        import pyarrow as pa

        self.schema = pa.schema([
            ("img", img_type), ("kind", pa.int8()),
            ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
            ("label", pa.int32()), ("is_group", pa.bool_()), ("is_depiction", pa.bool_()),
            ("is_occluded", pa.bool_()), ("is_truncated", pa.bool_()), ("score", pa.float64()),
            ("keypoints", pa.list_(pa.float64())),
        ])
        self._rows: list[tuple] = []
        self._batches: list[Any] = []

    def box(self, img: Any, xyxy: Sequence[float], label: int, is_group: bool = False, is_depiction: bool = False,
            is_occluded: bool = False, is_truncated: bool = False, score: float = 1.0, keypoints: list[float] | None = None) -> None:
        self._rows.append((img, 0, *xyxy, label, is_group, is_depiction, is_occluded, is_truncated, score, keypoints))
        if len(self._rows) >= _CHUNK_ROWS:
            self._flush()

    def issue(self, img: Any, reason: str, label: int = -1) -> None:
        self._rows.append((img, _ISSUE_CODE[reason], math.nan, math.nan, math.nan, math.nan, label, False, False, False, False, 1.0, None))
        if len(self._rows) >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            columns = list(zip(*self._rows))
            self._batches.append(pa.RecordBatch.from_arrays(
                [pa.array(col, type=field.type) for col, field in zip(columns, self.schema)], schema=self.schema))
            self._rows = []

    def table(self) -> Any:
        import pyarrow as pa

        self._flush()
        return pa.Table.from_batches(self._batches, schema=self.schema).combine_chunks()


def _offsets(rank: np.ndarray, n: int) -> Any:
    import pyarrow as pa

    return pa.array(np.concatenate([[0], np.cumsum(np.bincount(rank, minlength=n))]).astype(np.int32))


def _assemble(images: Any, rows: Any, labels: Sequence[str]) -> Any:
    """One row per image, sorted by image id, with its boxes and problem counts as list columns.

    ``images``: Arrow table (image_id, relpath, width, height, relative, optional extra columns),
    one row per image; ``rows``: :class:`_Rows` table with ``img`` an index into ``images``. The
    boxes of an image keep their file order (stable sort).
    """
    import pyarrow as pa

    n = images.num_rows
    order = np.asarray(images["image_id"].to_numpy(zero_copy_only=False).argsort(kind="stable")) if n else np.zeros(0, np.int64)
    images = images.take(pa.array(order, pa.int64()))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    img = rows["img"].to_numpy()
    kind = rows["kind"].to_numpy()
    r = rank[img] if len(img) else np.zeros(0, np.int64)

    box_rows = np.flatnonzero(kind == 0)
    perm = box_rows[np.argsort(r[box_rows], kind="stable")]
    boxes = rows.take(pa.array(perm, pa.int64())).combine_chunks()
    offsets = _offsets(r[perm], n)
    xyxy = np.stack([boxes[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1)
    label = pa.array(list(labels), pa.string()).take(boxes["label"].combine_chunks())  # boxes' labels are all known
    columns = {
        "xyxy": pa.FixedSizeListArray.from_arrays(pa.array(xyxy, pa.float64()), 4),
        "label": label,
        **{c: boxes[c].combine_chunks() for c in ("is_group", "is_depiction", "is_occluded", "is_truncated", "score", "keypoints")},
    }
    out = images
    for name, values in columns.items():
        out = out.append_column(name, pa.ListArray.from_arrays(offsets, values))

    problems = np.flatnonzero(kind != 0)
    key, count = np.unique(r[problems] * 16 + kind[problems], return_counts=True)
    reasons = np.array(("",) + _ISSUES, dtype=object)[key % 16]
    issue_offsets = _offsets(key // 16, n)
    out = out.append_column("issue_reason", pa.ListArray.from_arrays(issue_offsets, pa.array(reasons, pa.string())))
    return out.append_column("issue_count", pa.ListArray.from_arrays(issue_offsets, pa.array(count, pa.int64())))


def _images_table(image_id: Sequence[str] | Any, relpath: Sequence[str | None] | None = None, width=None, height=None,
                  relative: bool = False, **extra: Any) -> Any:
    import pyarrow as pa

    n = len(image_id)
    columns = {
        "image_id": pa.array(image_id, pa.string()),
        "relpath": pa.array(relpath if relpath is not None else [None] * n, pa.string()),
        "width": pa.array(width if width is not None else [None] * n, pa.float64()),
        "height": pa.array(height if height is not None else [None] * n, pa.float64()),
        "relative": pa.array([relative] * n, pa.bool_()),
        **extra,
    }
    return pa.table(columns)


def _num(v: float | None) -> float | int | None:
    """Sizes come back from Arrow as floats; integral ones print as the integers the file had."""
    return int(v) if v is not None and float(v).is_integer() else v


def _raw_from_row(row: dict[str, Any]) -> _Raw:
    """The :class:`_Raw` of one table row (the same boxes, flags and problems the parse found)."""
    flags: list[dict[str, Any]] = []
    for g, d, o, t, s, kp in zip(row["is_group"], row["is_depiction"], row["is_occluded"], row["is_truncated"], row["score"], row["keypoints"]):
        f: dict[str, Any] = {"is_group": g, "is_depiction": d, "is_occluded": o, "is_truncated": t, "score": s}
        if kp is not None:
            f["keypoints"] = np.asarray(kp, np.float64).reshape(NUM_KEYPOINTS, 3)
        flags.append(f)
    extra = json.loads(row["extra"]) if row.get("extra") else None
    if "verified" in row:
        extra = {**(extra or {}), "verified": row["verified"]}
    return _Raw(
        image_id=row["image_id"],
        relpath=row["relpath"],
        width=_num(row["width"]),
        height=_num(row["height"]),
        relative=row["relative"],
        boxes=list(zip(row["xyxy"], row["label"])),
        flags=flags,
        issues=Counter(dict(zip(row["issue_reason"], row["issue_count"]))) or None,
        extra=extra,
    )


class AnnotationTable:
    """The per-image annotation table of a reader: in memory, or a Parquet file read by row group.

    Rows are sorted by ``image_id``; a worker reads the row groups of its shard only, so its memory
    follows the shard (one row group at a time), not the dataset.
    """

    def __init__(self, table: Any = None, path: str | os.PathLike | None = None) -> None:
        if (table is None) == (path is None):
            raise ValueError("give an Arrow table or a Parquet path, not both or neither")
        self.path = Path(path) if path is not None else None
        self._table = table
        self._file = None
        if path is not None:
            import pyarrow.parquet as pq

            self._file = pq.ParquetFile(path)
            meta = self._file.metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.num_rows = meta.num_rows
        else:
            self.num_rows = table.num_rows
            sizes = [min(ROWS_PER_GROUP, self.num_rows - s) for s in range(0, self.num_rows, ROWS_PER_GROUP)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._group: tuple[int, list[dict[str, Any]]] | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        schema = self._file.schema_arrow if self._file is not None else self._table.schema
        return json.loads((schema.metadata or {})[_META_KEY])

    def image_ids(self) -> list[str]:
        if self._file is not None:
            return self._file.read(columns=["image_id"])["image_id"].to_pylist()
        return self._table["image_id"].to_pylist()

    def _read_group(self, g: int) -> list[dict[str, Any]]:
        if self._file is not None:
            return self._file.read_row_group(g).to_pylist()
        start = int(self._starts[g])
        return self._table.slice(start, int(self._starts[g + 1]) - start).to_pylist()

    def row(self, pos: int) -> dict[str, Any]:
        if not 0 <= pos < self.num_rows:
            raise IndexError(f"row {pos} is outside 0..{self.num_rows - 1}")
        g = int(np.searchsorted(self._starts, pos, side="right")) - 1
        if self._group is None or self._group[0] != g:
            self._group = (g, self._read_group(g))  # one row group in memory at a time
        return self._group[1][pos - int(self._starts[g])]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Exclusive lock on ``path`` (POSIX): workers that start together convert once, the others wait."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent converters each write their own tmp file; rename stays atomic
        yield False
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_parquet_atomic(path: Path, table: Any) -> None:
    """Write ``table`` to ``path`` through a tmp file + rename, so a kill never leaves a half file under ``path``."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, row_group_size=ROWS_PER_GROUP)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class TableReader(Reader):
    """A reader whose annotations are parsed once into an :class:`AnnotationTable`.

    Subclasses override :meth:`_inputs` (the files parsed) and :meth:`_convert` (parse them into
    the table). With ``cache_dir`` the table is a Parquet file named after the inputs' fingerprint
    (path, size, mtime of every input file): the first reader converts (under a file lock, written
    atomically), every later reader (other workers, reruns, resumes) reads only the row groups of its
    shard; a changed input gets a new fingerprint and is converted again. Without ``cache_dir`` the
    table is built in memory by each reader.

    Problems found while parsing (``_load_drops`` / ``_load_object_drops``) are stored with the table
    and counted once, with shard 0; problems of one image are counted when that image is read.
    """

    kind = "table"  # cache file prefix

    def __init__(self, images: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(images, **kwargs)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_path: Path | None = None  # the cache file in use
        self.cache_built = False  # True when this reader converted the input (False: reused, or in memory)
        self._table: AnnotationTable | None = None
        self._positions: dict[str, int] | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def _inputs(self) -> list[Path]:
        raise NotImplementedError

    def _convert(self, events: _Events) -> Any:
        """Parse the inputs into one Arrow table (see :func:`_assemble`); report problems to ``events``."""
        raise NotImplementedError

    # -- the table ---------------------------------------------------------------------------
    def _parse(self, events: _Events) -> Any:
        """:meth:`_convert`, with text that is not UTF-8 named by its file."""
        try:
            return self._convert(events)
        except UnicodeDecodeError as err:
            files = ", ".join(repr(str(p)) for p in self._inputs())
            raise BadInputError(f"{files} is not UTF-8 text: byte {err.start} is {err.object[err.start:err.start + 1]!r} "
                                f"({err.reason}); re-save it as UTF-8") from err

    def fingerprint(self) -> str:
        """Hash of the inputs (absolute path, size, mtime) and of the table format."""
        inputs = []
        for p in self._inputs():
            st = p.stat()
            inputs.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        blob = json.dumps({"version": CACHE_VERSION, "reader": type(self).__name__, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def table(self) -> AnnotationTable:
        """The annotation table (converted, or opened from the cache); parse-time problems apply the policy here."""
        if self._table is None:
            if self.cache_dir is None:
                events = _Events(self.source if self.on_bad_input == "error" else None)
                table = AnnotationTable(self._parse(events))
            else:
                table, events = self._cached()
            self._replay(events)
            self._table = table
        return self._table

    def prepare(self) -> None:
        """Convert the input now (once, before workers start), unless a valid cache exists."""
        self.table()

    def _open_cache(self, path: Path, fingerprint: str) -> tuple[AnnotationTable, _Events] | None:
        if not path.is_file():
            return None
        import pyarrow as pa

        try:
            table = AnnotationTable(path=path)
            meta = table.metadata
            if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
                return None
            return table, _Events.from_json(meta["events"])
        except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as err:
            logger.warning("%s: ignoring unreadable annotation cache %s (%s); converting again", self.source, path, err)
            return None

    def _cached(self) -> tuple[AnnotationTable, _Events]:
        fingerprint = self.fingerprint()
        path = self.cache_dir / f"{self.kind}-{fingerprint}.parquet"
        self.cache_path = path
        opened = self._open_cache(path, fingerprint)
        if opened is not None:
            logger.info("%s: reusing the annotation table %s", self.source, path)
            return opened
        import time

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.cache_dir / f"{self.kind}.lock") as locked:
            opened = self._open_cache(path, fingerprint)  # another process may have converted while we waited
            if opened is not None:
                return opened
            if locked:  # only the lock holder writes: tmp files left by a kill, and tables of older inputs, go
                for stale in self.cache_dir.glob(f"{self.kind}-*"):
                    stale.unlink(missing_ok=True)
            start = time.perf_counter()
            events = _Events()  # recorded, not raised: the policy is applied on every use of the cache
            table = self._parse(events)
            meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "reader": type(self).__name__,
                    "inputs": [str(p) for p in self._inputs()], "events": events.to_json(),
                    "images": table.num_rows, "seconds": round(time.perf_counter() - start, 3)}
            table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
            _write_parquet_atomic(path, table)
            del table
            self.cache_built = True
            logger.info("%s: converted %s into %s (%d images, %.1f s)", self.source,
                        ", ".join(str(p) for p in self._inputs()), path, meta["images"], meta["seconds"])
            return AnnotationTable(path=path), events

    def _replay(self, events: _Events) -> None:
        """Apply the policy to parse-time problems (raise / log the stored messages) and count them."""
        for (counter_name, reason), (n, messages) in events.items.items():
            counter = self._load_drops if counter_name == "image" else self._load_object_drops
            for message in messages:
                self._bad(reason, message, counter)
            counter[reason] += n - len(messages)

    # -- reading -----------------------------------------------------------------------------
    def items(self) -> list[str]:
        return self.table().image_ids()

    def index(self) -> dict[str, _Raw]:
        """Every image's annotations (the whole table in memory: prefer :meth:`read_shard`)."""
        table = self.table()
        return {raw.image_id: raw for raw in (_raw_from_row(table.row(i)) for i in range(table.num_rows))}

    def _read_positions(self, positions: Iterable[int]) -> Iterator[Record]:
        table = self.table()
        for pos in positions:
            self.stats.records_in += 1
            record = self._make_record(_raw_from_row(table.row(pos)))
            if record is not None:
                self.stats.records_out += 1
                yield record

    def read(self, items: Iterable[str]) -> Iterator[Record]:
        table = self.table()
        if self._positions is None:
            self._positions = {image_id: i for i, image_id in enumerate(table.image_ids())}
        for image_id in items:
            pos = self._positions.get(image_id)
            if pos is None:
                self.stats.records_in += 1
                raise KeyError(f"{self.source}: unknown image id {image_id!r}")
            yield from self._read_positions([pos])

    def read_shard(self, shard: int, num_shards: int) -> Iterator[Record]:
        table = self.table()
        rows = shard_slice(table.num_rows, shard, num_shards)
        if shard == 0:  # parse-time problems are counted once, with the first shard
            self.stats.dropped.update(self._load_drops)
            self.objects_dropped.update(self._load_object_drops)
        yield from self._read_positions(range(rows.start, rows.stop))
