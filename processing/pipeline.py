"""The generation pipeline: one config, one list of steps, one call.

Step order (a plain list; every executor runs the same one)::

    reader -> [DetectionStep | DetectionsFromFile] -> [DepthFromFiles | DepthModelStep] -> [DepthModelStep(target="alt")]
           -> [PoseStep | FacingFromKeypoints] -> TaskStep -> [PointCounting (pixmo)] -> ParquetWriter

Model steps are imported only when their option is set, inside the worker that runs them, so
``torch`` / ``transformers`` load only where needed and weights load once per worker.

Example:
    >>> cfg = GenerateConfig(source="objects365", annotations="zhiyuan_objv2_val.json",
    ...                      images="images/", depth_model="depth-anything/Depth-Anything-V2-Small-hf",
    ...                      out="spatialforge-o365")   # doctest: +SKIP
    >>> stats = generate(cfg)                          # doctest: +SKIP
    >>> stats["rows_per_task"]["near_far"]             # doctest: +SKIP
    1234
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..builders import schema
from .base import Step
from .readers import (
    POLICIES,
    SOURCES,
    CocoReader,
    FolderReader,
    HFDatasetReader,
    OpenImagesReader,
    PixmoReader,
    Reader,
    TableReader,
)

logger = logging.getLogger(__name__)

DEFAULT_NUM_SHARDS = 8
# may change between a killed run and its resume (`out` too: a run folder may be moved)
_RUN_FIELDS = ("out", "workers", "progress", "overwrite", "allow_existing", "model_ids", "prefetch", "executor",
               "ray_address", "ray_concurrency", "ray_num_gpus", "ray_cpu_concurrency")
EXECUTORS = ("local", "ray")
_PATH_FIELDS = ("annotations", "images", "class_descriptions", "image_labels", "depth_dir", "detections")
_MODEL_FIELDS = ("depth_model", "detector", "pose_model", "second_depth_model")
_DTYPES = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")  # as depth_models.DTYPES (no torch import here)


@dataclass
class GenerateConfig:
    """Everything ``spatialforge generate`` needs; the same object drives :func:`generate`.

    Only ``workers``, ``progress``, ``overwrite`` and ``allow_existing`` may change between a killed run and its resume
    (and ``out``, if the folder was moved): the rest, with the identity of the input files
    (:func:`input_identity`), is recorded in ``<out>/.spatialforge/run.json`` and checked.
    """

    source: str  # objects365 | openimages | pixmo | folder | hf | fiftyone: which reader parses the input
    out: str  # dataset folder to write (data/<task>/*.parquet, README.md, stats.json)
    annotations: str | None = None  # COCO JSON | OpenImages box CSV | Pixmo JSONL/Parquet (file or folder) | HF dataset folder
    images: str | None = None  # root folder of the image files (not used by source=hf)
    source_name: str | None = None  # name written in the rows' `source` (default: the source; set it for folder/hf)
    class_descriptions: str | None = None  # OpenImages: class descriptions CSV (MID,name); required there
    image_labels: str | None = None  # OpenImages: human-verified image-level labels CSV (enables counting)
    hf_split: str = "train"  # source=hf: split to read
    fiftyone_dataset: str | None = None  # source=fiftyone: name of the FiftyOne dataset to read
    fiftyone_label_field: str | None = None  # source=fiftyone: its Detections field (default: ground_truth or the only one)
    depth_dir: str | None = None  # folder of <image stem>.npy (float) / .png (16-bit mm) depth files
    depth_kind: str = "depth"  # depth files hold "depth" (larger=farther) or "inverse_depth" (larger=nearer)
    depth_measured: bool | None = None  # depth files: measured (sensor, renderer), a model's predictions (False), or by format (None)
    depth_model: str | None = None  # HF depth model id or folder (exclusive with depth_dir)
    detector: str | None = None  # HF detection model id or folder: adds boxes (e.g. to a folder of photos)
    detector_labels: tuple[str, ...] | None = None  # zero-shot detectors: the labels to look for
    pose_model: str | None = None  # HF pose model id or folder: person keypoints -> facing (perspective task)
    detector_threshold: float = 0.3  # detector or detections: minimum score of a kept box
    detections: str | None = None  # COCO detection-results JSON: precomputed boxes, used as a detector's output
    depth_flip_tta: bool = False  # depth_model: also predict the mirrored image; near_far must agree with both
    second_depth_model: str | None = None  # HF depth model id or folder: a second depth signal near_far must agree with
    ground_contact: bool = False  # near_far: the object whose box bottom is lower must be the nearer one (opt-in)
    label_alone_mentions: bool = False  # relation questions may name the only boxed object of a label by its label alone
    dtype: str = "auto"  # model dtype: auto (half precision on GPUs, fp32 on CPU) | fp32 | fp16 | bf16
    tasks: tuple[str, ...] = schema.TASKS  # tasks to generate
    max_per_task: dict[str, int | None] | None = None  # rows per image and task over the defaults (None: no cap)
    seed: int = 0  # all random choices derive from (seed, image id, task)
    num_shards: int = DEFAULT_NUM_SHARDS  # input shards; fixes the output files whatever `workers` is
    workers: int = 1  # worker processes (1: in this process)
    batch_size: int = 8  # images per model forward pass
    device: str = "auto"  # model device: auto | cpu | cuda | cuda:N | mps
    on_bad_input: str = "skip"  # malformed annotations / missing files: skip (counted) | warn | error
    on_size_mismatch: str = "rescale"  # annotation size != image size: rescale (same aspect) | drop
    overwrite: bool = False  # delete a previous run's files in `out` (only those) instead of resuming it
    allow_existing: bool = False  # write into a non-empty `out` that holds no run (its files are never replaced)
    progress: bool = True  # tqdm progress bars
    synthetic: bool = False  # the images are synthetic (the dataset card gets the `synthetic` tag)
    keep_drops: bool = False  # also write each image's candidate drops (drops/<shard>.parquet; FiftyOne tags)
    model_ids: dict[str, str] | None = None  # set by resolve_models: field -> Hub id of a model now given as its snapshot folder
    prefetch: int = 2  # local executor: batches a model step decodes / preprocesses ahead, in threads (0: inline)
    executor: str = "local"  # local (processes on this machine) | ray (Ray Data, e.g. on a cluster); same output
    ray_address: str | None = None  # executor=ray: cluster to join ("auto", "ray://host:10001"); None: start a local one
    ray_concurrency: int = 1  # executor=ray: actors per model step (weights load once per actor)
    ray_num_gpus: float = 0.0  # executor=ray: GPUs per model actor (0.5: two actors share a GPU; 0: CPUs only)
    ray_cpu_concurrency: int = 1  # executor=ray: actors per CPU stage (reading, decoding, tasks)
    rebalance: bool = True  # relation rows: both sides of each label pair equally often (output.balance)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        for name in ("out", *_PATH_FIELDS):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, os.fspath(value))
        if not self.out:
            raise ValueError("out must be a folder path, got an empty value")
        if self.source == "fiftyone" and not self.fiftyone_dataset:
            raise ValueError("source='fiftyone' needs fiftyone_dataset (--fiftyone-dataset NAME), got None")
        if self.source not in ("folder", "fiftyone") and not self.annotations:
            raise ValueError(f"source={self.source!r} needs annotations, got {self.annotations!r}")
        if self.annotations and not Path(self.annotations).exists():
            raise ValueError(f"annotations {self.annotations!r} do not exist")
        if self.source not in ("hf", "fiftyone"):
            if not self.images or not Path(self.images).is_dir():
                raise ValueError(f"source={self.source!r} needs images to be a folder, got {self.images!r}")
        if self.source == "openimages":
            if not self.class_descriptions or not Path(self.class_descriptions).is_file():
                raise ValueError(f"source='openimages' needs class_descriptions (the MID,name CSV), got {self.class_descriptions!r}")
            if self.image_labels and not Path(self.image_labels).is_file():
                raise ValueError(f"image_labels {self.image_labels!r} is not a file")
        if self.depth_kind not in ("depth", "inverse_depth"):
            raise ValueError(f"depth_kind must be 'depth' or 'inverse_depth', got {self.depth_kind!r}")
        if self.depth_dir and self.depth_model:
            raise ValueError(f"give depth_dir or depth_model, not both (got {self.depth_dir!r} and {self.depth_model!r})")
        if self.depth_measured is not None and not self.depth_dir:
            raise ValueError("depth_measured says what depth files hold: give depth_dir too (a depth model's output is always estimated)")
        if self.depth_flip_tta and not self.depth_model:
            raise ValueError("depth_flip_tta needs depth_model (it mirrors the model's input), got depth_model=None")
        if self.second_depth_model and self.depth_flip_tta:
            raise ValueError("give depth_flip_tta or second_depth_model, not both: each is the second depth signal")
        if self.second_depth_model and not (self.depth_model or self.depth_dir):
            raise ValueError(f"second_depth_model {self.second_depth_model!r} checks a first depth: give depth_model or depth_dir too")
        if self.detections is not None:
            if self.detector:
                raise ValueError(f"give detector or detections, not both (got {self.detector!r} and {self.detections!r})")
            if not Path(self.detections).is_file():
                raise ValueError(f"detections {self.detections!r} is not a file")
        if not 0.0 <= self.detector_threshold <= 1.0:
            raise ValueError(f"detector_threshold must be in [0, 1], got {self.detector_threshold!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.depth_dir and not Path(self.depth_dir).is_dir():
            raise ValueError(f"depth_dir {self.depth_dir!r} is not a folder")
        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t)
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in schema.TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be a non-empty subset of {schema.TASKS}, got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must list each task once, got {self.tasks!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto | cpu | cuda | cuda:N | mps, got {self.device!r}")
        if self.detector_labels is not None:
            self.detector_labels = tuple(self.detector_labels)
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"ray_address {self.ray_address!r} needs executor='ray', got executor={self.executor!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {self.prefetch!r}")
        if self.ray_num_gpus < 0:
            raise ValueError(f"ray_num_gpus must be >= 0, got {self.ray_num_gpus!r}")
        if self.max_per_task is not None:
            self.max_per_task = parse_caps(self.max_per_task) if isinstance(self.max_per_task, str) else dict(self.max_per_task)
            bad = {t: c for t, c in self.max_per_task.items()
                   if t not in schema.TASKS or not (c is None or (isinstance(c, int) and c >= 0))}
            if bad:
                raise ValueError(f"max_per_task must map tasks of {schema.TASKS} to ints >= 0 or None, got {bad!r}")
        for name in ("num_shards", "workers", "batch_size", "ray_concurrency", "ray_cpu_concurrency"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.on_bad_input not in POLICIES:
            raise ValueError(f"on_bad_input must be one of {POLICIES}, got {self.on_bad_input!r}")
        if self.on_size_mismatch not in ("rescale", "drop"):
            raise ValueError(f"on_size_mismatch must be 'rescale' or 'drop', got {self.on_size_mismatch!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the output (everything but out / workers / progress / overwrite).

        Paths are absolute (and local model folders too), so the same input named relative to
        another working directory is the same run.
        """
        out = {}
        for f in dataclasses.fields(self):
            if f.name not in _RUN_FIELDS:
                value = getattr(self, f.name)
                if f.name in _PATH_FIELDS and value is not None:
                    value = str(Path(value).resolve())
                elif f.name in _MODEL_FIELDS and value is not None and Path(value).exists():
                    value = str(Path(value).resolve())  # a local folder; a Hub id stays as it is
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def cache_dir(self) -> Path:
        """Where images stored as bytes (source=hf) are written once."""
        return Path(self.out) / ".spatialforge" / "cache" / "images"

    @property
    def detections_cache_dir(self) -> Path:
        """Where the detections file is converted once into per-image boxes that every worker reads."""
        return Path(self.out) / ".spatialforge" / "cache" / "detections"

    @property
    def annotation_cache_dir(self) -> Path:
        """Where the annotations are converted once into a per-image table that every worker reads its shard of."""
        return Path(self.out) / ".spatialforge" / "cache" / "annotations"


