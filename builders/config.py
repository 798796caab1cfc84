"""Builder config of SpatialForge-10M: which task, where the annotations and the images are.

Example:
    >>> cfg = SpatialForgeConfig(name="near_far", task="near_far", annotations="sf10m/",
    ...                          image_dirs={"objects365": "/data/o365"})
    >>> cfg.on_missing_image
    'error'
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import datasets

from .schema import ALL_CONFIG, TASKS

POLICIES: tuple[str, ...] = ("error", "warn", "skip")


@dataclass
class SpatialForgeConfig(datasets.BuilderConfig):
    """One config per task, plus ``all``. Every field can be overridden at instantiation."""

    # Task whose rows are served: one of schema.TASKS, or "all" for every task.
    task: str = ALL_CONFIG
    # Annotation shards: a Hub-ready folder (data/<task>/*.parquet or *.jsonl), a .parquet/.jsonl
    # file or glob, or a Hub dataset repo id ("owner/name", "owner/name@revision").
    annotations: str | None = None
    # Hub revision (branch, tag or commit) when `annotations` is a repo id.
    revision: str | None = None
    # Image folder per source, e.g. {"objects365": "/data/o365", "openimages": ..., "pixmo": ...}.
    # Sources without a folder have all their images counted as missing.
    image_dirs: dict[str, str] | None = None
    # Rows whose image is missing or unreadable (zero-byte, not an image, truncated):
    #   "error": fail before yielding any row, naming the count, the first ids and the roots searched;
    #   "warn":  log once per image and drop its rows;   "skip": drop the rows, log one summary.
    # Images above `max_image_pixels` are never decoded: they fail under "error" and "warn" and are
    # dropped (and counted) under "skip". If every row is dropped, the split is empty (both modes).
    # Ids that would escape their image root are refused whatever the policy.
    on_missing_image: str = "error"
    # Rows that break the schema (see builders/validate.py: task other than their data/<task>/
    # folder, a box outside 0..1000, width/height <= 0, a null question, ...), found by the pre-scan:
    #   "error": fail before yielding any row, naming the count by reason, the files and first ids;
    #   "warn":  log the same and drop those rows;   "skip": drop them (counted in image_stats).
    # Files that cannot be served at all (corrupt Parquet, not UTF-8, a column absent or of another
    # type) are refused whatever the policy, naming the file and the column.
    on_invalid_row: str = "error"
    # Decompression-bomb limit in pixels (width * height); None = PIL's Image.MAX_IMAGE_PIXELS.
    max_image_pixels: int | None = None
    # Rows per Parquet record batch / JSONL chunk while reading (memory is flat in the row count).
    batch_size: int = 1024
    # Threads for the per-image checks of the pre-scan (I/O and decoding, which releases the GIL).
    check_threads: int = 8
    # How the pre-scan checks each image: "decode" (default: every pixel is decoded once, so corrupt
    # scan data is found before training; the outcome is stored in the index, a later run only
    # stat()-s unchanged files) or "header" (header and end marker only; faster on a first run).
    image_check: str = "decode"
    # Folder of the persistent image indexes; None = $SPATIALFORGE_CACHE/index (~/.cache/spatialforge/index).
    index_dir: str | None = None
    # Chat-format annotations (LLaVA / InternVL / LLaMA-Factory / ms-swift / Qwen-VL files): the folder
    # their relative image paths are under, and the model family whose box values their text holds.
    media_root: str | None = None
    model_family: str = "qwen3-vl"
    # Streaming for one rank of a DDP job (both set, or neither): ``as_streaming_dataset`` returns
    # ``split_dataset_by_node(ds, rank, world_size)`` and checks the images of that rank's rows only.
    # When the number of annotation files is not a multiple of world_size, every file is cut into
    # world_size row ranges, so each rank still reads only its share (instead of every rank reading
    # every row and keeping 1/world_size of them).
    rank: int | None = None
    world_size: int | None = None
    # Streaming several tasks: read shard k of every task side by side, so all rows of one image
    # (grounding, counting, near_far, ...) come in a row (the pipeline writes shard k of every task
    # from the same images). Shards are then the shard names, not the files; the rows are the same.
    group_tasks: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (also run after overrides are applied)."""
        if self.task not in TASKS + (ALL_CONFIG,):
            raise ValueError(f"task must be one of {TASKS + (ALL_CONFIG,)}, got {self.task!r}")
        if self.on_missing_image not in POLICIES:
            raise ValueError(f"on_missing_image must be one of {POLICIES}, got {self.on_missing_image!r}")
        if self.annotations is not None and not isinstance(self.annotations, (str, os.PathLike)):
            raise ValueError(f"annotations must be a path or a Hub repo id, got {self.annotations!r}")
        if self.image_dirs is not None:
            if not isinstance(self.image_dirs, dict):
                raise ValueError(f"image_dirs must be a dict source -> folder, got {self.image_dirs!r}")
            for source, root in self.image_dirs.items():
                if not isinstance(source, str) or not source:
                    raise ValueError(f"image_dirs keys must be source names, got {source!r}")
                if not isinstance(root, (str, os.PathLike)) or not os.path.isdir(root):
                    raise ValueError(f"image_dirs[{source!r}] must be an existing folder, got {root!r}")
        if self.on_invalid_row not in POLICIES:
            raise ValueError(f"on_invalid_row must be one of {POLICIES}, got {self.on_invalid_row!r}")
        if self.max_image_pixels is not None and (not isinstance(self.max_image_pixels, int) or self.max_image_pixels <= 0):
            raise ValueError(f"max_image_pixels must be a positive int or None, got {self.max_image_pixels!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.media_root is not None and not os.path.isdir(self.media_root):
            raise ValueError(f"media_root must be an existing folder, got {self.media_root!r}")
        if not isinstance(self.model_family, str) or not self.model_family:
            raise ValueError(f"model_family must be a model family name such as 'qwen3-vl', got {self.model_family!r}")
        if self.image_check not in ("decode", "header"):
            raise ValueError(f"image_check must be 'decode' or 'header', got {self.image_check!r}")
        if not isinstance(self.check_threads, int) or self.check_threads <= 0:
            raise ValueError(f"check_threads must be a positive int, got {self.check_threads!r}")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError(f"rank and world_size go together, got rank={self.rank!r}, world_size={self.world_size!r}")
        if self.world_size is not None and (
            not isinstance(self.world_size, int) or self.world_size <= 0 or not isinstance(self.rank, int)
            or not 0 <= self.rank < self.world_size
        ):
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank!r}, world_size={self.world_size!r}")
