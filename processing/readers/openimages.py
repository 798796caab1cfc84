"""OpenImages box CSVs with class descriptions and optional image-level labels."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..records import Record
from .base import BadInputError, _Raw
from .images import ImageHeader
from .table import (
    _CHUNK_ROWS,
    TableReader,
    _assemble,
    _Events,
    _images_table,
    _offsets,
    _Rows,
)

logger = logging.getLogger(__name__)

# OpenImages CSVs

_OI_REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
_OI_FLAGS = {"IsGroupOf": "is_group", "IsDepiction": "is_depiction", "IsOccluded": "is_occluded", "IsTruncated": "is_truncated"}


def read_class_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """OpenImages class descriptions CSV (``MID,name``, with or without a header row)."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2:
                continue
            if i == 0 and not row[0].startswith("/"):
                continue  # header ("LabelName,DisplayName")
            out[row[0]] = row[1]
    if not out:
        raise BadInputError(f"class descriptions {str(path)!r} hold no 'MID,name' rows")
    return out


class OpenImagesReader(TableReader):
    """OpenImages box CSVs (coordinates in ``0..1``) + class descriptions; images ``<ImageID>.jpg``.

    OpenImages boxes are not exhaustive per image. With ``image_labels`` (the human-verified
    image-level labels CSV: ImageID, Source, LabelName, Confidence), ``exhaustive_labels`` is the set
    of labels verified present (Confidence 1) in the image, whose instances the OpenImages protocol
    boxed (crowds as IsGroupOf boxes). Without it, ``exhaustive_labels`` is the empty set, so no
    counting question is asked about the image.

    The CSVs are streamed (``csv`` module, one row at a time) into Arrow columns: peak memory of the
    conversion is about 100 bytes per box row (twice while sorting), e.g. about 3 GB for the 14.6M
    rows of OpenImages v7 train, never the rows as Python objects.
    """

    default_source = "openimages"
    id_field = "ImageID"
    kind = "openimages"

    def __init__(
        self,
        annotations: str | os.PathLike | Sequence[str | os.PathLike],
        images: str | os.PathLike | None = None,
        class_descriptions: str | os.PathLike | None = None,
        image_labels: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        super().__init__(images, **kwargs)
        if class_descriptions is None:
            raise ValueError("OpenImages needs class_descriptions (the 'MID,name' CSV), got None")
        paths = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
        self.annotations = [Path(p) for p in paths]
        self.class_descriptions = Path(class_descriptions)
        self.image_labels = Path(image_labels) if image_labels is not None else None

    def _inputs(self) -> list[Path]:
        return [*self.annotations, self.class_descriptions, *([self.image_labels] if self.image_labels is not None else [])]

    def _convert(self, events: _Events) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        names = read_class_descriptions(self.class_descriptions)
        labels = list(dict.fromkeys(names.values()))
        code = {label: i for i, label in enumerate(labels)}
        mid_code = {mid: code[name] for mid, name in names.items()}
        rows = _Rows(pa.string())
        for path in self.annotations:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                missing = [c for c in _OI_REQUIRED if header is None or c not in header]
                if missing:
                    raise BadInputError(f"box CSV {str(path)!r} lacks columns {missing} (header {header!r})")
                col = {name: i for i, name in enumerate(header)}
                i_id, i_label = col["ImageID"], col["LabelName"]
                i_box = [col[c] for c in ("XMin", "YMin", "XMax", "YMax")]
                i_flags = [col.get(c) for c in _OI_FLAGS]  # is_group, is_depiction, is_occluded, is_truncated
                i_conf = col.get("Confidence")
                for line_no, row in enumerate(reader, start=2):
                    if len(row) != len(header):
                        events.add("image", "malformed_row",
                                   lambda: f"{path.name}:{line_no}: {len(row)} fields, expected {len(header)}: {row!r}")
                        continue
                    image_id = row[i_id]
                    label = mid_code.get(row[i_label])
                    if label is None:
                        rows.issue(image_id, "unknown_category")
                        continue
                    try:
                        xyxy = [float(row[i]) for i in i_box]
                    except ValueError:
                        rows.issue(image_id, "bbox_malformed")
                        continue
                    flags = [i is not None and row[i].strip() == "1" for i in i_flags]
                    score = 1.0
                    if i_conf is not None:
                        try:
                            score = float(row[i_conf])
                        except ValueError:
                            score = 1.0
                    rows.box(image_id, xyxy, label, *flags, score=score)
        table = rows.table()
        ids = pc.unique(table["img"].combine_chunks())
        table = table.set_column(0, "img", pc.index_in(table["img"], value_set=ids).cast(pa.int64()))
        images = _images_table(ids, relative=True)
        out = _assemble(images, table, labels)
        if self.image_labels is not None:
            out = out.append_column("verified", self._verified(out["image_id"].combine_chunks(), names))
        return out

    def _verified(self, image_ids: Any, names: dict[str, str]) -> Any:
        """Per image (sorted ids), the labels verified present, as a list column."""
        import pyarrow as pa
        import pyarrow.compute as pc

        chunks: list[tuple[Any, Any]] = []
        ids: list[str] = []
        labels: list[str] = []
        with open(self.image_labels, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            need = ("ImageID", "LabelName", "Confidence")
            if header is None or any(c not in header for c in need):
                raise BadInputError(f"image-labels CSV {str(self.image_labels)!r} needs columns {need}, got {header!r}")
            col = {name: i for i, name in enumerate(header)}  # the last of repeated names, as csv.DictReader
            i_id, i_label, i_conf = col["ImageID"], col["LabelName"], col["Confidence"]
            for row in reader:
                if not row:
                    continue  # blank line (csv.DictReader skips them)
                try:
                    present = float(row[i_conf]) >= 1.0
                except (IndexError, ValueError):
                    present = False
                if present and i_label < len(row) and i_id < len(row) and row[i_label] in names:
                    ids.append(row[i_id])
                    labels.append(names[row[i_label]])
                    if len(ids) >= _CHUNK_ROWS:
                        chunks.append((pa.array(ids, pa.string()), pa.array(labels, pa.string())))
                        ids, labels = [], []
        chunks.append((pa.array(ids, pa.string()), pa.array(labels, pa.string())))
        img = pa.concat_arrays([c[0] for c in chunks])
        lab = pa.concat_arrays([c[1] for c in chunks])
        pos = pc.index_in(img, value_set=image_ids)
        keep = pc.is_valid(pos)
        pos = pos.filter(keep).to_numpy(zero_copy_only=False).astype(np.int64)
        lab = lab.filter(keep)
        order = np.argsort(pos, kind="stable")
        return pa.ListArray.from_arrays(_offsets(pos[order], len(image_ids)), lab.take(pa.array(order, pa.int64())))

    def _finish(self, record: Record, raw: _Raw, header: ImageHeader, fn) -> None:
        verified = (raw.extra or {}).get("verified") if self.image_labels is not None else None
        record.exhaustive_labels = set(verified or ())
