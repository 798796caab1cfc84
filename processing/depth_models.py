"""Monocular depth from Hugging Face ``transformers`` models, as a batch pipeline step.

:class:`DepthModelStep` loads a depth model once per worker (``AutoModelForDepthEstimation`` +
``AutoImageProcessor``: Depth Anything V2 relative / metric, DPT, Depth Pro, ZoeDepth, GLPN),
runs batches under ``torch.inference_mode()`` and writes a :class:`~.records.DepthMap` on each
record's EXIF-transposed pixel grid.

The output convention is read from the model's config, because getting it wrong silently flips
every near/far answer (see :func:`depth_convention`):

* relative Depth Anything, DPT / MiDaS: inverse depth (disparity), larger = nearer, no scale;
* Depth Anything metric (``config.depth_estimation_type == "metric"``), Depth Pro (after its
  post-processing, which turns its inverse depth into meters), ZoeDepth, GLPN: meters.

Also here: :func:`resolve_device` / :func:`resolve_dtype`, shared by the detection and pose steps.

Example:
    >>> step = DepthModelStep("depth-anything/Depth-Anything-V2-Small-hf", batch_size=8)  # doctest: +SKIP
    >>> record = next(step.run([record]))  # doctest: +SKIP
    >>> record.depth.kind, record.depth.source  # doctest: +SKIP
    ('inverse_depth', 'model:depth-anything/Depth-Anything-V2-Small-hf:inverse_depth')
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .base import BatchStep, require
from .records import DepthKind, DepthMap, Record

logger = logging.getLogger(__name__)

OnError = Literal["error", "warn", "skip"]

# model_type -> (kind, metric) of the *post-processed* prediction. Depth Anything is decided by its
# config (relative or metric) in depth_convention.
MODEL_CONVENTIONS: dict[str, tuple[DepthKind, bool]] = {
    "dpt": ("inverse_depth", False),  # DPT / MiDaS: relative inverse depth
    "depth_pro": ("depth", True),  # the model predicts inverse depth; post-processing returns meters
    "zoedepth": ("depth", True),
    "glpn": ("depth", True),  # trained on NYUv2 / KITTI: meters
}
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def depth_convention(config: Any) -> tuple[DepthKind, bool]:
    """``(kind, metric)`` of a depth model's post-processed output, from its ``config``.

    Raises ``ValueError`` for an architecture whose convention is not known: pass ``kind=`` and
    ``metric=`` to :class:`DepthModelStep` explicitly then.
    """
    model_type = getattr(config, "model_type", None)
    if model_type in ("depth_anything", "prompt_depth_anything"):
        estimation = getattr(config, "depth_estimation_type", "relative")
        if estimation == "metric":
            return "depth", True
        if estimation == "relative":
            return "inverse_depth", False
        raise ValueError(f"unknown depth_estimation_type {estimation!r} in the {model_type} config")
    if model_type in MODEL_CONVENTIONS:
        return MODEL_CONVENTIONS[model_type]
    raise ValueError(
        f"no known depth convention for model_type={model_type!r}: pass kind='depth' (larger = farther) "
        "or kind='inverse_depth' (larger = nearer) and metric=True/False to DepthModelStep"
    )


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``cuda`` if available, else ``mps``, else ``cpu``; other values pass through."""
    torch = require("torch", "models")
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """The torch dtype for ``dtype`` (``auto | fp32 | fp16 | bf16``) on ``device``.

    ``auto``: bf16 on CUDA GPUs that support it, else fp16 on CUDA / MPS, fp32 on CPU (half
    precision on CPU is slow or unsupported for many kernels, so fp16 on CPU falls back to fp32).
    """
    torch = require("torch", "models")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.startswith("mps") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    resolved = getattr(torch, DTYPES[dtype])
    if resolved is torch.float16 and device == "cpu":
        logger.warning("dtype=%r is not supported well on CPU; using float32", dtype)
        return torch.float32
    return resolved


def model_name(model: Any) -> str:
    """A readable id of a model given as a Hub id / path or as a loaded model."""
    if isinstance(model, str):
        return model
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def load_record_images(
    records: Sequence[Record], on_error: OnError, count
) -> tuple[list[Record], list[Any], list[int]]:
    """EXIF-transposed RGB images of ``records``; returns (kept records, images, their indices).

    An image that cannot be read or whose size differs from the record's grid is handled by
    ``on_error`` (raise, or log and drop the record; either way counted via ``count(reason)``).
    """
    kept, images, where = [], [], []
    for i, record in enumerate(records):
        reason, detail = None, ""
        try:
            image = record.load_image()
        except (OSError, ValueError) as err:  # PIL raises OSError subclasses; no path -> ValueError
            reason, detail = "image_unreadable", f"{record.key}: cannot read {record.image_path!r}: {err}"
        else:
            if image.size != (record.width, record.height):
                reason = "image_size_mismatch"
                detail = (
                    f"{record.key}: image {record.image_path!r} is {image.size[0]}x{image.size[1]} after EXIF "
                    f"transpose but the record says {record.width}x{record.height}"
                )
        if reason is None:
            kept.append(record)
            images.append(image)
            where.append(i)
            continue
        if on_error == "error":
            raise ValueError(detail)
        if on_error == "warn":
            logger.warning("%s (record dropped)", detail)
        count(reason)
    return kept, images, where


