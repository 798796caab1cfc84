"""Check loaded annotation shards against the schema: whole files first, then rows, in Arrow.

Two kinds of problems, each named with the file, the column and the first row ids:

* **File problems** (:class:`ShardError`, refused whatever the policy): a file that is not
  Parquet / not UTF-8 JSON lines, a required column that is absent (a shard without ``question``
  would otherwise load as ``None`` in every row), a column whose type cannot be cast to the schema.
* **Row problems** (:func:`row_problems`, counted by reason; the loader's ``on_invalid_row``
  decides: ``error`` by default, ``warn`` / ``skip`` drop the rows and count them):
  ``null_<column>`` (a null id, source, image_id, task, question or answer), ``bad_size`` (width or
  height null or <= 0), ``unknown_task``, ``task_mismatch`` (a row of ``near_far`` in
  ``data/grounding/``), ``bbox_out_of_range`` (a coordinate outside 0..1000, or x1 > x2 / y1 > y2,
  or not 4 values), ``bad_fact`` (a relation row without a fact, or its indices outside
  ``objects``), ``bad_count`` (a counting row without a count >= 0).

Every check is a vectorized Arrow kernel over a record batch, so validating costs a fraction of
reading; the same function runs in the pre-scan (counts, policy) and while serving rows (drops).

Example:
    >>> import pyarrow as pa
    >>> from spatialforge.builders.schema import arrow_schema
    >>> from spatialforge.builders.validate import row_problems
    >>> row = {"id": "a", "source": "s", "image_id": "i", "width": 0, "height": 5, "task": "counting",
    ...        "question": "q", "answer": "1", "count": 1, "objects": [{"label": "cup", "bbox": [0, 0, 9, 1200]}]}
    >>> sorted(row_problems(pa.Table.from_pylist([row], schema=arrow_schema()), ["counting"]))
    ['bad_size', 'bbox_out_of_range']
"""

from __future__ import annotations

import os
from typing import Any

from .schema import BBOX_SCALE, COLUMNS, DATA_DIR, RELATION_TASKS, TASKS

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "source", "image_id", "width", "height", "task", "question", "answer", "objects")
"""Columns a shard must have; ``fact``, ``count`` and ``verification`` may be absent (read as null)."""
_NOT_NULL = ("id", "source", "image_id", "task", "question", "answer")
COLUMN_OF: dict[str, str] = {
    **{f"null_{c}": c for c in _NOT_NULL},
    "bad_size": "width/height", "unknown_task": "task", "task_mismatch": "task", "bbox_out_of_range": "objects.bbox",
    "bad_fact": "fact", "bad_count": "count",
}
"""The reasons of :func:`row_problems` and the column each is about."""
VALIDATED_COLUMNS: list[str] = [c for c in COLUMNS if c != "verification"]
"""The columns :func:`row_problems` reads."""


class ShardError(ValueError):
    """A shard file that cannot be served at all (not readable, a column absent or of another type)."""


def folder_task(path: str) -> str | None:
    """The task a shard belongs to by its folder (``.../data/<task>/x.parquet``), or None."""
    parts = path.replace("\\", "/").split("/")
    if len(parts) >= 3 and parts[-3] == DATA_DIR and parts[-2] in TASKS:
        return parts[-2]
    return None


def check_columns(path: str, names: list[str], wanted: list[str]) -> None:
    """Raise :class:`ShardError` if a required column among ``wanted`` is not in ``names``."""
    absent = [c for c in REQUIRED_COLUMNS if c in wanted and c not in names]
    if absent:
        raise ShardError(
            f"annotation file {path!r} lacks the column(s) {absent} (it has {names}); every shard needs {list(REQUIRED_COLUMNS)}"
        )


