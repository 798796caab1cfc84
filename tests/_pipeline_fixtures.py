"""Tiny generated inputs with known truth for the reader, writer and executor tests.

Also a command-line entry (``python tests/_pipeline_fixtures.py OUT IMAGES ...``) that runs the real
executor with a deterministic stand-in task step, used by the kill-and-resume test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from spatialforge.builders.schema import make_id, normalize_bbox
from spatialforge.processing.base import Step
from spatialforge.processing.records import Record


def save_image(path: Path, width: int, height: int, orientation: int | None = None, fmt: str = "JPEG", seed: int = 0) -> Path:
    """An image stored ``width`` x ``height`` (raw grid), optionally with an EXIF orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, fmt, exif=exif)
    else:
        im.save(path, fmt)
    return path


def make_folder(root: Path, n: int, size: tuple[int, int] = (32, 24)) -> Path:
    """``n`` images ``img_000.jpg`` ... under ``root`` (one in a sub-folder)."""
    for i in range(n):
        sub = "sub/" if i == 0 else ""
        save_image(root / f"{sub}img_{i:03d}.jpg", *size, seed=i)
    return root


class EmitRows(Step):
    """Stand-in task step: one counting row per record, count derived from the image id; and one
    grounding row per object. Counts a candidate drop ``near_far:toy`` per record. ``sleep`` makes
    runs long enough to be killed."""

    name = "toy_tasks"

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.sleep = sleep

    def process(self, record: Record) -> Record:
        if self.sleep:
            time.sleep(self.sleep)
        count = int(hashlib.sha256(record.image_id.encode()).hexdigest(), 16) % 7
        base = {"source": record.source, "image_id": record.image_id, "width": record.width, "height": record.height,
                "fact": None, "verification": {"checks": ["toy"]}}
        record.rows.append({**base, "id": make_id(record.source, record.image_id, "counting", 0), "task": "counting",
                            "question": "How many?", "answer": str(count), "objects": [], "count": count})
        for k, (box, label) in enumerate(zip(record.objects.xyxy, record.objects.labels)):
            obj = {"label": label, "bbox": normalize_bbox(box, record.width, record.height)}
            record.rows.append({**base, "id": make_id(record.source, record.image_id, "grounding", k), "task": "grounding",
                                "question": f"Where is the {label}?", "answer": json.dumps(obj["bbox"]), "objects": [obj], "count": None})
        record.drop("near_far:toy")
        return record


def build_toy(cfg, sleep: float = 0.0) -> list[Step]:
    """``build_steps(cfg)`` with the stand-in task step (picklable through ``functools.partial``)."""
    from spatialforge.processing.pipeline import build_steps

    return build_steps(cfg, tasks=EmitRows(sleep))


def toy_generate(out: str, images: str, workers: int = 1, num_shards: int = 4, sleep: float = 0.0) -> dict:
    from spatialforge.processing.pipeline import GenerateConfig, generate

    cfg = GenerateConfig(source="folder", source_name="toy", images=images, out=out, workers=workers,
                         num_shards=num_shards, progress=False)
    return generate(cfg, build=partial(build_toy, cfg, sleep=sleep))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the toy pipeline (kill-and-resume test).")
    parser.add_argument("out")
    parser.add_argument("images")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    stats = toy_generate(args.out, args.images, args.workers, args.num_shards, args.sleep)
    json.dump({"rows_total": stats["rows_total"]}, sys.stdout)


if __name__ == "__main__":
    # Run through the importable module, not __main__, so spawned workers find build_toy by name.
    sys.path.insert(0, str(Path(__file__).parent))
    import _pipeline_fixtures

    _pipeline_fixtures.main()