def group_by_shape(tensors: Sequence[Any]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by shape, in first-seen order (one forward pass per group).

    Processors that keep the aspect ratio (Depth Anything, DPT) give differently sized inputs,
    which cannot be stacked into one tensor.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


def _call_post_process(processor, outputs, target_sizes: list[tuple[int, int]], source_sizes: list[tuple[int, int]]):
    params = inspect.signature(processor.post_process_depth_estimation).parameters
    kwargs: dict[str, Any] = {"target_sizes": target_sizes}
    if "source_sizes" in params:  # ZoeDepth pads its input and needs the sizes to undo it
        kwargs["source_sizes"] = source_sizes
    return processor.post_process_depth_estimation(outputs, **kwargs)


def depth_pro_to_meters(inverse: Any, fov_degrees: float | None, width: int) -> Any:
    """Depth Pro's canonical inverse depth -> meters, as its post-processing does.

    ``depth = 1 / (inverse * width / focal)`` with ``focal = width / 2 / tan(fov / 2)`` (pixels);
    without a field of view the canonical inverse depth is inverted as is.
    """
    torch = require("torch", "models")
    if fov_degrees is not None:
        fov = torch.as_tensor(fov_degrees, dtype=inverse.dtype)
        focal = 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov))
        inverse = inverse * width / focal
    return 1.0 / torch.clamp(inverse, min=1e-4, max=1e4)


