"""Monocular depth from Hugging Face ``transformers`` models, as a batch pipeline step.

:class:`DepthModelStep` loads a depth model once per worker (``AutoModelForDepthEstimation`` +
``AutoImageProcessor``: Depth Anything V2 relative / metric, DPT, Depth Pro, ZoeDepth, GLPN),
runs batches under ``torch.inference_mode()`` and writes a :class:`~spatialforge.processing.records.DepthMap` on each
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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..base import BatchStep, require
from ..records import DepthKind, DepthMap, Record

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
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"device must be auto | cpu | cuda | cuda:N | mps, got {device!r}")
    torch = require("torch", "models")
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available")
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but there are {torch.cuda.device_count()} CUDA devices (cuda:0..)")
        mps = getattr(torch.backends, "mps", None)
        if device == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError("device='mps' but MPS (Apple GPU) is not available")
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


IMAGE_KEY = "_image"
"""``record.meta`` key of the decoded, EXIF-transposed image, shared by consecutive model steps
(a step built with ``keep_image=True`` leaves it for the next one; the last one releases it)."""


def load_record_images(
    records: Sequence[Record], on_error: OnError, count, keep: bool = False
) -> tuple[list[Record], list[Any], list[int]]:
    """EXIF-transposed RGB images of ``records``; returns (kept records, images, their indices).

    An image that cannot be read or whose size differs from the record's grid is handled by
    ``on_error`` (raise, or log and drop the record; either way counted via ``count(reason)``).
    An image a previous model step left in ``record.meta[IMAGE_KEY]`` is reused, not decoded
    again; ``keep=True`` leaves each decoded image there for the next step.
    """
    kept, images, where = [], [], []
    for i, record in enumerate(records):
        reason, detail = None, ""
        try:
            image = record.meta.get(IMAGE_KEY)
            if image is None:
                image = record.load_image()
                if keep:
                    record.meta[IMAGE_KEY] = image
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
        record.meta.pop(IMAGE_KEY, None)
        if on_error == "error":
            raise ValueError(detail)
        if on_error == "warn":
            logger.warning("%s (record dropped)", detail)
        count(reason)
    return kept, images, where


@dataclass
class DecodedBatch:
    """A batch's images decoded (and, for some steps, preprocessed) ahead of its model: what
    :meth:`~.base.BatchStep.prepare_batch` returns. Indices refer to the batch's records.

    ``drops`` are the reasons of dropped records, counted by the step when it takes the batch (the
    preparing thread or process never touches the step's counters).
    """

    kept: list[int]  # records whose image was decoded, in batch order
    dropped: list[int]  # records dropped (unreadable image, size mismatch)
    images: list[Any]  # the kept records' images (empty once ``inputs`` replaced them)
    drops: list[str] = field(default_factory=list)
    inputs: Any = None  # the step's preprocessed model input (CPU tensors), when it preprocesses here

    def take(self, records: Sequence[Record], count) -> list[Record]:
        """Count the drops; return the kept records."""
        for reason in self.drops:
            count(reason)
        return [records[i] for i in self.kept]

    def finish(self, records: Sequence[Record], keep_image: bool) -> list[Record | None]:
        """The step's output for ``records``: None where dropped; the shared decoded images
        released unless the step keeps them (:func:`release_images`)."""
        dropped = set(self.dropped)
        out = [None if i in dropped else r for i, r in enumerate(records)]
        if not keep_image:
            release_images(records)
        return out


def take_batch(step, records: list[Record], prepared: DecodedBatch | None) -> tuple[DecodedBatch, list[Record]]:
    """The start of a model step's ``process_batch``: ``step.setup()``, the batch as its
    ``prepare_batch`` made it (here, unless ``prepared`` came from a prefetching thread or
    process), and the kept records, drops counted on the step."""
    step.setup()
    prepared = prepared if prepared is not None else step.prepare_batch(records)
    return prepared, prepared.take(records, step.count)


def decode_batch(records: Sequence[Record], todo: Sequence[int], on_error: OnError, keep: bool = False) -> DecodedBatch:
    """Decode the images of ``records[i] for i in todo`` (see :func:`load_record_images`)."""
    drops: list[str] = []
    chosen = [records[i] for i in todo]
    _, images, where = load_record_images(chosen, on_error, drops.append, keep=keep)
    kept = [todo[j] for j in where]
    return DecodedBatch(kept=kept, dropped=sorted(set(todo) - set(kept)), images=images, drops=drops)


def release_images(records: Sequence[Record | None]) -> None:
    """Drop the decoded images model steps shared through ``record.meta[IMAGE_KEY]``."""
    for record in records:
        if record is not None:
            record.meta.pop(IMAGE_KEY, None)


def group_by_shape(tensors: Sequence[Any]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by shape, in first-seen order (one forward pass per group).

    Processors that keep the aspect ratio (Depth Anything, DPT) give differently sized inputs,
    which cannot be stacked into one tensor.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


def _multiple_of(value: float, multiple: int) -> int:
    # as DPT's processor rounds (constrain_to_multiple_of), never below one multiple
    return max(multiple, int(round(value / multiple)) * multiple)


def common_input_size(sizes: Sequence[tuple[int, int]], processor: Any) -> tuple[int, int] | None:
    """One ``(height, width)`` model input for images of ``sizes`` (h, w), or None if ``processor``
    is not a resize-to-multiple processor (DPT / Depth Anything) that keeps the aspect ratio.

    The processor's own size for an image of the batch's geometric-mean height and width: a batch
    of equally sized images gets exactly the size each would get alone; other images are resized
    without keeping their aspect ratio (a slight stretch, undone when the prediction is resized
    back to each image's grid). Follows ``DPTImageProcessor``'s rule ("scale as little as possible",
    sides rounded to ``ensure_multiple_of``).
    """
    size = getattr(processor, "size", None)
    multiple = getattr(processor, "ensure_multiple_of", None)
    if not getattr(processor, "keep_aspect_ratio", False) or multiple is None or not getattr(processor, "do_resize", True):
        return None
    height, width = (size.get("height"), size.get("width")) if hasattr(size, "get") else (None, None)
    if not height or not width or not sizes:
        return None
    h = float(np.exp(np.mean(np.log([s[0] for s in sizes]))))
    w = float(np.exp(np.mean(np.log([s[1] for s in sizes]))))
    scale_h, scale_w = height / h, width / w
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return _multiple_of(scale * h, int(multiple)), _multiple_of(scale * w, int(multiple))


class DepthProPreprocessor:
    """Depth Pro's input preprocessing in plain torch, for when ``DepthProImageProcessor`` cannot be
    built (its transformers implementation needs torchvision).

    Same steps as ``DepthProImageProcessor._preprocess``: rescale to [0, 1], normalize (mean / std,
    0.5 by default), THEN resize to ``size`` (1536 x 1536) bilinearly without antialiasing. It has
    no ``post_process_depth_estimation``: :func:`depth_maps_from_outputs` converts Depth Pro's
    output to meters itself (:func:`depth_pro_to_meters`, the same formula).
    """

    def __init__(self, size: dict | None = None, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 rescale_factor: float = 1 / 255, **_: Any) -> None:
        size = size or {"height": 1536, "width": 1536}
        self.size = {"height": int(size["height"]), "width": int(size["width"])}
        self.image_mean, self.image_std, self.rescale_factor = list(image_mean), list(image_std), float(rescale_factor)

    @classmethod
    def from_pretrained(cls, model: str) -> "DepthProPreprocessor":
        """Settings from the model's ``preprocessor_config.json`` (local folder or Hub)."""
        transformers = require("transformers", "models")
        config, _ = transformers.ImageProcessingMixin.get_image_processor_dict(model)
        keys = ("size", "image_mean", "image_std", "rescale_factor")
        return cls(**{k: config[k] for k in keys if config.get(k) is not None})

    def __call__(self, images: Sequence[Any], return_tensors: str = "pt", **_: Any) -> dict[str, Any]:
        torch = require("torch", "models")
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        out = []
        for image in images:
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
            x = (x * self.rescale_factor - mean) / std
            size = (self.size["height"], self.size["width"])
            out.append(torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0])
        return {"pixel_values": torch.stack(out)}


def load_depth_processor(model: str, model_type: str | None) -> Any:
    """``AutoImageProcessor`` of ``model``; for Depth Pro without torchvision, :class:`DepthProPreprocessor`."""
    transformers = require("transformers", "models")
    try:
        return transformers.AutoImageProcessor.from_pretrained(model)
    except (ImportError, ValueError) as err:
        # transformers 5 raises ValueError ("... None of these classes could be imported. Missing
        # optional dependencies: torchvision") when a processor exists only as a torchvision backend.
        if isinstance(err, ValueError) and "torchvision" not in str(err):
            raise
        if model_type == "depth_pro":
            logger.info("DepthProImageProcessor is not available (%s): using the plain torch preprocessing", err)
            return DepthProPreprocessor.from_pretrained(model)
        raise ImportError(
            f"the image processor of {model!r} (model_type={model_type!r}) needs torchvision, which is not "
            f"importable here: pip install torchvision (matching your torch) ({err})"
        ) from err


# Models whose post-processing is only a resize of predicted_depth to the target size
# (DPTImageProcessor.post_process_depth_estimation): resized here, with the flipped map in one call.
RESIZE_ONLY_TYPES = ("depth_anything", "dpt", "prompt_depth_anything")


def torch_stack(first: Any, second: Any) -> Any:
    """``(B, h, w)`` twice -> ``(B, 2, h, w)``."""
    torch = require("torch", "models")
    return torch.stack([first, second], dim=1)


def resize_depth(predictions: Any, sizes: Sequence[tuple[int, int]], mode: str = "bilinear") -> list[np.ndarray]:
    """``(B, C, h, w)`` predictions -> per image a ``(C, H, W)`` float32 array on its own ``sizes[i]``.

    Bilinear by default: DPT's post-processing uses bicubic, which costs several times more on a
    full-resolution CPU grid and changes depth by far less than the model's own error.
    """
    torch = require("torch", "models")
    out = []
    for pred, size in zip(predictions.float(), sizes):
        resized = torch.nn.functional.interpolate(pred[None], size=tuple(size), mode=mode, align_corners=False)[0]
        out.append(resized.cpu().numpy())
    return out


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
        maps.append(DepthMap(values=values, kind=kind, valid=valid, source=source, metric=metric, estimated=True))
    return maps


class DepthModelStep(BatchStep):
    """Predict a depth map for each record with a ``transformers`` depth model.

    Args:
        model: Hub id or local folder (loaded with ``from_pretrained`` in :meth:`setup`, once per
            worker), or an already loaded model (then pass ``processor`` too).
        batch_size: images per forward pass (see ``batch_resize``).
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
        batch_resize: ``"common"`` (default): Depth Anything / DPT processors keep each image's
            aspect ratio, so photos of mixed shapes would each need their own forward pass; all
            images of a batch are resized to one input size instead (:func:`common_input_size`),
            one forward pass per batch. A batch of equally sized images gets exactly the input it
            would get alone; other images are slightly stretched, which changes predictions a
            little (the map is resized back to each image's own grid). ``"per_shape"``: each image
            keeps its aspect ratio and a batch splits into one forward pass per input shape.
        keep_image: leave the decoded image in ``record.meta[IMAGE_KEY]`` for the next model step
            (set on every model step but the last; the last one releases it).

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
        batch_resize: Literal["common", "per_shape"] = "common",
        keep_image: bool = False,
    ) -> None:
        super().__init__(batch_size)
        if batch_resize not in ("common", "per_shape"):
            raise ValueError(f"batch_resize must be 'common' or 'per_shape', got {batch_resize!r}")
        self.batch_resize, self.keep_image = batch_resize, keep_image
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
        self.model_type = getattr(self.model.config, "model_type", None)
        if self.processor is None:
            self.processor = load_depth_processor(self._model_arg, self.model_type)
        self.model = self.model.to(device=self.device, dtype=dtype).eval()
        self.dtype = dtype
        kind, metric = (None, None)
        if self.kind_arg is None or self.metric_arg is None:
            kind, metric = depth_convention(self.model.config)
        self.kind = self.kind_arg or kind
        self.metric = self.metric_arg if self.metric_arg is not None else metric
        self.source = f"model:{self.model_id}:{self.kind}"

    def setup_inputs(self) -> None:
        if self.processor is None:
            transformers = require("transformers", "models")
            config = self.model.config if self.model is not None else transformers.AutoConfig.from_pretrained(self._model_arg)
            self.processor = load_depth_processor(self._model_arg, getattr(config, "model_type", None))

    def prepare_batch(self, records: list[Record]) -> DecodedBatch:
        """Decode and preprocess (the image processor) on the CPU: the model's input groups."""
        self.setup_inputs()
        todo = [i for i, r in enumerate(records) if self.overwrite or self._current(r) is None]
        prepared = decode_batch(records, todo, self.on_error, keep=self.keep_image)
        if prepared.kept:
            sizes = [(records[i].height, records[i].width) for i in prepared.kept]
            prepared.inputs = self._preprocess(prepared.images, sizes)
        prepared.images = []  # the processor's tensors are all the model needs
        return prepared

    def process_batch(self, records: list[Record], prepared: DecodedBatch | None = None) -> list[Record | None]:
        prepared, kept = take_batch(self, records, prepared)
        torch = require("torch", "models")
        if kept:
            sizes = [(r.height, r.width) for r in kept]
            with torch.inference_mode():
                for group, pixel_values in prepared.inputs:
                    batch = pixel_values.to(self.device, self.dtype)
                    self._predict([kept[i] for i in group], batch, [sizes[i] for i in group])
        return prepared.finish(records, self.keep_image)

    def _preprocess(self, images: list[Any], sizes: list[tuple[int, int]]) -> list[tuple[list[int], Any]]:
        """``(indices, pixel_values)`` groups, one forward pass each; the processor runs once per batch."""
        torch = require("torch", "models")
        common = common_input_size(sizes, self.processor) if self.batch_resize == "common" else None
        if common is not None:
            size = {"height": common[0], "width": common[1]}
            inputs = self.processor(images=images, size=size, keep_aspect_ratio=False, return_tensors="pt")
            return [(list(range(len(images))), inputs["pixel_values"])]
        pixel_values = [torch.as_tensor(np.asarray(p)) for p in self.processor(images=images)["pixel_values"]]
        return [(group, torch.stack([pixel_values[i] for i in group])) for group in group_by_shape(pixel_values)]

    def _predict(self, records: list[Record], pixel_values, sizes: list[tuple[int, int]]) -> None:
        outputs = self.model(pixel_values=pixel_values)
        alt = None
        if self.flip_tta:
            alt = self.model(pixel_values=pixel_values.flip(-1))
            alt.predicted_depth = alt.predicted_depth.flip(-1)  # undo the flip on the model's own grid, before resizing
        if self.model_type in RESIZE_ONLY_TYPES:
            # one resize for both maps of an image (the flipped one as a second channel)
            stacked = outputs.predicted_depth[:, None] if alt is None else torch_stack(outputs.predicted_depth, alt.predicted_depth)
            resized = resize_depth(stacked, sizes)
            maps = [self._map(r[0], self.source) for r in resized]
            alts = [self._map(r[1], f"{self.source}:flip") for r in resized] if alt is not None else [None] * len(records)
        else:
            maps = self._post_process(outputs, sizes, self.source)
            alts = self._post_process(alt, sizes, f"{self.source}:flip") if alt is not None else [None] * len(records)
        for record, depth, alt_map in zip(records, maps, alts):
            if self.target == "alt":
                record.meta["depth_alt"] = depth
                continue
            record.depth = depth
            if alt_map is not None:
                record.meta["depth_alt"] = alt_map

    def _map(self, values: np.ndarray, source: str) -> DepthMap:
        valid = values > 0 if self.kind == "depth" else None
        return DepthMap(values=values, kind=self.kind, valid=valid, source=source, metric=self.metric, estimated=True)

    def _post_process(self, outputs: Any, sizes: list[tuple[int, int]], source: str) -> list[DepthMap]:
        return depth_maps_from_outputs(self.processor, outputs, sizes, self.kind, self.metric, source, model_type=self.model_type)

    def _current(self, record: Record) -> DepthMap | None:
        return record.meta.get("depth_alt") if self.target == "alt" else record.depth