def make_reader(cfg: GenerateConfig) -> Reader:
    """The reader of ``cfg.source``."""
    common = {"source": cfg.source_name, "on_bad_input": cfg.on_bad_input, "on_size_mismatch": cfg.on_size_mismatch}
    cache = {"cache_dir": cfg.annotation_cache_dir}
    if cfg.source == "objects365":
        return CocoReader(cfg.annotations, cfg.images, **cache, **common)
    if cfg.source == "openimages":
        return OpenImagesReader(cfg.annotations, cfg.images, cfg.class_descriptions, cfg.image_labels, **cache, **common)
    if cfg.source == "pixmo":
        return PixmoReader(cfg.annotations, cfg.images, **cache, **common)
    if cfg.source == "folder":
        return FolderReader(cfg.images, **common)
    if cfg.source == "fiftyone":
        from .readers.fiftyone import FiftyOneReader

        return FiftyOneReader(cfg.fiftyone_dataset, cfg.fiftyone_label_field, **common)
    return HFDatasetReader(cfg.annotations, cfg.cache_dir, split=cfg.hf_split, **common)


def _file_identity(path: Path) -> dict[str, Any]:
    from .output.run_folder import file_identity

    size, mtime_ns, _, digest = file_identity(path)  # not the ctime: a copied annotation file is the same input
    return {"size": size, "mtime_ns": mtime_ns, "sha256_ends": digest}


