"""Object boxes from Hugging Face ``transformers`` detectors, as a batch pipeline step.

Two families, chosen from the model's config (``mode="auto"``) or explicitly:

* **closed set** (``AutoModelForObjectDetection``: DETR, RT-DETR, Deformable / Conditional DETR):
  the model's own classes (``config.id2label``); ``labels=`` keeps only those classes;
* **open vocabulary** (``AutoModelForZeroShotObjectDetection``: OWLv2, OWL-ViT, Grounding DINO):
  prompted with a label vocabulary, by default the 365 Objects365 categories
  (:data:`~.objects365_labels.OBJECTS365_PROMPTS`), split into prompts the model can take.

Boxes are mapped to each record's EXIF-transposed pixel grid (``target_sizes=(height, width)``),
thresholded, de-duplicated by class-wise NMS and written to ``record.objects``.

OWL text queries are encoded once: OWLv2 / OWL-ViT score image patches against each label's text
embedding, and those embeddings depend on the labels only, so the step encodes the vocabulary
through the text tower on the first batch and then runs only the image tower and the class / box
heads per batch (:func:`owl_detect`, equal to the model's forward within float rounding; checked
once on the first image, with a fallback to the plain forward). Grounding DINO cannot be cached
this way: its encoder fuses text and image features (cross-attention both ways) before the
decoder, so its text features depend on the image and every batch runs the full model.

Model boxes are not exhaustive: a detector misses instances, so counting questions on them would
be wrong. Records therefore get ``exhaustive_labels = set()`` (nothing may be counted) unless
``exhaustive_labels=`` names labels the user trusts, and ``box_source = f"model:{model}"``.

Example:
    >>> step = DetectionStep("google/owlv2-base-patch16-ensemble", labels=["cup", "person"])  # doctest: +SKIP
    >>> record = next(step.run([record]))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..base import BatchStep, require
from .depth_models import DTYPES, DecodedBatch, OnError, decode_batch, model_name, resolve_device, resolve_dtype, take_batch
from ..records import DETECTOR_OBJECTS, Detections, Record, box_iou

logger = logging.getLogger(__name__)

Mode = Literal["auto", "closed", "open"]
OPEN_VOCABULARY_TYPES = ("owlv2", "owlvit", "grounding-dino", "grounding_dino", "mm-grounding-dino", "mm_grounding_dino")
GROUNDING_TYPES = ("grounding-dino", "grounding_dino", "mm-grounding-dino", "mm_grounding_dino")
OWL_TYPES = ("owlv2", "owlvit")
# The one-time check of the cached OWL path against the plain forward: labels compared, tolerance
# on probabilities and normalized boxes (fp32; half precision rounds differently per op order).
OWL_CHECK_LABELS = 8
OWL_CHECK_ATOL = {"fp32": 1e-4, "half": 2e-2}
BESIDE_MIN_SCORE = 0.05
"""Beside source annotations a detector's boxes only check them, so they are kept down to this score
(the usual floor of COCO-style detection results) even under a higher ``threshold``: a low-scored box
may be an instance the annotations leave out, and a false contradiction costs one question where a
missed one costs a wrong answer."""


def check_threshold(record: Record, threshold: float, beside: bool, overwrite: bool = False) -> float:
    """The score threshold of a detector's boxes for ``record``: ``threshold``, or at most
    :data:`BESIDE_MIN_SCORE` when they go beside its annotations (:func:`attach_detections`)."""
    return min(threshold, BESIDE_MIN_SCORE) if beside and len(record.objects) and not overwrite else threshold


# -- boxes ---------------------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of kept boxes, highest score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is > ``iou_threshold``.
    Ties in score keep the earlier box (stable sort), so results are deterministic.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        iou = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def class_wise_nms(boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str], iou_threshold: float) -> np.ndarray:
    """NMS within each label only (a cup on a table survives); kept indices, highest score first."""
    labels = np.asarray(list(labels), dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    keep = [np.flatnonzero(labels == label)[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
            for label in dict.fromkeys(labels.tolist())]
    if not keep:
        return np.zeros(0, dtype=np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]


def merge_across_prompts(boxes: np.ndarray, scores: np.ndarray, prompts: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy, highest score first: a box is dropped when it overlaps (IoU >= ``iou_threshold``) a kept
    box found by another prompt. Kept indices, highest score first (ties: the earlier box)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if not any(prompts[k] != prompts[i] and iou[i, k] >= iou_threshold for k in keep):
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def detections_from_transformers(
    result: Mapping[str, Any],
    id2label: Mapping[int, str] | Sequence[str] | None,
    width: int,
    height: int,
    threshold: float = 0.0,
    nms_iou: float | None = None,
    min_size: float = 1.0,
) -> tuple[Detections, dict[str, int]]:
    """:class:`Detections` from one image's ``post_process_*_detection`` result.

    ``result`` has ``boxes`` (pixel xyxy on a ``width`` x ``height`` grid), ``scores`` and either
    integer ``labels`` (mapped through ``id2label``) or string ``text_labels``. Boxes are clipped to
    the grid; boxes below ``threshold``, smaller than ``min_size`` pixels after clipping, or
    suppressed by class-wise NMS (``nms_iou``) are dropped.

    An optional ``prompts`` entry (one int per box: which prompt of a vocabulary split across
    several prompts found it) merges across prompts: a model asked one prompt at a time finds the
    same object once per prompt, under that prompt's best label, so of boxes from *different*
    prompts overlapping with IoU >= ``nms_iou`` only the highest-scoring one is kept (boxes of one
    prompt are left to the class-wise NMS: the model chose their labels among each other).

    Returns the detections and the number dropped per reason (``low_score``, ``degenerate_box``,
    ``nms``, ``prompt_merge``).
    """
    boxes = _numpy(result["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = _numpy(result["scores"]).astype(np.float32).reshape(-1)
    text = result.get("text_labels")
    if text is not None:
        labels = [str(t) for t in text]
    else:
        ids = _numpy(result["labels"]).astype(np.int64).reshape(-1)
        if id2label is None:
            raise ValueError("integer labels need id2label")
        labels = [str(id2label[int(i)]) for i in ids]
    drops = {"low_score": 0, "degenerate_box": 0, "nms": 0, "prompt_merge": 0}
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    ok = finite & (scores >= threshold)
    drops["low_score"] = int((~ok).sum())
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    # Models may emit x2 < x1 for garbage queries; such boxes cannot be repaired, only dropped.
    big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    drops["degenerate_box"] = int((ok & ~big).sum())
    ok &= big
    idx = np.flatnonzero(ok)
    if nms_iou is not None and idx.size:
        kept = class_wise_nms(boxes[idx], scores[idx], [labels[i] for i in idx], nms_iou)
        drops["nms"] = int(idx.size - kept.size)
        idx = idx[kept]
        prompts = result.get("prompts")
        if prompts is not None and idx.size:
            merged = merge_across_prompts(boxes[idx], scores[idx], np.asarray(prompts).reshape(-1)[idx], nms_iou)
            drops["prompt_merge"] = int(idx.size - merged.size)
            idx = idx[merged]
    else:
        idx = idx[np.argsort(-scores[idx], kind="stable")]
    det = Detections(xyxy=boxes[idx], labels=[labels[i] for i in idx], scores=scores[idx])
    return det, drops


# -- grounding prompts ---------------------------------------------------------------------------
def pack_prompts(label_token_counts: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split labels (given their token counts) into prompts of at most ``max_tokens`` tokens.

    Each label costs its tokens plus one for the ``.`` separator; order is kept.
    """
    chunks: list[list[int]] = []
    used = 0
    for i, n in enumerate(label_token_counts):
        cost = n + 1
        if cost > max_tokens:
            raise ValueError(f"label #{i} needs {cost} tokens, more than a prompt can take ({max_tokens})")
        if not chunks or used + cost > max_tokens:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += cost
    return chunks


