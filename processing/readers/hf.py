"""A local Hugging Face dataset with an image column."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .base import BadInputError, Reader, _as_bbox, _issue, _Raw, _xywh_to_xyxy
from .coco import _positive

logger = logging.getLogger(__name__)

# Hugging Face datasets


class HFDatasetReader(Reader):
    """A Hugging Face dataset with an image column (a ``save_to_disk`` folder or a local dataset folder).

    Images that exist as files are read in place; images stored as bytes are written once to
    ``cache_dir`` (named by image id, written atomically). Boxes come from an ``objects`` column in
    COCO-like form (``bbox`` as ``[x, y, w, h]``, or ``[x1, y1, x2, y2]`` with ``bbox_format="xyxy"``;
    ``category`` as ``ClassLabel`` ints or strings; also ``label``/``labels``/``category_id``).
    ``image_id`` is the ``image_id`` or ``id`` column, else the row index (8 digits).
    """

    default_source = "hf"

    def __init__(
        self,
        path: str | os.PathLike,
        cache_dir: str | os.PathLike,
        split: str = "train",
        image_column: str | None = None,
        bbox_format: Literal["xywh", "xyxy"] = "xywh",
        **kwargs,
    ) -> None:
        super().__init__(None, **kwargs)
        if bbox_format not in ("xywh", "xyxy"):
            raise ValueError(f"bbox_format must be 'xywh' or 'xyxy', got {bbox_format!r}")
        self.path = str(path)
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.image_column = image_column
        self.bbox_format = bbox_format
        self._ds = None
        self._rows: dict[str, int] = {}

    def _dataset(self):
        if self._ds is None:
            import datasets

            p = Path(self.path)
            if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(self.path)
                if isinstance(ds, datasets.DatasetDict):
                    if self.split not in ds:
                        raise BadInputError(f"{self.path!r} has splits {sorted(ds)}, not {self.split!r}")
                    ds = ds[self.split]
            else:
                ds = datasets.load_dataset(self.path, split=self.split)
            column = self.image_column or next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
            if column is None or column not in ds.features:
                raise BadInputError(f"{self.path!r} has no image column (features {list(ds.features)})")
            self.image_column = column
            self._ds = ds.cast_column(column, datasets.Image(decode=False))
        return self._ds

    def _load(self) -> dict[str, _Raw]:
        ds = self._dataset()
        id_col = next((c for c in ("image_id", "id") if c in ds.column_names), None)
        ids = [str(v) for v in ds[id_col]] if id_col else [f"{i:08d}" for i in range(len(ds))]
        out: dict[str, _Raw] = {}
        for i, image_id in enumerate(ids):
            if image_id in out:
                self._bad("duplicate_image_id", f"row {i} repeats image id {image_id!r}; keeping the first", self._load_drops)
                continue
            out[image_id] = _Raw(image_id=image_id)
            self._rows[image_id] = i
        return out

    def _resolve(self, raw: _Raw) -> str | None:
        row = self._dataset()[self._rows[raw.image_id]]
        image = row[self.image_column] or {}
        if image.get("path") and os.path.isfile(image["path"]):
            path = image["path"]
        elif image.get("bytes"):
            path = self._cache(raw.image_id, image["bytes"])
        else:
            return None
        self._fill(raw, row)
        return path

    def _cache(self, image_id: str, data: bytes) -> str:
        import io

        from PIL import Image

        # named <image_id>.<ext>, what the loader's resolver looks for, so the output loads with
        # image_dirs={source: cache_dir}; ids that are no plain file name get a hashed name
        plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", image_id) is not None
        safe = image_id if plain else (
            hashlib.sha256(image_id.encode()).hexdigest()[:16] + "-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in image_id)[-64:])
        with Image.open(io.BytesIO(data)) as im:
            ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(im.format or "", ".img")
        target = self.cache_dir / f"{safe}{ext}"
        if not target.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return str(target)

    def _fill(self, raw: _Raw, row: dict[str, Any]) -> None:
        """Size and boxes from the row (done when the row is read, not at listing time)."""
        if _positive(row.get("width")) and _positive(row.get("height")):
            raw.width, raw.height = row["width"], row["height"]
        objects = row.get("objects")
        raw.boxes, raw.flags, raw.issues = [], [], None
        if not objects:
            return
        if isinstance(objects, dict):  # datasets' Sequence of a dict: a dict of lists
            keys = list(objects)
            objects = [dict(zip(keys, vals)) for vals in zip(*(objects[k] for k in keys))]
        names = self._class_names()
        for obj in objects:
            bbox = _as_bbox(obj.get("bbox"))
            label = next((obj[k] for k in ("category", "label", "labels", "category_id") if k in obj), None)
            if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                label = names[label] if names is not None and 0 <= label < len(names) else None
            if label is None or label == "":
                _issue(raw, "unknown_category")
                continue
            if bbox is None:
                _issue(raw, "bbox_malformed")
                continue
            raw.boxes.append((_xywh_to_xyxy(bbox) if self.bbox_format == "xywh" else bbox, str(label)))
            raw.flags.append({"is_group": bool(obj.get("iscrowd", False))})

    def _class_names(self) -> list[str] | None:
        import datasets

        feat = self._dataset().features.get("objects")
        if feat is None:
            return None
        inner = feat.feature if hasattr(feat, "feature") else feat
        if isinstance(inner, list):
            inner = inner[0]
        if isinstance(inner, dict):
            for key in ("category", "label", "labels", "category_id"):
                f = inner.get(key)
                f = getattr(f, "feature", f)
                if isinstance(f, datasets.ClassLabel):
                    return f.names
        return None
