"""A resumable, shuffled, DDP-sharded training stream over SpatialForge rows with their images.

``TrainingStream`` is a ``torch.utils.data.IterableDataset`` on top of the builder's streaming
dataset (``SpatialForge10M.as_streaming_dataset``)::

    annotation shards --(split_dataset_by_node: this rank's shards)--> DataLoader worker k: its shards
        -> rows (or all rows of one image, ``group_by_image``) -> seeded shuffle buffer
        -> image decoded (EXIF-transposed, RGB; at ``decode_size`` scale where given)
        -> {"id", "rows", "image", "image_path", "image_size"}

* **DDP.** ``rank``/``world_size`` (default: ``torch.distributed`` when it is initialized) select
  this rank's shards, and only the images of those rows are checked before the first sample.
  When the files do not divide ``world_size``, the builder cuts every file into ``world_size``
  row ranges (logged as a warning), so no rank reads the others' rows.
* **Workers.** Each DataLoader worker reads disjoint shards (``datasets`` splits them by
  ``worker_info``); more workers than shards leave the extra ones idle, and ``datasets`` says so.
* **Grouping.** ``group_by_image`` makes one sample of the consecutive rows of one image. With
  several tasks (``"all"``), shard ``k`` of every task is read side by side (``group_tasks``), so
  an image's grounding, counting, relation rows ... form one multi-turn sample.
* **Shuffle.** A buffer of ``shuffle_buffer`` samples drawn from an rng seeded by ``(seed, epoch,
  rank, worker)``; the same seed gives the same order. ``set_epoch`` reshuffles.
* **Resume.** ``state_dict()`` / ``load_state_dict()`` hold the position of the underlying
  ``datasets`` stream, the samples in the shuffle buffer and the rng, so a resumed run yields
  exactly the samples not yet yielded, in the same order (``datasets`` alone drops the buffer).
  With DataLoader workers, use torchdata's ``StatefulDataLoader``: it calls these per worker.
* **Decode size.** ``decode_size=processor`` (or ``(width, height)``, or an int for both) decodes
  each image at the smallest scale that still has that many pixels on each side (JPEG DCT scaling,
  else an integer reduce; see :mod:`.images`), where the processor's output grid allows it: a
  processor that resizes a 1024 x 768 photo to 224 px reads the same image at a quarter of the
  pixels. ``image_size`` is always the full image's size (the grid the rows' boxes refer to).
* **Bad images met mid-stream** (the pre-scan checks header and trailer only; a file may still
  fail to decode, or vanish): under ``on_missing_image="skip"`` the sample is dropped and counted
  in ``counts`` (``corrupt``, ``missing``), ``"warn"`` also logs each, ``"error"`` raises naming the
  row and the file.

Example:
    >>> collate = ChatCollator(processor)                                       # doctest: +SKIP
    >>> stream = TrainingStream("sf10m/", "near_far", image_dirs={"objects365": "/data/o365"},
    ...                         seed=0, group_by_image=True, decode_size=processor)  # doctest: +SKIP
    >>> from torchdata.stateful_dataloader import StatefulDataLoader            # doctest: +SKIP
    >>> loader = StatefulDataLoader(stream, batch_size=8, num_workers=2, collate_fn=collate)  # doctest: +SKIP
    >>> state = loader.state_dict()   # ... later: loader.load_state_dict(state)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .images import decode_image, resolve_decode_size

logger = logging.getLogger(__name__)

CORRUPT, MISSING = "corrupt", "missing"


def _dist_rank_world() -> tuple[int | None, int | None]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None, None


class TrainingStream(torch.utils.data.IterableDataset):
    """Shuffled, DDP-sharded, resumable samples ``{"id", "rows", "image", "image_path", "image_size"}``.

    ``rows`` is a list of schema rows (one, or every consecutive row of one image with
    ``group_by_image``, at most ``max_turns`` of them), ``image`` the decoded ``PIL.Image`` (RGB,
    EXIF-transposed: the grid the boxes refer to), ``image_size`` its full ``(width, height)``
    (``image.size`` unless ``decode_size`` decoded it smaller). ``decode_size``: the processor the
    samples are for (or a ``(width, height)`` / int), see the module docstring; ``None``: full
    size. ``builder_kwargs`` go to the builder config (``index_dir``, ``max_image_pixels``,
    ``batch_size``, ``revision``, ...).
    """

    def __init__(
        self,
        annotations: str,
        task: str = "all",
        image_dirs: dict[str, str] | None = None,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        group_by_image: bool = False,
        max_turns: int | None = None,
        on_missing_image: str = "skip",
        rank: int | None = None,
        world_size: int | None = None,
        decode_size: Any = None,
        **builder_kwargs: Any,
    ) -> None:
        import datasets

        from spatialforge_10m import SpatialForge10M

        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0 (0 or 1: no shuffling), got {shuffle_buffer!r}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be a positive int or None, got {max_turns!r}")
        if rank is None and world_size is None:
            rank, world_size = _dist_rank_world()
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.group_by_image, self.max_turns = group_by_image, max_turns
        self.on_missing_image = on_missing_image
        self.decode_size = resolve_decode_size(decode_size)
        self.rank, self.world_size = rank, world_size
        # Several tasks grouped by image: read shard k of every task side by side (see the config).
        builder_kwargs.setdefault("group_tasks", group_by_image)
        builder = SpatialForge10M(
            config_name=task,
            annotations=annotations,
            image_dirs=image_dirs,
            on_missing_image=on_missing_image,
            rank=rank,
            world_size=world_size,
            **builder_kwargs,
        )
        ds = builder.as_streaming_dataset(split="train")  # checks this rank's images (policy applies)
        self.image_stats: dict = builder.image_stats
        # Paths only: the image is decoded after the shuffle buffer (which then holds small rows),
        # and a file that fails to decode is this stream's to count, not an exception inside datasets.
        self._ds = ds.cast_column("image", datasets.Image(decode=False))
        self._epoch = 0
        self._resume: dict | None = None
        self._state: dict | None = None
        self.counts: Counter = Counter()  # samples dropped mid-stream, by reason (this process)

    @property
    def num_shards(self) -> int:
        """Shards of this rank (the most DataLoader workers that get work)."""
        return self._ds.num_shards

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the shard order and the shuffle buffer's rng)."""
        self._epoch = int(epoch)
        self._ds.set_epoch(self._epoch)

    # -- resumable position ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position after the last sample yielded (in this process: a worker's own under workers)."""
        if self._state is None:
            return {"epoch": self._epoch, "source": None, "buffer": [], "pending": None, "rng": None,
                    "yielded": 0, "counts": {}}
        s = self._state
        return {
            "epoch": self._epoch,
            "source": self._ds.state_dict(),
            "buffer": list(s["buffer"]),
            "pending": s["pending"],
            "rng": s["rng"].bit_generator.state,
            "yielded": s["yielded"],
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the sample ``state`` was taken at (the next ``iter`` starts there)."""
        self._resume = state
        self.set_epoch(state["epoch"])

    # -- iteration ---------------------------------------------------------------------------------
    def _rng_seed(self) -> list[int]:
        info = torch.utils.data.get_worker_info()
        return [self.seed, self._epoch, self.rank or 0, info.id if info is not None else 0]

    def _units(self, rows: Iterator[dict], pending: dict | None) -> Iterator[tuple[list[dict], dict | None]]:
        """Samples' rows, each with the row read ahead (the next sample's first), which a state must keep."""
        if not self.group_by_image:
            for row in rows:
                yield [row], None
            return
        group: list[dict] = [pending] if pending is not None else []
        for row in rows:
            if group and (
                (row["source"], row["image_id"]) != (group[0]["source"], group[0]["image_id"])
                or (self.max_turns is not None and len(group) >= self.max_turns)
            ):
                yield group, row
                group = [row]
            else:
                group.append(row)
        if group:
            yield group, None

    def __iter__(self) -> Iterator[dict]:
        resume, self._resume = self._resume, None
        rng = np.random.default_rng(self._rng_seed())
        buffer: list[list[dict]] = []
        pending, yielded = None, 0
        source = None
        if resume is not None and resume.get("source") is not None:
            source = resume["source"]
            buffer, pending, yielded = list(resume["buffer"]), resume["pending"], resume["yielded"]
            rng.bit_generator.state = resume["rng"]
            self.counts = Counter(resume.get("counts", {}))
        state = self._state = {"buffer": buffer, "pending": pending, "rng": rng, "yielded": yielded}
        size = max(1, self.shuffle_buffer)
        for unit, ahead in self._units(self._rows(source), pending):
            state["pending"] = ahead
            buffer.append(unit)
            if len(buffer) >= size:
                yield from self._draw(state)
        state["pending"] = None
        while buffer:
            yield from self._draw(state)

    def _draw(self, state: dict) -> Iterator[dict]:
        """Take one random unit out of the buffer and yield its sample (nothing if its image is bad)."""
        buffer = state["buffer"]
        k = int(state["rng"].integers(len(buffer)))
        buffer[k], buffer[-1] = buffer[-1], buffer[k]
        sample = self._sample(buffer.pop())
        if sample is not None:
            state["yielded"] += 1
            yield sample

    def _rows(self, source: dict | None) -> Iterator[dict]:
        """Rows of this rank and worker, from the position ``source`` (a ``datasets`` state) if given."""
        if source is None:
            yield from self._ds
            return
        self._ds.load_state_dict(source)
        rows = iter(self._ds)
        try:
            first = next(rows)
        except StopIteration:
            return
        finally:  # datasets keeps a loaded state for every later iter(): this resume is one-off
            self._ds.load_state_dict(None)
        yield first
        yield from rows

    def _sample(self, rows: list[dict]) -> dict | None:
        """Decode the image of ``rows``; ``None`` (counted) when it cannot be decoded under skip/warn."""
        from PIL import Image, UnidentifiedImageError

        ref = rows[0]["image"]
        path = ref["path"]
        try:
            image, size = decode_image(path, self.decode_size)
        except FileNotFoundError as err:
            return self._bad(rows, MISSING, path, err)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, struct.error) as err:
            return self._bad(rows, CORRUPT, path, err)
        return {
            "id": rows[0]["id"],
            "rows": [{k: v for k, v in r.items() if k != "image"} for r in rows],
            "image": image,
            "image_path": path,
            "image_size": size,
        }

    def _bad(self, rows: list[dict], reason: str, path: str, err: Exception) -> None:
        ids = [r["id"] for r in rows]
        if self.on_missing_image == "error":
            raise OSError(f"image {path!r} of row {ids[0]!r} is {reason}: {type(err).__name__}: {err}") from err
        self.counts[reason] += 1
        self.counts[f"{reason}_rows"] += len(ids)
        log = logger.warning if self.on_missing_image == "warn" else logger.debug
        log("skipping %d rows (first %r): image %s is %s (%s: %s)", len(ids), ids[0], path, reason, type(err).__name__, err)
        return None


__all__ = ["TrainingStream"]