def input_identity(cfg: GenerateConfig) -> dict[str, Any]:
    """What the inputs of ``cfg`` are, beyond their names: recorded with a run, so a rerun on changed
    inputs refuses to resume (its finished shards were built from the old ones).

    Annotation files (every file of an annotation folder), class descriptions and image labels: size,
    modification time and a hash of their ends (:func:`~.output.run_folder.file_identity`). A folder
    of images without annotations (``source="folder"``) or a FiftyOne dataset (``source="fiftyone"``): the number and a hash of the image ids,
    which decide what each shard holds. Images and depth files are checked per shard instead (the
    executor records each file a shard read), so a changed one redoes only the shards that read it.
    """
    out: dict[str, Any] = {}
    for name in ("annotations", "class_descriptions", "image_labels", "detections"):
        value = getattr(cfg, name)
        if not value:
            continue
        path = Path(value).resolve()
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(path).parts))
            out[name] = {f.relative_to(path).as_posix(): _file_identity(f) for f in files}
        else:
            out[name] = _file_identity(path)
    if cfg.source in ("folder", "fiftyone"):
        ids = make_reader(cfg).items()
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        out["images"] = {"image_ids": len(ids), "sha256": digest}
    return out


def prepare_inputs(cfg: GenerateConfig) -> int:
    """Convert the annotations of ``cfg`` once, in this process, before workers start (no-op when
    cached); return the number of images to read (the progress bar's total)."""
    reader = make_reader(cfg)
    if isinstance(reader, TableReader):
        reader.prepare()
    items = reader.items()
    if cfg.detections:
        from .perception.detections_file import convert

        coco = cfg.annotations if cfg.source == "objects365" else None
        convert(cfg.detections, cfg.detections_cache_dir, items, coco)
    return len(items)