def cast_error(path: str, table: Any, schema: Any, err: Exception) -> ShardError:
    """A :class:`ShardError` naming the first column of ``table`` whose type does not cast to ``schema``."""
    import pyarrow as pa

    for name in table.column_names:
        try:
            table.column(name).cast(schema.field(name).type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as column_err:
            ids = table.column("id").slice(0, 3).to_pylist() if "id" in table.column_names else []
            return ShardError(
                f"annotation file {path!r}: column {name!r} has type {table.column(name).type}, "
                f"expected {schema.field(name).type} ({column_err}); first rows {ids}"
            )
    return ShardError(f"annotation file {path!r} does not match the schema: {err}")


def unreadable(path: str, fmt: str, err: Exception) -> ShardError:
    """A :class:`ShardError` for a file that does not open as ``fmt`` (corrupt, empty, not UTF-8)."""
    size = os.path.getsize(path) if "://" not in path and os.path.isfile(path) else None
    what = " (an empty file)" if size == 0 else ""
    return ShardError(f"annotation file {path!r} is not a readable {fmt} file{what}: {err}")


def row_problems(table: Any, expected_tasks: list[str] | None) -> dict[str, Any]:
    """Boolean masks (Arrow) of the rows of ``table`` that break the schema, by reason; reasons
    without any offending row are left out. A row may appear under several reasons.

    ``table`` holds at least :data:`VALIDATED_COLUMNS` (typed as the schema); ``expected_tasks``
    is the task(s) the file belongs to by its folder (``None``: any task).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def flag(mask: Any) -> Any:
        return pc.fill_null(mask, True)

    masks: dict[str, Any] = {f"null_{name}": pc.is_null(table.column(name)) for name in _NOT_NULL}
    width, height = table.column("width"), table.column("height")
    masks["bad_size"] = flag(pc.or_(pc.less_equal(width, 0), pc.less_equal(height, 0)))
    task = table.column("task")
    known = pc.is_in(task, value_set=pa.array(TASKS, pa.string()))
    masks["unknown_task"] = pc.and_(pc.invert(pc.fill_null(known, False)), pc.is_valid(task))
    if expected_tasks is not None and len(expected_tasks) < len(TASKS):
        wanted = pc.is_in(task, value_set=pa.array(expected_tasks, pa.string()))
        masks["task_mismatch"] = pc.and_(pc.fill_null(known, False), pc.invert(pc.fill_null(wanted, False)))
    masks["bbox_out_of_range"] = _bad_boxes(table.column("objects"))
    relation = pc.fill_null(pc.is_in(task, value_set=pa.array(RELATION_TASKS, pa.string())), False)
    masks["bad_fact"] = pc.and_(relation, _bad_facts(table.column("fact"), table.column("objects")))
    counting = pc.fill_null(pc.equal(task, "counting"), False)
    count = table.column("count")
    masks["bad_count"] = pc.and_(counting, flag(pc.less(count, 0)))
    return {reason: m for reason, m in masks.items() if pc.any(m).as_py()}


def _bad_boxes(objects: Any) -> Any:
    """Rows with a box that is not 4 ints in 0..1000 with x1 <= x2 and y1 <= y2."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    objects = objects.combine_chunks() if isinstance(objects, pa.ChunkedArray) else objects
    n = len(objects)
    objects = objects.fill_null([]) if objects.null_count else objects
    flat = pc.list_flatten(objects)  # one struct per object
    parents = pc.list_parent_indices(objects).to_numpy(zero_copy_only=False)
    bad = np.zeros(n, bool)
    if len(flat) == 0:
        return pa.array(bad)
    boxes = flat.field("bbox")
    lengths = pc.fill_null(pc.list_value_length(boxes), 0).to_numpy(zero_copy_only=False)
    wrong_len = lengths != 4
    values = pc.list_flatten(boxes.fill_null([]) if boxes.null_count else boxes)
    vals = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    obj_bad = wrong_len.copy()
    ok = ~wrong_len
    if ok.any():
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[ok]
        quad = vals[starts[:, None] + np.arange(4)[None, :]]
        out_of_range = ((quad < 0) | (quad > BBOX_SCALE)).any(axis=1)
        inverted = (quad[:, 0] > quad[:, 2]) | (quad[:, 1] > quad[:, 3])
        obj_bad[np.flatnonzero(ok)] = out_of_range | inverted
    np.logical_or.at(bad, parents[obj_bad], True)
    return pa.array(bad)


def _bad_facts(fact: Any, objects: Any) -> Any:
    """Rows whose fact is null or points outside ``objects`` (only read for relation rows)."""
    import pyarrow.compute as pc

    n_objects = pc.fill_null(pc.list_value_length(objects), 0)
    bad = pc.is_null(fact)
    for key in ("subject", "object"):
        idx = pc.struct_field(fact, key)
        outside = pc.or_(pc.less(idx, 0), pc.greater_equal(idx, n_objects))
        bad = pc.or_(bad, pc.fill_null(outside, True))
    return bad


def any_problem(problems: dict[str, Any]) -> Any:
    """The rows of :func:`row_problems` with at least one problem (one boolean mask)."""
    import pyarrow.compute as pc

    masks = iter(problems.values())
    out = next(masks)
    for m in masks:
        out = pc.or_(out, m)
    return out


def file_tasks(shards: Any) -> list[list[str] | None]:
    """Per file of ``shards`` (:class:`~.annotations.AnnotationShards`), the tasks its rows must
    have: its ``data/<task>/`` folder, or None for bare files and globs (which mix tasks)."""
    return [None if shards.mixed or folder_task(f) is None else [folder_task(f)] for f in shards.files]


def first_ids(table: Any, mask: Any, n: int = 3) -> list[str]:
    """The ids of the first ``n`` rows of ``table`` where ``mask`` holds."""
    import pyarrow.compute as pc

    return [str(v) for v in pc.filter(table.column("id"), mask).slice(0, n).to_pylist()]
