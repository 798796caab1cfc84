"""Write a dataset's rows as the files a training framework reads (``spatialforge export``).

Images are found through the loader's resolvers (``builders/resolvers.py``) and checked once
(``builders/check.scan_images``); a row whose image is missing or unreadable is never written with
another image: it goes into ``missing_rows.tsv`` and ``on_missing_image`` decides (``error``: fail
before writing anything; ``warn``: log each image and drop its rows; ``skip``: drop, one summary).
Paths in the files are absolute, or relative to ``media_root``. The output is deterministic byte for
byte: rows in shard order, grouped samples in order of their image's first row.

Files per format (``<out>/``):

==============  ==================================================================================
qwen-vl         ``messages.jsonl`` (HF messages with content parts), ``qwen_vl.json`` (finetune JSON:
                ``image`` + ``conversations``) and ``qwen_vl_dataset.json`` (its ``annotation_path`` /
                ``data_path`` entry for ``qwenvl/data/__init__.py``)
llava           ``llava.json``
internvl        ``internvl.jsonl`` + ``internvl_meta.json`` (the ``--meta_path`` of InternVL's finetune)
llamafactory    ``spatialforge.json`` + ``dataset_info.json`` (``dataset_dir`` = ``<out>``)
swift           ``swift.jsonl``
==============  ==================================================================================

Every run also writes ``export_report.json`` (counts, dropped rows by reason, image report).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ...builders.schema import ALL_CONFIG, COLUMNS
from .formats import (
    DEFAULT_FAMILY,
    STRUCTURED_KEY,
    FormatError,
    Sample,
    get_family,
    internvl_record,
    llamafactory_record,
    llava_record,
    messages_record,
    qwen_vl_record,
    structured,
    swift_record,
)

logger = logging.getLogger(__name__)

POLICIES = ("error", "warn", "skip")
DATASET_NAME = "spatialforge"
REPORT_FILE = "export_report.json"
MISSING_FILE = "missing_rows.tsv"


class MissingImagesError(FileNotFoundError):
    """Images of the rows are missing or unreadable and ``on_missing_image="error"``."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format: the record builder of each file, its default model family, the extra
    files that register the data (``extras(out, media_root, n_samples) -> {name: object}``)."""

    name: str
    files: dict[str, Callable[[Sample, str], dict]]  # file name -> record builder (.json: list, .jsonl: lines)
    family: str | None = DEFAULT_FAMILY  # None: boxes stay structured, the framework writes them per model
    extras: Callable[[str, str | None, int], dict[str, object]] | None = None
    reads: str = ""  # what the framework reads, for --help and README


def _qwen_vl_extras(out: str, media_root: str | None, n: int) -> dict[str, object]:
    return {"qwen_vl_dataset.json": {"annotation_path": os.path.join(out, "qwen_vl.json"), "data_path": media_root or ""}}


def _internvl_extras(out: str, media_root: str | None, n: int) -> dict[str, object]:
    # InternVL's build_datasets reads every key below (max_dynamic_patch is optional there).
    meta = {"root": media_root or "", "annotation": os.path.join(out, "internvl.jsonl"), "data_augment": False,
            "max_dynamic_patch": 12, "repeat_time": 1, "length": n}
    return {"internvl_meta.json": {DATASET_NAME: meta}}


def _llamafactory_extras(out: str, media_root: str | None, n: int) -> dict[str, object]:
    entry = {
        "file_name": f"{DATASET_NAME}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    return {"dataset_info.json": {DATASET_NAME: entry}}


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("qwen-vl", {"messages.jsonl": messages_record, "qwen_vl.json": qwen_vl_record},
                     extras=_qwen_vl_extras, reads="HF messages (content parts) and qwen-vl-finetune JSON"),
        ExportFormat("llava", {"llava.json": llava_record}, reads="LLaVA JSON list (id, image, conversations)"),
        ExportFormat("internvl", {"internvl.jsonl": internvl_record}, family="internvl", extras=_internvl_extras,
                     reads="InternVL meta JSON + JSONL (id, image, width, height, conversations)"),
        ExportFormat("llamafactory", {f"{DATASET_NAME}.json": llamafactory_record}, extras=_llamafactory_extras,
                     reads="LLaMA-Factory sharegpt (messages + images) + dataset_info.json"),
        ExportFormat("swift", {"swift.jsonl": swift_record}, family=None,
                     reads="ms-swift JSONL (messages + images + objects ref/bbox/bbox_type)"),
    )
}


@dataclass
class ExportReport:
    """What one export wrote and dropped."""

    format: str
    model_family: str
    rows: int = 0  # rows read
    rows_written: int = 0
    samples: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    files: list[str] = field(default_factory=list)
    images: dict = field(default_factory=dict)  # ImageReport.to_dict()

    def to_dict(self) -> dict:
        return {"format": self.format, "model_family": self.model_family, "rows": self.rows,
                "rows_written": self.rows_written, "samples": self.samples,
                "dropped_rows_by_reason": dict(sorted(self.dropped.items())), "files": self.files,
                "images": self.images}


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


class _Files:
    """The data files of a format, written as samples come (``.jsonl``: a line per sample;
    ``.json``: one list) into temporary files that :meth:`close` moves into place."""

    def __init__(self, out: str, names: list[str]) -> None:
        self.paths = {name: os.path.join(out, name) for name in names}
        self.handles = {name: open(p + ".tmp", "w", encoding="utf-8", newline="\n") for name, p in self.paths.items()}
        self.count = 0

    def write(self, records: Mapping[str, dict]) -> None:
        for name, record in records.items():
            lead = "" if name.endswith(".jsonl") else ("[\n" if self.count == 0 else ",\n")
            self.handles[name].write(lead + _dump(record) + ("\n" if name.endswith(".jsonl") else ""))
        self.count += 1

    def close(self) -> None:
        for name, f in self.handles.items():
            if not name.endswith(".jsonl"):
                f.write("\n]\n" if self.count else "[\n]\n")
            f.close()
            os.replace(self.paths[name] + ".tmp", self.paths[name])
        self.handles = {}

    def abort(self) -> None:
        """Remove what an interrupted export left (nothing after :meth:`close`)."""
        for name, f in self.handles.items():
            f.close()
            os.remove(self.paths[name] + ".tmp")
        self.handles = {}


def _write_atomic(path: str, chunks: Iterable[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


def _read_rows(shards, columns=COLUMNS) -> Iterator[list[dict]]:
    """Rows of every shard, a record batch at a time, in shard order."""
    from ...builders.annotations import iter_batches

    for path in shards.files:
        for table in iter_batches(path, shards.format, list(columns), tasks=shards.task_filter):
            yield table.to_pylist()


def _resolve(rows: list[dict], resolvers: Mapping, paths: dict) -> None:
    """Add the image paths of ``rows`` not yet in ``paths`` (None: no file), one query per source."""
    todo: dict[str, set[str]] = {}
    for row in rows:
        key = (row["source"], row["image_id"])
        if key not in paths:
            todo.setdefault(key[0], set()).add(key[1])
    for source, ids in todo.items():
        resolver = resolvers.get(source)
        found = resolver.resolve_many(sorted(ids)) if resolver is not None else {}
        for image_id in ids:
            paths[(source, image_id)] = found.get(image_id)


def _image_path(path: str, media_root: str | None, key: tuple[str, str]) -> str:
    if media_root is None:
        return path
    rel = os.path.relpath(path, media_root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ValueError(f"image {key[0]}/{key[1]} at {path!r} is not under --media-root {media_root!r}")
    return rel.replace(os.sep, "/")


def export_dataset(
    annotations: str,
    format: str,
    image_dirs: Mapping[str, str],
    out: str,
    model_family: str | None = None,
    media_root: str | None = None,
    group_by_image: bool = False,
    task: str = ALL_CONFIG,
    on_missing_image: str = "error",
    structured_rows: bool = True,
    progress: bool = False,
) -> ExportReport:
    """Write the rows of ``annotations`` (folder, file/glob or Hub repo) in ``format`` under ``out``.

    ``model_family`` defaults to the format's (``internvl`` for InternVL, ``qwen3-vl`` otherwise).
    ``structured_rows`` adds each sample's rows without their text under ``"spatialforge"`` so that
    importing the files gives back the same rows (frameworks ignore the key).
    """
    from tqdm.auto import tqdm

    from ...builders.annotations import locate_shards
    from ...builders.check import describe_bad, describe_roots, scan_images
    from ...builders.resolvers import get_resolver

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {sorted(EXPORT_FORMATS)}, got {format!r}")
    if on_missing_image not in POLICIES:
        raise ValueError(f"on_missing_image must be one of {POLICIES}, got {on_missing_image!r}")
    fmt = EXPORT_FORMATS[format]
    if fmt.family is None and model_family is not None:
        logger.warning("--model-family %s is not used by %s: its template writes the boxes for the model it trains",
                       model_family, format)
    family = model_family or fmt.family or DEFAULT_FAMILY
    get_family(family)
    if media_root is not None:
        if not os.path.isdir(media_root):
            raise ValueError(f"media_root must be an existing folder, got {media_root!r}")
        media_root = os.path.realpath(media_root)
    shards = locate_shards(annotations, task)
    resolvers = {source: get_resolver(source, os.fspath(root)) for source, root in sorted(image_dirs.items())}
    images = scan_images(shards, resolvers, progress=progress)
    report = ExportReport(format, family if fmt.family is not None else f"{format} template", images=images.to_dict())
    if images.bad and on_missing_image == "error":
        raise MissingImagesError(
            f"{len(images.bad)} images referenced by {annotations!r} are missing or unreadable "
            f"({images.rows_affected} rows; {describe_bad(images)}); roots searched: {describe_roots(images)}. "
            "Pass --on-missing-image warn or skip to leave their rows out (listed in missing_rows.tsv)."
        )
    if on_missing_image == "warn":
        for (source, image_id), status in sorted(images.bad.items()):
            logger.warning("leaving out the rows of image %s/%s: %s", source, image_id, status.status)
    os.makedirs(out, exist_ok=True)
    out = os.path.realpath(out)
    missing_lines = ["id\tsource\timage_id\tstatus\n"]
    # Samples of single rows are written as they come; grouped ones once every row is read (the rows
    # of one image sit in the shards of several tasks), in the order of their image's first row.
    groups: dict[tuple[str, str], Sample] = {}
    paths: dict[tuple[str, str], str | None] = {}
    files = _Files(out, list(fmt.files))

    def emit(sample: Sample) -> None:
        built = _build(sample, fmt, family, report)
        if built is None:
            return
        sample, records = built
        if structured_rows:
            for record in records.values():
                record[STRUCTURED_KEY] = structured(sample.rows)
        files.write(records)
        report.samples += 1
        report.rows_written += len(sample.rows)

    bar = tqdm(desc=f"Exporting {format}", unit="row", disable=not progress)
    try:
        for rows in _read_rows(shards):
            _resolve(rows, resolvers, paths)
            bar.update(len(rows))
            for row in rows:
                report.rows += 1
                key = (row["source"], row["image_id"])
                status = images.bad.get(key)
                if status is not None or paths.get(key) is None:
                    reason = status.status if status is not None else "missing"
                    report.dropped[f"image_{reason}"] += 1
                    missing_lines.append(f"{row['id']}\t{key[0]}\t{key[1]}\t{reason}\n")
                    continue
                if group_by_image and key in groups:
                    groups[key].rows.append(row)
                    continue
                size = images.mismatched[key][1] if key in images.mismatched else None
                sample = Sample([row], _image_path(paths[key], media_root, key), size)
                if group_by_image:
                    groups[key] = sample
                else:
                    emit(sample)
        for sample in groups.values():
            emit(sample)
        files.close()
    finally:
        bar.close()
        files.abort()
    report.files += list(fmt.files)
    for name, obj in (fmt.extras(out, media_root, report.samples) if fmt.extras else {}).items():
        _write_atomic(os.path.join(out, name), [json.dumps(obj, indent=2, ensure_ascii=False) + "\n"])
        report.files.append(name)
    _write_atomic(os.path.join(out, MISSING_FILE), missing_lines)
    report.files.append(MISSING_FILE)
    if report.dropped:
        logger.warning("left out %d of %d rows: %s (see %s)", sum(report.dropped.values()), report.rows,
                       dict(sorted(report.dropped.items())), os.path.join(out, MISSING_FILE))
    report.files.append(REPORT_FILE)
    _write_atomic(os.path.join(out, REPORT_FILE), [json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n"])
    return report


def _build(sample: Sample, fmt: ExportFormat, family: str, report: ExportReport):
    """``(sample, {file: record})`` without the rows the format cannot write (counted by reason,
    logged); None if no row is left."""
    try:
        return sample, {name: build(sample, family) for name, build in fmt.files.items()}
    except FormatError:
        pass
    keep = []
    for row in sample.rows:
        try:
            for build in fmt.files.values():
                build(Sample([row], sample.image, sample.image_size), family)
        except FormatError as err:
            report.dropped[err.reason] += 1
            logger.warning("leaving out row %r: %s", row.get("id"), err)
            continue
        keep.append(row)
    if not keep:
        return None
    sample = Sample(keep, sample.image, sample.image_size)
    return sample, {name: build(sample, family) for name, build in fmt.files.items()}
