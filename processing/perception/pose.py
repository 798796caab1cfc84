"""Person keypoints (ViTPose via ``transformers``) and the facing direction derived from them.

Top-down pose: for each person box of a record (COCO ``x, y, w, h`` in pixels of the
EXIF-transposed image), ViTPose predicts 17 COCO keypoints, which land directly on the record's
pixel grid. :class:`PoseStep` stores them in ``record.objects.keypoints`` as ``(x, y, score)`` and
sets ``facing`` / ``facing_confidence`` with :func:`~.facing.facing_from_keypoints`, keypoints
scoring below ``min_confidence`` counting as missing. The perspective task should use only
confident ``toward_camera`` / ``away_from_camera`` persons.

Example:
    >>> step = PoseStep("usyd-community/vitpose-base-simple", min_confidence=0.5)  # doctest: +SKIP
    >>> record = next(step.run([record]))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..base import BatchStep, require
from .depth_models import DTYPES, DecodedBatch, OnError, decode_batch, model_name, resolve_device, resolve_dtype, take_batch
from .facing import apply_facing, person_labels_of
from ..records import NUM_KEYPOINTS, Record

logger = logging.getLogger(__name__)


def xyxy_to_coco(xyxy: np.ndarray) -> np.ndarray:
    """Pixel ``(x1, y1, x2, y2)`` -> COCO ``(x, y, w, h)``."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def keypoints_from_pose_result(result: dict) -> np.ndarray:
    """``(17, 3)`` ``(x, y, score)`` from one person's ``post_process_pose_estimation`` dict.

    Keypoints the post-processing dropped (by its threshold) are NaN with score 0.
    """
    out = np.full((NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
    out[:, 2] = 0.0
    kp = np.asarray(_numpy(result["keypoints"]), dtype=np.float32).reshape(-1, 2)
    scores = np.asarray(_numpy(result["scores"]), dtype=np.float32).reshape(-1)
    labels = np.asarray(_numpy(result.get("labels", np.arange(len(kp)))), dtype=np.int64).reshape(-1)
    out[labels, :2] = kp
    out[labels, 2] = scores
    return out


def _numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


class PoseStep(BatchStep):
    """Predict COCO keypoints for person boxes with ViTPose and derive their facing direction.

    Args:
        model: Hub id or local folder of a ViTPose model (``VitPoseForPoseEstimation``).
        batch_size: images per forward pass (all person crops of those images go together).
        device, dtype: as in :class:`~.depth_models.DepthModelStep`.
        min_confidence: keypoints scoring below this are ignored by the facing rule.
        person_labels: labels of person boxes (case-insensitive); default: the labels the
            perspective task treats as people (:func:`~.facing.person_labels_of`, from
            ``VerifyConfig.person_labels``: OpenImages' Man, Woman, Boy, Girl too).
        min_box_size: person boxes narrower or lower than this (pixels) get no pose (counted as
            ``pose_box_too_small`` in ``record.drops``); group boxes are skipped too.
        keep_image: leave the decoded image in ``record.meta`` for the next model step (see
            ``DepthModelStep``).

    Example:
        >>> PoseStep("path/to/vitpose", min_confidence=0.5).name
        'pose'
    """

    name = "pose"

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str = "auto",
        min_confidence: float = 0.5,
        dtype: str = "auto",
        person_labels: Sequence[str] | None = None,
        min_box_size: float = 8.0,
        on_error: OnError = "warn",
        keep_image: bool = False,
    ) -> None:
        super().__init__(batch_size)
        self.keep_image = keep_image
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        if on_error not in ("error", "warn", "skip"):
            raise ValueError(f"on_error must be 'error', 'warn' or 'skip', got {on_error!r}")
        self.model_id = model_name(model)
        self._model_arg = model
        self.device_arg, self.dtype_arg = device, dtype
        self.min_confidence = min_confidence
        self.person_labels = person_labels_of(person_labels)
        self.min_box_size = min_box_size
        self.on_error = on_error
        self.model = self.processor = self.device = None

    def setup(self) -> None:
        if self.device is not None:
            return
        require("torch", "models")
        transformers = require("transformers", "models")
        self.device = resolve_device(self.device_arg)
        self.dtype = resolve_dtype(self.dtype_arg, self.device)
        logger.info("loading pose model %s on %s (%s)", self.model_id, self.device, self.dtype)
        model = transformers.VitPoseForPoseEstimation.from_pretrained(self._model_arg)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(self._model_arg)
        # ViTPose+ (mixture of experts) needs to know which dataset head to use: COCO is 0.
        self.num_experts = int(getattr(self.model.config.backbone_config, "num_experts", 1) or 1)

    def person_indices(self, record: Record) -> list[int]:
        det = record.objects
        out = []
        for i, label in enumerate(det.labels):
            if label.lower() not in self.person_labels or det.is_group[i]:
                continue
            x1, y1, x2, y2 = det.xyxy[i]
            if min(x2 - x1, y2 - y1) < self.min_box_size:
                record.drop("pose_box_too_small")
                continue
            out.append(i)
        return out

    def setup_inputs(self) -> None:
        if self.processor is None:
            self.processor = require("transformers", "models").AutoProcessor.from_pretrained(self._model_arg)

    def prepare_batch(self, records: list[Record]) -> DecodedBatch:
        """Decode the images with people and crop / normalize their boxes (the processor) on the CPU."""
        self.setup_inputs()
        people = [self.person_indices(r) for r in records]
        prepared = decode_batch(records, [i for i, idx in enumerate(people) if idx], self.on_error, keep=self.keep_image)
        if prepared.kept:
            boxes = [xyxy_to_coco(records[i].objects.xyxy[people[i]]) for i in prepared.kept]
            inputs = self.processor(images=prepared.images, boxes=[b.tolist() for b in boxes], return_tensors="pt")
            prepared.inputs = (people, boxes, inputs["pixel_values"])
        prepared.images = []
        return prepared

    def process_batch(self, records: list[Record], prepared: DecodedBatch | None = None) -> list[Record | None]:
        prepared, kept = take_batch(self, records, prepared)
        torch = require("torch", "models")
        if kept:
            people_of, boxes, pixel_values = prepared.inputs
            people = {id(records[i]): people_of[i] for i in prepared.kept}
            pixel_values = pixel_values.to(self.device, self.dtype)
            kwargs = {}
            if self.num_experts > 1:
                kwargs["dataset_index"] = torch.zeros(len(pixel_values), dtype=torch.long, device=self.device)
            with torch.inference_mode():
                outputs = self.model(pixel_values=pixel_values, **kwargs)
            outputs.heatmaps = outputs.heatmaps.float()
            results = self.processor.post_process_pose_estimation(outputs, boxes=boxes)
            for record, per_person in zip(kept, results):
                idx = people[id(record)]
                for i, result in zip(idx, per_person):
                    record.objects.keypoints[i] = keypoints_from_pose_result(result)
                apply_facing(record, min_score=self.min_confidence, indices=idx)
        return prepared.finish(records, self.keep_image)