def grounding_label_scores(logits: Any, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per-label scores ``(batch, queries, labels)`` from Grounding DINO token logits.

    A label's score is the highest token probability inside its token span ``[start, end)``, as
    in Grounding DINO's phrase grounding; we score labels ourselves rather than decoding text, so
    a box always gets one vocabulary label.
    """
    probs = _numpy(logits.sigmoid() if hasattr(logits, "sigmoid") else 1 / (1 + np.exp(-np.asarray(logits))))
    return np.stack([probs[..., s:e].max(axis=-1) for s, e in spans], axis=-1)


def center_to_corners(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized ``(cx, cy, w, h)`` -> pixel ``(x1, y1, x2, y2)`` on a ``width`` x ``height`` grid."""
    b = np.asarray(boxes, dtype=np.float64)
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=-1)


# -- OWL with text queries encoded once ------------------------------------------------------------
def _owl_output_class(model: Any) -> type | None:
    """The model family's own detection output class (``Owlv2ObjectDetectionOutput`` ...), which the
    processors' post-processing reads."""
    import sys

    module = sys.modules.get(type(model).__module__)
    name = type(model).__name__.replace("ForObjectDetection", "ObjectDetectionOutput")
    return getattr(module, name, None) if name != type(model).__name__ else None


def owl_cache_support(model: Any) -> str | None:
    """Why ``model`` cannot run with precomputed text queries, or ``None`` when it can.

    :func:`owl_detect` composes the public pieces of ``Owlv2ForObjectDetection`` /
    ``OwlViTForObjectDetection`` (``image_embedder``, ``class_predictor``, ``box_predictor`` and the
    base model's ``get_text_features``); a model without them (another version, a wrapper) takes
    the plain forward.
    """
    base = getattr(model, str(getattr(model, "base_model_prefix", "")), None)
    owners = {"image_embedder": model, "class_predictor": model, "box_predictor": model, "get_text_features": base}
    missing = [name for name, owner in owners.items() if not callable(getattr(owner, name, None))]
    if missing:
        return f"{type(model).__name__} has no {', '.join(missing)}"
    if _owl_output_class(model) is None:
        return f"no detection output class beside {type(model).__name__}"
    return None