def _finalize_with_detections(finalize: Any, cache_dir: Path, out_dir: Path, stats: dict[str, Any]) -> None:
    """``finalize`` with what the detections file left out (unknown image ids, labels) in ``stats``:
    beside the detections step's own counts, and as ``detections_file``."""
    from .perception.detections_file import cached_counts

    counts = cached_counts(cache_dir)
    if counts is not None:
        stats["detections_file"] = counts
        for step in stats.get("steps", []):
            if step.get("name") == "detections" and counts["dropped"]:
                merged = {**step.get("objects_dropped", {})}
                for reason, n in counts["dropped"].items():
                    merged[reason] = merged.get(reason, 0) + n
                step["objects_dropped"] = dict(sorted(merged.items()))
    finalize(out_dir, stats)


def _facing_step(person_labels: tuple[str, ...] | None = None) -> Step | None:
    from .perception.facing import FacingFromKeypoints

    return FacingFromKeypoints(person_labels=person_labels)


def parse_caps(text: str) -> dict[str, int | None]:
    """``"grounding=2,near_far=1,perspective=none"`` -> ``{"grounding": 2, "near_far": 1, "perspective": None}``.

    >>> parse_caps("grounding=2, near_far=none")
    {'grounding': 2, 'near_far': None}
    """
    caps: dict[str, int | None] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        task, sep, value = (v.strip() for v in part.partition("="))
        if not sep or task not in schema.TASKS:
            raise ValueError(f"max_per_task takes task=N pairs with tasks of {schema.TASKS}, got {part!r}")
        if value.lower() in ("none", "all", "inf"):
            caps[task] = None
        elif value.isdigit():
            caps[task] = int(value)
        else:
            raise ValueError(f"max_per_task[{task!r}] must be an int >= 0 or none, got {value!r}")
    return caps


