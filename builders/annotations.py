"""Locate and read annotation shards: a Hub-ready folder, a Hub dataset repo, or JSONL files.

Layout of a folder or repo (``DATA_DIR`` = ``data``)::

    README.md                 card with YAML ``configs:`` (one per task + ``all``)
    data/<task>/*.parquet     shards in the Arrow schema of ``schema.FEATURES``
    data/<task>/*.jsonl       (alternative) one row per line, same columns

``annotations`` may also be one ``.parquet`` / ``.jsonl`` file or a glob of them, or training files in a
chat shape (LLaVA / Qwen-VL ``.json``, InternVL meta ``.json`` or ``.jsonl``, LLaMA-Factory, ms-swift,
messages ``.jsonl``): format ``chat``, read into rows by ``processing.training.parse.ChatReader``. Shards come in a
stable order: tasks in ``TASKS`` order, then file names sorted. Readers stream in record batches, so
memory stays flat in the number of rows; paths may be local or ``hf://`` URLs (read via ``xopen``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field

from .schema import ALL_CONFIG, COLUMNS, DATA_DIR, TASKS
from .validate import ShardError, cast_error, check_columns, unreadable

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
CHAT = "chat"  # a bare .json / .jsonl file whose records are chat samples, not schema rows
_REPO_ID = re.compile(r"^(?:hf://datasets/)?([A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@([\w./-]+))?$")


@dataclass
class AnnotationShards:
    """The shard files of one task (or of all tasks) of an annotation source."""

    files: list[str]  # local paths or hf:// URLs, in reading order
    format: str  # "parquet" | "jsonl"
    origin: str  # what the user passed
    fingerprint: str  # changes when any shard changes (sizes+mtimes locally, commit sha on the Hub)
    repo_id: str | None = None
    revision: str | None = None
    tasks: list[str] = field(default_factory=list)
    mixed: bool = False  # files may hold rows of several tasks (a bare file or glob): filter by task
    reader: object | None = None  # format "chat": the ChatReader that turns samples into rows
    # Row range [start, stop) of each entry of ``files`` (raw rows, before the task filter); None or
    # a None entry: the whole file. Set when files are cut into more shards (see ``cut_shards``).
    ranges: list[tuple[int, int] | None] | None = None

    def range_of(self, k: int) -> tuple[int, int] | None:
        return None if self.ranges is None else self.ranges[k]

    @property
    def task_filter(self) -> list[str] | None:
        """Tasks to keep while reading (``None``: every row of these shards belongs to the task)."""
        return self.tasks if self.mixed else None


def _tasks_for(task: str) -> list[str]:
    if task == ALL_CONFIG:
        return list(TASKS)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS + (ALL_CONFIG,)}, got {task!r}")
    return [task]


def _pick(rel_files: list[str], tasks: list[str], origin: str, data_dirs: list[str] | None = None) -> tuple[list[str], str]:
    """Shards of ``tasks`` among relative file paths, in stable order, and their format."""
    for fmt in FORMATS:
        picked = []
        for task in tasks:
            prefix = f"{DATA_DIR}/{task}/"
            picked += sorted(f for f in rel_files if f.startswith(prefix) and f.endswith(f".{fmt}"))
        if picked:
            return picked, fmt
    any_data = any(f.startswith(f"{DATA_DIR}/") for f in rel_files)
    where = "" if any_data else f" (there is no {DATA_DIR}/ folder)"
    if data_dirs is not None:  # a local folder with a data/ folder: name the empty or absent task folders
        empty = [f"{DATA_DIR}/{t}/" for t in tasks if t in data_dirs]
        where = (f" ({', '.join(empty)} holds no .parquet or .jsonl file)" if empty
                 else f" ({DATA_DIR}/ has no folder for {', '.join(tasks)}; it has {data_dirs})")
    raise FileNotFoundError(
        f"no annotation shards for task(s) {tasks} in {origin!r}: expected {DATA_DIR}/<task>/*.parquet or *.jsonl{where}"
    )


def _local_fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def is_repo_id(annotations: str) -> bool:
    """True if ``annotations`` names a Hub dataset (``owner/name[@rev]`` or ``hf://datasets/...``)
    rather than an existing local path."""
    if os.path.exists(annotations) or glob.has_magic(annotations):
        return False
    return bool(_REPO_ID.match(annotations)) and not annotations.endswith((".parquet", ".jsonl"))


def _is_chat_file(path: str) -> bool:
    """A ``.json`` file, or a ``.jsonl`` whose first record is a chat sample rather than a row."""
    if path.endswith(".json"):
        return True
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(rec, dict) and ("conversations" in rec or "messages" in rec) and "task" not in rec
    return False


def looks_local(annotations: str) -> bool:
    """True if ``annotations`` is meant as a local path: absolute, ``./`` / ``../`` / ``~``, or its
    first folder exists here (``data/sf10n`` next to ``data/sf10m`` is a typo, not a Hub repo)."""
    if annotations.startswith(("/", ".", "~")) or os.sep != "/" and os.sep in annotations:
        return True
    head = annotations.split("/", 1)[0]
    return "/" in annotations and os.path.isdir(head)


def locate_shards(annotations: str, task: str = ALL_CONFIG, revision: str | None = None, token=None,
                  chat_options: dict | None = None) -> AnnotationShards:
    """Find the shard files of ``task`` in a local folder, a file/glob, or a Hub dataset repo.

    ``chat_options`` (``image_dirs``, ``media_root``, ``model_family``) configure the reader of
    chat-shaped files.
    """
    tasks = _tasks_for(task)
    if not isinstance(annotations, (str, os.PathLike)):
        raise ValueError(f"annotations must be a path or a Hub repo id, got {annotations!r}")
    annotations = os.fspath(annotations)
    if os.path.isdir(annotations):
        rel = []
        for fmt in FORMATS:
            rel += [
                os.path.relpath(p, annotations).replace(os.sep, "/")
                for p in glob.glob(os.path.join(annotations, DATA_DIR, "*", f"*.{fmt}"))
            ]
        data = os.path.join(annotations, DATA_DIR)
        data_dirs = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d))) if os.path.isdir(data) else None
        picked, fmt = _pick(rel, tasks, annotations, data_dirs)
        files = [os.path.abspath(os.path.join(annotations, p)) for p in picked]
        return AnnotationShards(files, fmt, annotations, _local_fingerprint(files), tasks=tasks)
    if os.path.isfile(annotations) or glob.has_magic(annotations):
        files = sorted(os.path.abspath(p) for p in glob.glob(annotations))
        fmts = {os.path.splitext(p)[1].lstrip(".") for p in files}
        if not files:
            raise FileNotFoundError(f"no annotation files match {annotations!r}")
        chat = {p for p in files if p.endswith((".json", ".jsonl")) and _is_chat_file(p)}
        if chat:
            if len(chat) != len(files):
                raise ValueError(f"annotation files must all be chat files or all schema rows, got {sorted(set(files) - chat)[:3]} besides chat files")
            from spatialforge.processing.training.parse import ChatReader

            reader = ChatReader(**(chat_options or {}))
            return AnnotationShards(files, CHAT, annotations, _local_fingerprint(files), tasks=tasks, mixed=True, reader=reader)
        if len(fmts) != 1 or not fmts <= set(FORMATS):
            raise ValueError(f"annotation files must all be .parquet or all .jsonl, got extensions {sorted(fmts)}")
        # A bare file holds rows of any task: the reader filters by task when a task is chosen.
        return AnnotationShards(files, fmts.pop(), annotations, _local_fingerprint(files), tasks=tasks, mixed=True)
    if looks_local(annotations):
        raise FileNotFoundError(f"annotations folder {annotations!r} does not exist (a local path, not a Hub repo id)")
    m = _REPO_ID.match(annotations)
    if not m:
        raise FileNotFoundError(f"annotations {annotations!r} is neither an existing path nor a Hub repo id")
    repo_id, rev = m.group(1), revision or m.group(2)
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"annotations {annotations!r} is not a local path, and HF_HUB_OFFLINE is set: the Hub repo {repo_id!r} cannot be read"
        )
    api = HfApi(token=token)
    try:
        info = api.dataset_info(repo_id, revision=rev)
    except OSError as err:  # requests' ConnectionError / HTTPError are OSErrors
        raise FileNotFoundError(
            f"annotations {annotations!r} is not a local path, and the Hub repo {repo_id!r} cannot be read: {err}"
        ) from err
    sha = info.sha or rev or "main"
    rel = api.list_repo_files(repo_id, repo_type="dataset", revision=sha)
    picked, fmt = _pick(list(rel), tasks, annotations)
    files = [f"hf://datasets/{repo_id}@{sha}/{p}" for p in picked]
    return AnnotationShards(files, fmt, annotations, sha, repo_id=repo_id, revision=sha, tasks=tasks)


def _open(path: str, download_config=None):
    if "://" in path:
        from datasets.utils.file_utils import xopen

        return xopen(path, "rb", download_config=download_config)
    return open(path, "rb")


def count_rows(path: str, fmt: str, download_config=None) -> int:
    """Rows of one shard: the Parquet footer's count, or the non-empty lines of a JSONL file."""
    with _open(path, download_config) as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(f).metadata.num_rows
        return sum(1 for line in f if line.strip())


def cut_shards(files: list[str], fmt: str, pieces: int, download_config=None) -> tuple[list[str], list[tuple[int, int]]]:
    """Cut every file into ``pieces`` row ranges of (nearly) equal size, file by file.

    ``len(files) * pieces`` shards result, so a ``world_size`` that divides ``pieces`` divides the
    shard count, and rank ``r`` of ``split_dataset_by_node`` reads only its ranges of each file.
    """
    out_files, ranges = [], []
    for path in files:
        n = count_rows(path, fmt, download_config)
        for k in range(pieces):
            out_files.append(path)
            ranges.append((n * k // pieces, n * (k + 1) // pieces))
    return out_files, ranges


def iter_batches(
    path: str,
    fmt: str,
    columns: list[str] | None = None,
    batch_size: int = 1024,
    tasks: list[str] | None = None,
    download_config=None,
    rows: tuple[int, int] | None = None,
    reader=None,
):
    """Yield ``pyarrow.Table`` batches of at most ``batch_size`` rows of one shard, in file order.

    Columns are ``columns`` (default: every schema column) in that order, typed as in
    ``schema.arrow_schema()``; missing ones come back null. Parquet is read in record batches with
    only the needed columns; JSONL in chunks of lines; chat files through ``reader`` (a
    ``ChatReader``). If ``tasks`` is given, rows of other tasks are left out (for files that mix tasks).
    ``rows=(start, stop)`` keeps only the file's raw rows ``start <= k < stop`` (counted before the
    task filter; Parquet row groups outside are not read).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from .schema import arrow_schema

    full = arrow_schema()
    cols = list(columns or COLUMNS)
    need = cols if tasks is None or "task" in cols else cols + ["task"]
    schema = pa.schema([full.field(c) for c in need])

    def finish(table: pa.Table) -> pa.Table:
        if tasks is not None and len(tasks) < len(TASKS):
            table = table.filter(pc.is_in(table.column("task"), value_set=pa.array(tasks, pa.string())))
        return table.select(cols)

    if fmt == CHAT:
        if reader is None:
            from spatialforge.processing.training.parse import ChatReader

            reader = ChatReader()
        chunk: list[dict] = []  # chat files are never cut into row ranges (``rows`` is None)
        for row in reader.read(path):
            chunk.append(row)
            if len(chunk) >= batch_size:
                yield finish(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            yield finish(pa.Table.from_pylist(chunk, schema=schema))
        return
    with _open(path, download_config) as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as err:
                raise unreadable(path, "Parquet", err) from err
            check_columns(path, pf.schema_arrow.names, need)
            present = [c for c in need if c in pf.schema_arrow.names]
            groups, first = list(range(pf.num_row_groups)), 0
            if rows is not None:  # only the row groups that overlap the range
                bounds, groups = [0], []
                for g in range(pf.num_row_groups):
                    bounds.append(bounds[-1] + pf.metadata.row_group(g).num_rows)
                    if bounds[g] < rows[1] and bounds[g + 1] > rows[0]:
                        groups.append(g)
                first = bounds[groups[0]] if groups else 0
            batches = _in_range(pf.iter_batches(batch_size=batch_size, columns=present, row_groups=groups), rows, first)
            while True:
                try:
                    rb = next(batches, None)
                except (pa.ArrowException, OSError) as err:  # a damaged row group
                    raise unreadable(path, "Parquet", err) from err
                if rb is None:
                    break
                arrays = [
                    rb.column(c) if c in present else pa.nulls(rb.num_rows, schema.field(c).type) for c in need
                ]
                table = pa.Table.from_arrays(arrays, names=need)
                if table.schema != schema:
                    try:
                        table = table.cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                        raise cast_error(path, table, schema, err) from err
                yield finish(table)
        elif fmt == "jsonl":
            chunk: list[dict] = []
            keys: set[str] = set()
            start, stop = rows if rows is not None else (0, None)
            k = -1

            def table_of(chunk: list[dict]) -> pa.Table:
                check_columns(path, sorted(keys), need)
                try:
                    return pa.Table.from_pylist(chunk, schema=schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                    loose = pa.Table.from_pylist([{k: r.get(k) for k in need} for r in chunk])
                    raise cast_error(path, loose, schema, err) from err

            for lineno, line in enumerate(f, 1):
                if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                    line = line[3:]
                if not line.strip():
                    continue
                k += 1
                if k < start:
                    continue
                if stop is not None and k >= stop:
                    break
                try:
                    row = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as err:
                    raise ShardError(f"{path}:{lineno}: not UTF-8 text ({err})") from err
                except json.JSONDecodeError as err:
                    raise ShardError(f"{path}:{lineno}: not a JSON object ({err})") from err
                if not isinstance(row, dict):
                    raise ShardError(f"{path}:{lineno}: not a JSON object, got {type(row).__name__}")
                chunk.append(row)
                keys.update(row)
                if len(chunk) >= batch_size:
                    yield finish(table_of(chunk))
                    chunk = []
            if chunk:
                yield finish(table_of(chunk))
        else:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _in_range(batches, rows: tuple[int, int] | None, first: int):
    """Record batches sliced to the raw rows ``rows`` of a file; ``first`` is the file row of the first batch."""
    if rows is None:
        yield from batches
        return
    pos = first
    for rb in batches:
        lo, hi = max(rows[0] - pos, 0), min(rows[1] - pos, rb.num_rows)
        pos += rb.num_rows
        if hi > lo:
            yield rb.slice(lo, hi - lo)
        if pos >= rows[1]:
            return


def _image_runs(batches):
    """``(key, table)`` per run of rows of one image in a shard's batches (``key`` = source, image_id)."""
    import pyarrow.compute as pc

    for table in batches:
        if not table.num_rows:
            continue
        keys = pc.binary_join_element_wise(table.column("source"), table.column("image_id"), "\x00")
        keys = keys.combine_chunks() if hasattr(keys, "combine_chunks") else keys
        change = pc.indices_nonzero(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))).to_pylist()
        starts = [0] + [k + 1 for k in change]
        for a, b in zip(starts, starts[1:] + [table.num_rows]):
            yield keys[a].as_py(), table.slice(a, b - a)


def iter_image_merged_batches(paths: list[str], fmt: str, columns: list[str] | None = None, batch_size: int = 1024,
                              tasks: list[str] | None = None, download_config=None, reader=None):
    """Batches of several shards read side by side, the rows of one image together.

    For shard ``k`` of every task (the pipeline writes it from the same images, each file sorted by
    id): a merge on ``(source, image_id)``, so one image's grounding, counting, ... rows come in a
    row, in the order of ``paths``. Every row of every file comes exactly once whatever the order
    of the files' images (an image in an order the others do not share is simply not joined).
    """
    import heapq

    import pyarrow as pa

    runs = [_image_runs(iter_batches(p, fmt, columns, batch_size, tasks, download_config, reader=reader)) for p in paths]
    heap = []
    for i, it in enumerate(runs):
        first = next(it, None)
        if first is not None:
            heap.append((first[0], i, first[1]))
    heapq.heapify(heap)
    out, n = [], 0
    while heap:
        key, i, table = heapq.heappop(heap)
        out.append(table)
        n += table.num_rows
        nxt = next(runs[i], None)
        if nxt is not None:
            heapq.heappush(heap, (nxt[0], i, nxt[1]))
        if n >= batch_size and (not heap or heap[0][0] != key):  # never cut an image's rows
            yield pa.concat_tables(out)
            out, n = [], 0
    if out:
        yield pa.concat_tables(out)