def owl_text_queries(model: Any, input_ids: Any, attention_mask: Any = None) -> tuple[Any, Any]:
    """Text query embeddings ``(labels, dim)`` and query mask ``(labels,)`` of tokenized labels.

    As ``Owl*Model.forward`` makes them for the detection head: projected pooled text features,
    L2-normalized; a query whose first token id is 0 is padding (mask ``False``), as in the forward.
    """
    torch = require("torch", "models")
    base = getattr(model, model.base_model_prefix)
    out = base.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    embeds = out if isinstance(out, torch.Tensor) else out.pooler_output  # a tensor before transformers 5
    return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True), input_ids[:, 0] > 0


def owl_detect(model: Any, pixel_values: Any, query_embeds: Any, query_mask: Any) -> Any:
    """OWLv2 / OWL-ViT detection with precomputed text queries: the model's forward minus the text tower.

    ``query_embeds`` ``(labels, dim)`` and ``query_mask`` ``(labels,)`` from :func:`owl_text_queries`
    are shared by every image. Returns the family's ``*ObjectDetectionOutput`` (``logits``
    ``(batch, patches, labels)``, ``pred_boxes``, ``objectness_logits`` for OWLv2, embeddings), which
    ``post_process_object_detection`` / ``post_process_grounded_object_detection`` accept as the
    forward's. ``text_model_output`` / ``vision_model_output`` are left out.
    """
    feature_map = model.image_embedder(pixel_values=pixel_values)[0]  # (B, h, w, hidden)
    b, h, w, d = feature_map.shape
    image_feats = feature_map.reshape(b, h * w, d)
    queries = query_embeds.unsqueeze(0).expand(b, -1, -1)
    mask = query_mask.unsqueeze(0).expand(b, -1)
    logits, class_embeds = model.class_predictor(image_feats, queries, mask)
    fields = {"image_embeds": feature_map, "text_embeds": queries, "logits": logits, "class_embeds": class_embeds,
              "pred_boxes": model.box_predictor(image_feats, feature_map)}
    if callable(getattr(model, "objectness_predictor", None)):  # OWLv2 only
        fields["objectness_logits"] = model.objectness_predictor(image_feats)
    return _owl_output_class(model)(**fields)