def verify_config(cfg: GenerateConfig) -> Any:
    """The :class:`~.tasks.verify.VerifyConfig` of ``cfg``."""
    from .tasks.verify import VerifyConfig

    return VerifyConfig(ground_contact=cfg.ground_contact, label_alone_mentions=cfg.label_alone_mentions)


def task_step(cfg: GenerateConfig) -> Step:
    """The task generator + verifier step."""
    from .tasks.step import TaskStep

    return TaskStep(tasks=cfg.tasks, seed=cfg.seed, config=verify_config(cfg), max_per_task=cfg.max_per_task)


def _named(step: Step, cfg: GenerateConfig, field: str) -> Step:
    """A model step loading from a resolved snapshot folder keeps the Hub id in its rows' evidence."""
    if cfg.model_ids and field in cfg.model_ids:
        step.model_id = cfg.model_ids[field]
    return step


def build_steps(cfg: GenerateConfig, tasks: Step | None = None) -> list[Step]:
    """The steps of ``cfg`` in order (reader first, writer last). Built inside each worker.

    ``tasks`` replaces the task step (for custom generators).
    """
    from .output.parquet import ParquetWriter

    steps: list[Step] = [make_reader(cfg)]
    if cfg.detections:
        from .perception.detections_file import DetectionsFromFile

        # the same place and the same rules as a detector model (beside source annotations)
        steps.append(DetectionsFromFile(cfg.detections_cache_dir, Path(cfg.detections).name, threshold=cfg.detector_threshold))
    if cfg.detector:
        from .perception.detection import DetectionStep

        labels = list(cfg.detector_labels) if cfg.detector_labels else None
        # Beside source annotations the detector checks them (counts and "the cup" it contradicts).
        steps.append(_named(DetectionStep(cfg.detector, labels=labels, threshold=cfg.detector_threshold, beside=True,
                                          batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype), cfg, "detector"))
    if cfg.depth_dir:
        from .perception.depth_files import DepthFromFiles

        steps.append(DepthFromFiles(cfg.depth_dir, kind=cfg.depth_kind, on_bad_input=cfg.on_bad_input, measured=cfg.depth_measured))
    elif cfg.depth_model:
        from .perception.depth_models import DepthModelStep

        steps.append(_named(DepthModelStep(cfg.depth_model, batch_size=cfg.batch_size, device=cfg.device,
                                           dtype=cfg.dtype, flip_tta=cfg.depth_flip_tta), cfg, "depth_model"))
    if cfg.second_depth_model:
        from .perception.depth_models import DepthModelStep

        steps.append(_named(DepthModelStep(cfg.second_depth_model, batch_size=cfg.batch_size, device=cfg.device,
                                           dtype=cfg.dtype, target="alt"), cfg, "second_depth_model"))
    if cfg.pose_model:
        from .perception.pose import PoseStep

        # pose for every box the perspective task treats as a person (one definition: VerifyConfig's)
        steps.append(_named(PoseStep(cfg.pose_model, batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype,
                                     person_labels=verify_config(cfg).person_labels), cfg, "pose_model"))
    else:  # the pose step sets facing itself; without it, facing comes from keypoints in the annotations
        facing = _facing_step(verify_config(cfg).person_labels)
        if facing is not None:
            steps.append(facing)
    models = [s for s in steps if hasattr(s, "keep_image")]
    for step in models[:-1]:  # decode each image once for all model steps; the last one releases it
        step.keep_image = True
    for step in models:  # the next batches are decoded and preprocessed while one runs (same output)
        step.prefetch = cfg.prefetch
    steps.append(tasks if tasks is not None else task_step(cfg))
    if cfg.source == "pixmo" and "counting" in cfg.tasks:
        from .tasks.point_counting import PointCounting

        # Pixmo points are exhaustive counts: counting questions without boxes
        steps.append(PointCounting(seed=cfg.seed, config=verify_config(cfg)))
    steps.append(ParquetWriter(cfg.out, tasks=cfg.tasks, keep_drops=cfg.keep_drops))
    return steps


