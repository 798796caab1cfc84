"""A FiftyOne dataset as a pipeline source: images and boxes of, e.g., one the FiftyOne zoo made from
Open Images (``IsGroupOf`` / ``IsOccluded`` / ``IsTruncated`` / ``IsDepiction`` attributes) or COCO
(``iscrowd``). ``fiftyone`` is imported lazily (``pip install 'spatialforge[fiftyone]'``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..inspect.fiftyone import _fo, load_fiftyone_dataset
from .base import Reader, _issue, _Raw

logger = logging.getLogger(__name__)

_FLAG_ATTRIBUTES = {
    "is_group": ("IsGroupOf", "iscrowd"),
    "is_occluded": ("IsOccluded",),
    "is_truncated": ("IsTruncated",),
    "is_depiction": ("IsDepiction",),
}


class FiftyOneReader(Reader):
    """Images and boxes of an existing FiftyOne dataset (e.g. from the FiftyOne zoo), as records.

    Args:
        dataset: name of the FiftyOne dataset.
        label_field: its ``Detections`` field to read (default: ``ground_truth`` if it is one, else the
            only ``Detections`` field; a ``ValueError`` lists them when there are several).
        source: source name written into the rows (default ``fiftyone``; e.g. ``openimages`` for a zoo
            Open Images dataset, whose file stems are Open Images ImageIDs).

    ``image_id`` is the file stem. Boxes are FiftyOne's relative ``[x, y, w, h]``, scaled to the
    image's pixel grid; flags come from the ``IsGroupOf`` / ``iscrowd``, ``IsOccluded``,
    ``IsTruncated`` and ``IsDepiction`` attributes and ``confidence`` becomes the score. Samples
    whose file is missing are dropped as ``missing_image``, two samples with the same stem as
    ``duplicate_image_id``, boxes without a label or with a malformed box are counted
    (``unknown_category``, ``bbox_malformed``).

    Example:
        >>> reader = FiftyOneReader("open-images-v7-validation-200", source="openimages")   # doctest: +SKIP
        >>> next(reader.run()).objects.labels[:2]                                             # doctest: +SKIP
        ['Tree', 'Person']
    """

    default_source = "fiftyone"

    def __init__(self, dataset: str, label_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        if not dataset:
            raise ValueError("source=fiftyone needs the name of a FiftyOne dataset, got an empty name")
        self.dataset_name = dataset
        self.label_field = label_field

    def _field(self, dataset) -> str:
        fo = _fo()
        schema_ = dataset.get_field_schema(embedded_doc_type=fo.Detections)
        if self.label_field is not None:
            if self.label_field not in schema_:
                raise ValueError(f"FiftyOne dataset {self.dataset_name!r} has no Detections field {self.label_field!r} "
                                 f"(Detections fields: {sorted(schema_) or 'none'})")
            return self.label_field
        if "ground_truth" in schema_:
            return "ground_truth"
        if len(schema_) == 1:
            return next(iter(schema_))
        raise ValueError(f"FiftyOne dataset {self.dataset_name!r} has {len(schema_)} Detections fields "
                         f"({sorted(schema_) or 'none'}): choose one with --fiftyone-label-field")

    def _load(self) -> dict[str, _Raw]:
        dataset = load_fiftyone_dataset(self.dataset_name)
        field = self._field(dataset)
        paths, detections = dataset.values(["filepath", f"{field}.detections"])
        out: dict[str, _Raw] = {}
        for path, dets in sorted(zip(paths, detections), key=lambda t: t[0]):
            image_id = Path(path).stem
            if image_id in out:
                self._bad("duplicate_image_id", f"{path!r} repeats image id {image_id!r}; keeping {out[image_id].path!r}",
                          self._load_drops)
                continue
            raw = _Raw(image_id=image_id, path=path, relative=True, boxes=[], flags=[])
            for det in dets or []:
                box = det.bounding_box
                if not det.label:
                    _issue(raw, "unknown_category")
                    continue
                if box is None or len(box) != 4:
                    _issue(raw, "bbox_malformed")
                    continue
                raw.boxes.append(([float(v) for v in box], str(det.label)))  # relative xywh: see _objects
                flags = {key: any(bool(det.get_field(a)) for a in names if det.has_field(a))
                         for key, names in _FLAG_ATTRIBUTES.items()}
                flags["score"] = float(det.confidence) if det.confidence is not None else 1.0
                raw.flags.append(flags)
            out[image_id] = raw
        logger.info("FiftyOne dataset %r: %d samples, boxes from %r", self.dataset_name, len(out), field)
        return out

    def _objects(self, raw: _Raw, header, fn):
        """Relative ``[x, y, w, h]`` -> pixel ``xyxy`` on the image's grid: ``x * W`` and ``x * W + w * W``
        (not ``(x + w) * W``), snapped to integers within 1e-6 px, so boxes that were whole pixels
        (COCO, Open Images) come back as the same whole pixels."""
        W, H = header.width, header.height
        boxes = [([_snap(x * W), _snap(y * H), _snap(x * W + w * W), _snap(y * H + h * H)], label)
                 for (x, y, w, h), label in raw.boxes or []]
        return super()._objects(dataclasses.replace(raw, boxes=boxes, relative=False), header, None)


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else v