# -- the step ------------------------------------------------------------------------------------
class DetectionStep(BatchStep):
    """Detect objects with a ``transformers`` detector and write them to ``record.objects``.

    Args:
        model: Hub id or local folder (loaded once per worker in :meth:`setup`).
        labels: open vocabulary: the prompts (default: the 365 Objects365 categories); closed set:
            classes to keep (default: all of the model's classes).
        threshold: minimum score of a kept box (beside annotations: at most :data:`BESIDE_MIN_SCORE`).
        nms_iou: class-wise NMS IoU threshold (``None`` disables NMS).
        batch_size, device, dtype: as in :class:`~.depth_models.DepthModelStep`.
        mode: ``auto`` (from the config's ``model_type``), ``closed`` or ``open``.
        labels_per_prompt: open vocabulary: labels per forward pass (OWL default: all; Grounding
            DINO: as many as fit ``config.max_text_len`` tokens). With cached OWL text queries:
            labels per text-tower pass when the vocabulary is encoded (results do not change).
        exhaustive_labels: labels whose every instance the detector is trusted to find (default
            none: model boxes never feed counting questions).
        overwrite: replace boxes a record already has; by default such records pass unchanged.
        beside: records that already have boxes (source annotations) get the detector's boxes in
            ``record.meta["detector_objects"]`` instead: questions they contradict (a confident
            box of the counted or named label that no annotation covers) are dropped by the tasks
            (``detector_extra_instance``, see :mod:`.verify`).
        on_error: unreadable images / size mismatches (see ``DepthModelStep``).
        keep_image: leave the decoded image in ``record.meta`` for the next model step (see
            ``DepthModelStep``).
        cache_text_queries: OWLv2 / OWL-ViT: encode the vocabulary once per worker, on the first
            batch, and run only the image side per batch (:func:`owl_detect`; the first batch also
            checks it against the plain forward on one image and a few labels, and falls back with a
            logged note if it differs); ``False`` runs the plain forward, text tower included, on
            every batch. Grounding DINO ignores it (its encoder fuses text with the image).

    Per-record drop counts (``record.drops``): ``detection_low_score``, ``detection_degenerate_box``,
    ``detection_nms``.
    """

    name = "detection"

    def __init__(
        self,
        model: str,
        labels: Sequence[str] | None = None,
        threshold: float = 0.3,
        nms_iou: float | None = 0.5,
        batch_size: int = 8,
        device: str = "auto",
        mode: Mode = "auto",
        dtype: str = "auto",
        labels_per_prompt: int | None = None,
        exhaustive_labels: Sequence[str] | None = None,
        overwrite: bool = False,
        beside: bool = False,
        on_error: OnError = "warn",
        min_size: float = 1.0,
        keep_image: bool = False,
        cache_text_queries: bool = True,
    ) -> None:
        super().__init__(batch_size)
        self.keep_image = keep_image
        if mode not in ("auto", "closed", "open"):
            raise ValueError(f"mode must be 'auto', 'closed' or 'open', got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1] or None, got {nms_iou}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        if on_error not in ("error", "warn", "skip"):
            raise ValueError(f"on_error must be 'error', 'warn' or 'skip', got {on_error!r}")
        if labels is not None and not labels:
            raise ValueError("labels must be None or a non-empty list")
        self.model_id = model_name(model)
        self._model_arg = model
        self.labels = None if labels is None else [str(label) for label in labels]
        self.threshold, self.nms_iou, self.min_size = threshold, nms_iou, min_size
        self.device_arg, self.dtype_arg, self.mode_arg = device, dtype, mode
        self.labels_per_prompt = labels_per_prompt
        self.exhaustive_labels = set(exhaustive_labels) if exhaustive_labels else set()
        self.overwrite, self.on_error, self.beside = overwrite, on_error, beside
        self.model = self.processor = self.device = None
        self.mode: str | None = None
        self.cache_text_queries = cache_text_queries
        # (model the queries were encoded with, (embeds, mask) or None for the plain forward): keyed
        # by the model object, so a model swapped in after setup is never paired with stale queries.
        self._owl_queries: tuple[Any, tuple | None] | None = None

    def setup(self) -> None:
        if self.device is not None:
            return
        require("torch", "models")
        transformers = require("transformers", "models")
        config = transformers.AutoConfig.from_pretrained(self._model_arg)
        self.model_type = config.model_type
        self.mode = self.mode_arg
        if self.mode == "auto":
            self.mode = "open" if config.model_type in OPEN_VOCABULARY_TYPES else "closed"
        self.device = resolve_device(self.device_arg)
        self.dtype = resolve_dtype(self.dtype_arg, self.device)
        logger.info("loading %s-set detector %s on %s (%s)", self.mode, self.model_id, self.device, self.dtype)
        if self.mode == "open":
            auto_model, auto_processor = transformers.AutoModelForZeroShotObjectDetection, transformers.AutoProcessor
        else:
            auto_model, auto_processor = transformers.AutoModelForObjectDetection, transformers.AutoImageProcessor
        self.model = auto_model.from_pretrained(self._model_arg).to(device=self.device, dtype=self.dtype).eval()
        self.processor = auto_processor.from_pretrained(self._model_arg)
        if self.mode == "open":
            from .objects365_labels import OBJECTS365_PROMPTS

            self.vocabulary = list(self.labels or OBJECTS365_PROMPTS)
            self.prompts = self._plan_prompts()
        else:
            known = set(self.model.config.id2label.values())
            unknown = sorted(set(self.labels or ()) - known)
            if unknown:
                raise ValueError(f"labels {unknown} are not classes of {self.model_id} (it has {sorted(known)[:20]}...)")

    def _plan_prompts(self) -> list[list[int]]:
        n = len(self.vocabulary)
        if self.model_type in GROUNDING_TYPES:
            tok = self.processor.tokenizer
            counts = [len(tok(label.lower(), add_special_tokens=False)["input_ids"]) for label in self.vocabulary]
            max_tokens = int(getattr(self.model.config, "max_text_len", 256)) - 2  # [CLS] ... [SEP]
            chunks = pack_prompts(counts, max_tokens)
            if self.labels_per_prompt:
                chunks = [c[i : i + self.labels_per_prompt] for c in chunks for i in range(0, len(c), self.labels_per_prompt)]
            return chunks
        size = self.labels_per_prompt or n
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def setup_inputs(self) -> None:
        """Nothing: :meth:`prepare_batch` only decodes."""

    def prepare_batch(self, records: list[Record]) -> DecodedBatch:
        """Decode the images of the records that need boxes (the processor runs with the model:
        its text inputs and padding depend on the prompts)."""
        todo = [i for i, r in enumerate(records) if self.overwrite or self.beside or not len(r.objects)]
        return decode_batch(records, todo, self.on_error, keep=self.keep_image)

    def process_batch(self, records: list[Record], prepared: DecodedBatch | None = None) -> list[Record | None]:
        prepared, kept = take_batch(self, records, prepared)
        torch = require("torch", "models")
        images = prepared.images
        if kept:
            sizes = [(r.height, r.width) for r in kept]
            with torch.inference_mode():
                results = self._detect_open(images, sizes) if self.mode == "open" else self._detect_closed(images, sizes)
            for record, result in zip(kept, results):
                self._write(record, result)
        return prepared.finish(records, self.keep_image)

    def _inputs(self, **kwargs):
        inputs = self.processor(return_tensors="pt", **kwargs)
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}

    def _detect_closed(self, images: list, sizes: list[tuple[int, int]]) -> list[dict]:
        outputs = self.model(**self._inputs(images=images))
        for key in ("logits", "pred_boxes"):
            if getattr(outputs, key, None) is not None:
                setattr(outputs, key, getattr(outputs, key).float())
        # threshold 0 here: our own threshold and NMS apply after the label filter.
        results = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        id2label = self.model.config.id2label
        out = []
        for r in results:
            labels = [str(id2label[int(i)]) for i in _numpy(r["labels"]).reshape(-1)]
            out.append({"boxes": r["boxes"], "scores": r["scores"], "text_labels": labels})
        if self.labels is not None:
            wanted = set(self.labels)
            for r in out:
                keep = np.asarray([label in wanted for label in r["text_labels"]], dtype=bool)
                r["boxes"], r["scores"] = _numpy(r["boxes"]).reshape(-1, 4)[keep], _numpy(r["scores"]).reshape(-1)[keep]
                r["text_labels"] = [label for label, k in zip(r["text_labels"], keep) if k]
        return out

    def _detect_open(self, images: list, sizes: list[tuple[int, int]]) -> list[dict]:
        """Boxes for the whole vocabulary.

        OWL scores every label as its own text query against image-only boxes, so prompts split
        only the label axis: their logits are joined and post-processed once, exactly as if all
        labels were one prompt. With cached text queries (:meth:`_owl_text_queries`) one image pass
        serves the whole vocabulary; otherwise one forward pass per prompt, on pixels preprocessed
        once. Grounding DINO's boxes depend on the prompt: one forward pass per prompt, each
        prompt's boxes carry its index, and :func:`detections_from_transformers` merges them across
        prompts.
        """
        if self.model_type not in GROUNDING_TYPES:
            return self._detect_owl(images, sizes)
        parts: list[list[dict]] = [[] for _ in images]
        for k, chunk in enumerate(self.prompts):
            labels = [self.vocabulary[i] for i in chunk]
            for i, r in enumerate(self._grounding(images, sizes, labels)):
                parts[i].append({**r, "prompts": np.full(len(r["scores"]), k, dtype=np.int64)})
        return [
            {
                "boxes": np.concatenate([_numpy(c["boxes"]).reshape(-1, 4) for c in chunks]),
                "scores": np.concatenate([_numpy(c["scores"]).reshape(-1) for c in chunks]),
                "text_labels": [str(t) for c in chunks for t in c["text_labels"]],
                "prompts": np.concatenate([c["prompts"] for c in chunks]),
            }
            for chunks in parts
        ]

    def _detect_owl(self, images: list, sizes: list[tuple[int, int]]) -> list[dict]:
        torch = require("torch", "models")
        pixel_values = self._inputs(images=images)["pixel_values"]
        queries = self._owl_text_queries(pixel_values[:1])
        if queries is not None:
            outputs = owl_detect(self.model, pixel_values, *queries)
            outputs.logits = outputs.logits.float()
        else:
            logits = []
            for chunk in self.prompts:
                labels = [self.vocabulary[i] for i in chunk]
                outputs = self.model(**self._inputs(text=[labels] * len(images)), pixel_values=pixel_values)
                logits.append(outputs.logits.float()[..., : len(labels)])  # (B, queries, labels of this prompt)
            outputs.logits = torch.cat(logits, dim=-1)
        outputs.pred_boxes = outputs.pred_boxes.float()
        # threshold 0 here: the step thresholds itself, counting what it drops.
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=0.0, target_sizes=sizes, text_labels=[self.vocabulary] * len(images)
        )
        return [{"boxes": r["boxes"], "scores": r["scores"], "text_labels": [str(t) for t in r["text_labels"]]}
                for r in results]

    def _owl_text_queries(self, pixel_values: Any) -> tuple | None:
        """The vocabulary's OWL text queries ``(embeds, mask)``, encoded on first use, one text pass
        per prompt; ``None`` when the plain forward must run (unsupported model, check failed, or
        ``cache_text_queries=False``).

        On first use the cached path is compared with the plain forward on ``pixel_values`` (one
        image) and the first :data:`OWL_CHECK_LABELS` labels, so a transformers release that
        composes the forward differently falls back instead of yielding different boxes.
        """
        if self._owl_queries is not None and self._owl_queries[0] is self.model:
            return self._owl_queries[1]
        torch = require("torch", "models")
        reason = owl_cache_support(self.model) if self.cache_text_queries else "cache_text_queries=False"
        queries = None
        if reason is None:
            parts = []
            for chunk in self.prompts:
                tokens = self._inputs(text=[[self.vocabulary[i] for i in chunk]])
                parts.append(owl_text_queries(self.model, tokens["input_ids"], tokens.get("attention_mask")))
            queries = (torch.cat([e for e, _ in parts]), torch.cat([m for _, m in parts]))
            reason = self._owl_check(pixel_values, queries)
            if reason is not None:
                queries = None
        if queries is None:
            logger.info("%s: text queries re-encoded with every batch (plain forward): %s", self.model_id, reason)
        else:
            logger.info("%s: %d text queries encoded once for all batches", self.model_id, len(queries[0]))
        self._owl_queries = (self.model, queries)
        return queries

    def _owl_check(self, pixel_values: Any, queries: tuple) -> str | None:
        """``None`` when the cached path matches the plain forward on one image, else the difference."""
        labels = self.vocabulary[:OWL_CHECK_LABELS]
        plain = self.model(**self._inputs(text=[labels]), pixel_values=pixel_values)
        cached = owl_detect(self.model, pixel_values, queries[0][: len(labels)], queries[1][: len(labels)])
        atol = OWL_CHECK_ATOL["fp32" if self.dtype == require("torch", "models").float32 else "half"]
        diff = max(float((plain.logits.float().sigmoid() - cached.logits.float().sigmoid()).abs().max()),
                   float((plain.pred_boxes.float() - cached.pred_boxes.float()).abs().max()))
        if diff > atol:
            return f"the cached path differs from the forward by {diff:.2g} (> {atol}) on this transformers version"
        return None

    def _grounding(self, images: list, sizes: list[tuple[int, int]], labels: list[str]) -> list[dict]:
        tok = self.processor.tokenizer
        prompt = " ".join(f"{label.lower()}." for label in labels)
        inputs = self._inputs(images=images, text=[prompt] * len(images))
        spans, pos = [], 1  # after [CLS]
        expected = [tok.cls_token_id]
        for label in labels:
            ids = tok(label.lower(), add_special_tokens=False)["input_ids"]
            spans.append((pos, pos + len(ids)))
            expected += ids + tok(".", add_special_tokens=False)["input_ids"]
            pos += len(ids) + 1
        got = inputs["input_ids"][0].tolist()[: len(expected)]
        if got != expected:
            raise ValueError(f"cannot locate labels in the Grounding DINO prompt {prompt!r}: tokens {got} != {expected}")
        outputs = self.model(**inputs)
        scores = grounding_label_scores(outputs.logits.float(), spans)  # (B, Q, L)
        best, which = scores.max(-1), scores.argmax(-1)
        boxes = _numpy(outputs.pred_boxes)
        return [
            {"boxes": center_to_corners(boxes[b], w, h), "scores": best[b], "text_labels": [labels[j] for j in which[b]]}
            for b, (h, w) in enumerate(sizes)
        ]

    def _write(self, record: Record, result: dict) -> None:
        attach_result(record, result, f"model:{self.model_id}", threshold=self.threshold, beside=self.beside,
                      nms_iou=self.nms_iou, min_size=self.min_size, overwrite=self.overwrite,
                      exhaustive_labels=self.exhaustive_labels)