def model_requirements(cfg: GenerateConfig) -> list[tuple[str, str]]:
    """``(module, why)`` for every optional module the model steps of ``cfg`` import."""
    models = [(name, getattr(cfg, name)) for name in _MODEL_FIELDS if getattr(cfg, name)]
    if not models:
        return []
    why = "--" + ", --".join(name.replace("_", "-") for name, _ in models)
    needs = [("torch", why), ("transformers", why)]
    if cfg.detector and _model_type(cfg.detector) == "owlv2":
        needs.append(("scipy", f"--detector {cfg.detector} (OWLv2's image processor)"))
    return needs


def _model_type(model: str) -> str | None:
    """``model_type`` of a local model folder, or a guess from a Hub id (no download here)."""
    config = Path(model) / "config.json"
    if config.is_file():
        import json

        try:
            return json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError):
            return None
    return "owlv2" if "owlv2" in model.lower() else None


def check_requirements(cfg: GenerateConfig) -> None:
    """Fail before any shard runs when a model step's module is not installed (the workers would
    otherwise each fail on it), naming the extra that installs it."""
    import importlib.util

    for module, why in model_requirements(cfg):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-imported installation
            found = False
        if not found:
            raise ImportError(
                f"{module!r} is needed by {why} but is not installed: pip install 'spatialforge[models]' "
                f"(or pip install {module})"
            )


def resolve_models(cfg: GenerateConfig) -> GenerateConfig:
    """``cfg`` with every model resolved to a local folder and the device checked, in this process
    (see :mod:`.perception.resolve`); the run's fingerprint keeps the names the user gave."""
    models = {name: getattr(cfg, name) for name in _MODEL_FIELDS if getattr(cfg, name)}
    if not models:
        return cfg
    from .perception.depth_models import resolve_device
    from .perception.resolve import resolve_model

    resolved = {name: resolve_model(value, "--" + name.replace("_", "-")) for name, value in models.items()}
    hub = {name: value for name, value in models.items() if not Path(value).expanduser().is_dir()}
    resolved = {name: resolved[name] for name in hub}  # local folders stay as given
    try:
        resolve_device(cfg.device)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    return dataclasses.replace(cfg, **resolved, model_ids=hub) if hub else cfg


def generate(cfg: GenerateConfig, build: Any = None) -> dict[str, Any]:
    """Run the pipeline of ``cfg`` (resuming a killed run in ``cfg.out``); return the merged stats.

    Writes ``data/<task>/train-*.parquet``, ``README.md`` (card) and ``stats.json`` in ``cfg.out``.
    ``build`` (a picklable callable returning steps) replaces :func:`build_steps` for custom pipelines.
    Raises :class:`~.output.run_folder.OutputFolderError` when another run holds ``cfg.out`` or the
    folder holds files that are not this run's to replace (see ``allow_existing`` / ``overwrite``).
    """
    from .executors.local import LocalExecutor
    from .output.balance import finalize

    check_requirements(cfg)
    run_cfg = resolve_models(cfg)  # before the run folder exists: a model that cannot be had fails here
    common = dict(
        out_dir=cfg.out,
        num_shards=cfg.num_shards,
        fingerprint={**cfg.fingerprint(), "inputs": input_identity(cfg)},
        overwrite=cfg.overwrite,
        allow_existing=cfg.allow_existing,
        finalize=partial(finalize, seed=cfg.seed, balance=cfg.rebalance, synthetic=cfg.synthetic),
        progress=cfg.progress,
        prepare=partial(prepare_inputs, cfg),
    )
    if cfg.detections:
        common["finalize"] = partial(_finalize_with_detections, common["finalize"], cfg.detections_cache_dir)
    build = build if build is not None else partial(build_steps, run_cfg)
    if cfg.executor == "ray":
        from .executors.ray import RayExecutor

        executor = RayExecutor(build, address=cfg.ray_address, concurrency=cfg.ray_concurrency, num_gpus=cfg.ray_num_gpus,
                               cpu_concurrency=cfg.ray_cpu_concurrency, **common)
    else:
        executor = LocalExecutor(build, workers=cfg.workers, **common)
    stats = executor.run()
    if stats.get("no_objects") and cfg.source in ("folder", "hf", "pixmo") and not cfg.detector:
        logger.warning(
            "%d of %d images have no boxes (counted as no_objects): source=%r gives no boxes by itself, so no "
            "grounding, referring or relation questions are asked about them. Pass --detector (a Hugging Face "
            "detection model) to add boxes.", stats["no_objects"], stats.get("records_out", 0), cfg.source)
    return stats