def depth_maps_from_outputs(
    processor: Any,
    outputs: Any,
    target_sizes: list[tuple[int, int]],
    kind: DepthKind,
    metric: bool,
    source: str,
    source_sizes: list[tuple[int, int]] | None = None,
    model_type: str | None = None,
) -> list[DepthMap]:
    """Post-process raw depth ``outputs`` of a batch into depth maps of size ``target_sizes`` (h, w).

    Uses the processor's ``post_process_depth_estimation`` (which knows model specifics such as
    Depth Pro's inverse depth or ZoeDepth's padding) when it has one; otherwise resizes
    ``outputs.predicted_depth`` bilinearly, converting Depth Pro's inverse depth to meters itself
    (``model_type="depth_pro"``). Metric depth <= 0 is marked invalid.
    """
    torch = require("torch", "models")
    outputs.predicted_depth = outputs.predicted_depth.float()  # bicubic resize wants fp32 on CPU
    if processor is not None and hasattr(processor, "post_process_depth_estimation"):
        results = _call_post_process(processor, outputs, target_sizes, source_sizes or target_sizes)
        predictions = [r["predicted_depth"] for r in results]
    else:
        predictions = [
            torch.nn.functional.interpolate(d[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            for d, size in zip(outputs.predicted_depth, target_sizes)
        ]
        if model_type == "depth_pro":
            fovs = getattr(outputs, "field_of_view", None)
            fovs = [None] * len(predictions) if fovs is None else fovs
            predictions = [depth_pro_to_meters(p, f, size[1]) for p, f, size in zip(predictions, fovs, target_sizes)]
    maps = []
    for pred, size in zip(predictions, target_sizes):
        values = pred.detach().float().cpu().numpy().reshape(size)
        valid = values > 0 if kind == "depth" else None
        maps.append(DepthMap(values=values, kind=kind, valid=valid, source=source, metric=metric))
    return maps


class DepthModelStep(BatchStep):
    """Predict a depth map for each record with a ``transformers`` depth model.

    Args:
        model: Hub id or local folder (loaded with ``from_pretrained`` in :meth:`setup`, once per
            worker), or an already loaded model (then pass ``processor`` too).
        batch_size: images per forward pass (images whose processed size differs run separately).
        device: ``auto | cpu | cuda | cuda:N | mps``.
        dtype: ``auto | fp32 | fp16 | bf16`` (``auto``: half precision on GPUs, fp32 on CPU).
        flip_tta: also predict the horizontally flipped image; its prediction, flipped back, is
            stored as ``record.meta["depth_alt"]`` so a verifier can drop pairs whose order
            changes between the two (a cheap test of depth reliability).
        kind, metric: override the convention read from the config (see :func:`depth_convention`).
        on_error: unreadable images / size mismatches: ``error`` raises, ``warn`` logs and drops
            the record, ``skip`` drops it; drops are counted in ``stats.dropped``.
        overwrite: replace a depth map the record already has (e.g. from a sensor); default keeps it.
        target: ``"depth"`` writes ``record.depth``; ``"alt"`` writes ``record.meta["depth_alt"]``
            instead: a second model whose depth order the verifier compares with the first one's
            (the step is then named ``depth_model_alt``; ``flip_tta`` does not apply).

    Each :class:`DepthMap` has ``source=f"model:{model}:{kind}"``.
    """

    name = "depth_model"

    def __init__(
        self,
        model: Any,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        flip_tta: bool = False,
        processor: Any = None,
        kind: DepthKind | None = None,
        metric: bool | None = None,
        on_error: OnError = "warn",
        overwrite: bool = False,
        target: Literal["depth", "alt"] = "depth",
    ) -> None:
        super().__init__(batch_size)
        if on_error not in ("error", "warn", "skip"):
            raise ValueError(f"on_error must be 'error', 'warn' or 'skip', got {on_error!r}")
        if target not in ("depth", "alt"):
            raise ValueError(f"target must be 'depth' or 'alt', got {target!r}")
        if target == "alt" and flip_tta:
            raise ValueError("flip_tta=True writes meta['depth_alt'] itself: it does not combine with target='alt'")
        self.target = target
        if target == "alt":
            self.name = "depth_model_alt"
        if kind not in (None, "depth", "inverse_depth"):
            raise ValueError(f"kind must be 'depth' or 'inverse_depth', got {kind!r}")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        self.model_id = model_name(model)
        self._model_arg = model
        self.processor = processor
        self.model = None if isinstance(model, str) else model
        self.device_arg, self.dtype_arg = device, dtype
        self.flip_tta = flip_tta
        self.kind_arg, self.metric_arg = kind, metric
        self.on_error = on_error
        self.overwrite = overwrite
        self.kind: DepthKind | None = None
        self.metric: bool | None = None
        self.device: str | None = None

    def setup(self) -> None:
        if self.device is not None:
            return  # already set up in this worker
        require("torch", "models")
        transformers = require("transformers", "models")
        self.device = resolve_device(self.device_arg)
        dtype = resolve_dtype(self.dtype_arg, self.device)
        if self.model is None:
            logger.info("loading depth model %s on %s (%s)", self.model_id, self.device, dtype)
            self.model = transformers.AutoModelForDepthEstimation.from_pretrained(self._model_arg)
        if self.processor is None:
            self.processor = transformers.AutoImageProcessor.from_pretrained(self._model_arg)
        self.model = self.model.to(device=self.device, dtype=dtype).eval()
        self.dtype = dtype
        kind, metric = (None, None)
        if self.kind_arg is None or self.metric_arg is None:
            kind, metric = depth_convention(self.model.config)
        self.kind = self.kind_arg or kind
        self.metric = self.metric_arg if self.metric_arg is not None else metric
        self.source = f"model:{self.model_id}:{self.kind}"

    def process_batch(self, records: list[Record]) -> list[Record | None]:
        self.setup()
        torch = require("torch", "models")
        todo = [r for r in records if self.overwrite or self._current(r) is None]
        kept, images, _ = load_record_images(todo, self.on_error, self.count)
        dropped = {id(r) for r in todo} - {id(r) for r in kept}
        if kept:
            pixel_values = [self.processor(images=[im], return_tensors="pt")["pixel_values"][0] for im in images]
            sizes = [(r.height, r.width) for r in kept]
            with torch.inference_mode():
                for group in group_by_shape(pixel_values):
                    batch = torch.stack([pixel_values[i] for i in group]).to(self.device, self.dtype)
                    self._predict([kept[i] for i in group], batch, [sizes[i] for i in group])
        return [None if id(r) in dropped else r for r in records]

    def _predict(self, records: list[Record], pixel_values, sizes: list[tuple[int, int]]) -> None:
        maps = self._forward(pixel_values, sizes, flipped=False)
        alts = self._forward(pixel_values.flip(-1), sizes, flipped=True) if self.flip_tta else [None] * len(records)
        for record, depth, alt in zip(records, maps, alts):
            if self.target == "alt":
                record.meta["depth_alt"] = depth
                continue
            record.depth = depth
            if alt is not None:
                record.meta["depth_alt"] = alt

    def _current(self, record: Record) -> DepthMap | None:
        return record.meta.get("depth_alt") if self.target == "alt" else record.depth

    def _forward(self, pixel_values, sizes: list[tuple[int, int]], flipped: bool) -> list[DepthMap]:
        outputs = self.model(pixel_values=pixel_values)
        if flipped:  # undo the flip on the model's own grid, before any resizing
            outputs.predicted_depth = outputs.predicted_depth.flip(-1)
        source = f"{self.source}:flip" if flipped else self.source
        return depth_maps_from_outputs(
            self.processor, outputs, sizes, self.kind, self.metric, source,
            model_type=getattr(self.model.config, "model_type", None),
        )