def attach_result(record: Record, result: Mapping[str, Any], box_source: str, *, threshold: float, beside: bool,
                  nms_iou: float | None = None, min_size: float = 1.0, overwrite: bool = False,
                  exhaustive_labels: Sequence[str] = ()) -> None:
    """One image's detector ``result`` (boxes on the record's grid, scores, ``text_labels``) into
    ``record``, as every detector step does: :func:`check_threshold`, then
    :func:`detections_from_transformers`, then :func:`attach_detections`."""
    threshold = check_threshold(record, threshold, beside, overwrite)
    det, drops = detections_from_transformers(result, None, record.width, record.height, threshold, nms_iou, min_size)
    attach_detections(record, det, drops, box_source, beside=beside, overwrite=overwrite,
                      exhaustive_labels=exhaustive_labels)


def attach_detections(record: Record, det: Detections, drops: Mapping[str, int], box_source: str, *, beside: bool,
                      overwrite: bool = False, exhaustive_labels: Sequence[str] = ()) -> None:
    """Give ``record`` a detector's boxes, as every detector step does (a model, a results file).

    The drops of :func:`detections_from_transformers` are counted as ``detection_<reason>``. With
    ``beside`` and boxes already there (source annotations, unless ``overwrite``), the boxes go to
    ``record.meta["detector_objects"]``, where the tasks check the annotations against them;
    otherwise they become the record's objects (``box_source``), exhaustive for
    ``exhaustive_labels`` only.
    """
    for reason, n in drops.items():
        if n:
            record.drop(f"detection_{reason}", n)
    if beside and len(record.objects) and not overwrite:
        record.meta[DETECTOR_OBJECTS] = det
        return
    record.objects = det
    record.box_source = box_source
    record.exhaustive_labels = set(exhaustive_labels)
