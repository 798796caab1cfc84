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


def jpeg_bytes(width: int, height: int, color: str = "red") -> bytes:
    """A solid JPEG, encoded in memory."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG")
    return buf.getvalue()


def hf_detection_dataset(columns: dict, names: list[str]):
    """A Hugging Face ``Dataset`` with ``image_id``, ``image`` (bytes) and COCO-style ``objects``
    (xywh ``bbox``, ``category`` as a ClassLabel of ``names``), the layout of the Hub's detection sets."""
    import datasets

    features = datasets.Features({
        "image_id": datasets.Value("string"),
        "image": datasets.Image(),
        "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=names)}),
    })
    return datasets.Dataset.from_dict(columns, features=features)


LABELS = ("cup", "chair", "bottle", "lamp", "book")


def make_coco_scene(root: Path, n: int, size: tuple[int, int] = (96, 64), seed: int = 0) -> dict[str, Path]:
    """``n`` images with 3 boxes each (COCO JSON, Objects365-style paths) and metric depth files.

    Boxes sit side by side (no overlap) at known depths (1..9 m, one constant value per box on a
    10 m background), so near/far and left/right truths are known.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    images, anns = [], []
    for i in range(n):
        name = f"objects365_v2_{i:08d}"
        save_image(root / "images" / "v2" / "patch0" / f"{name}.jpg", width, height, seed=i)
        depth = np.full((height, width), 10.0, np.float32)
        labels = rng.choice(len(LABELS), size=3, replace=False)
        depths = rng.choice(np.arange(1, 10), size=3, replace=False).astype(np.float32)
        for k in range(3):
            x1 = 4 + k * 30
            y1 = int(rng.integers(4, 24))
            w, h = 24, int(rng.integers(16, 36))
            depth[y1:y1 + h, x1:x1 + w] = depths[k]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(labels[k]) + 1,
                         "bbox": [x1, y1, w, h], "iscrowd": 0, "area": w * h})
        images.append({"id": i + 1, "file_name": f"images/v2/patch0/{name}.jpg", "width": width, "height": height})
        (root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"{name}.npy", depth)
    categories = [{"id": k + 1, "name": label} for k, label in enumerate(LABELS)]
    ann_path = root / "annotations.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return {"annotations": ann_path, "images": root / "images", "depth": root / "depth"}


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


class Crash(Step):
    """Fails on one image: raises (``mode="raise"``) or kills its process (``mode="die"``, like the OOM killer)."""

    name = "crash"

    def __init__(self, image_id: str, mode: str) -> None:
        super().__init__()
        self.image_id, self.mode = image_id, mode

    def process(self, record: Record) -> Record:
        if record.image_id == self.image_id:
            if self.mode == "die":
                import os

                os._exit(9)
            raise ValueError(f"cannot process {record.image_id!r}")
        return record


def build_crashing(cfg, image_id: str, mode: str) -> list[Step]:
    steps = build_toy(cfg)
    return [steps[0], Crash(image_id, mode), *steps[1:]]


def build_toy(cfg, sleep: float = 0.0) -> list[Step]:
    """``build_steps(cfg)`` with the stand-in task step (picklable through ``functools.partial``)."""
    from spatialforge.processing.pipeline import build_steps

    return build_steps(cfg, tasks=EmitRows(sleep))


def toy_generate(out: str, images: str, workers: int = 1, num_shards: int = 4, sleep: float = 0.0, **kw) -> dict:
    from spatialforge.processing.pipeline import GenerateConfig, generate

    cfg = GenerateConfig(source="folder", source_name="toy", images=images, out=out, workers=workers,
                         num_shards=num_shards, progress=False, **kw)
    return generate(cfg, build=partial(build_toy, cfg, sleep=sleep))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the toy pipeline (kill-and-resume test).")
    parser.add_argument("out")
    parser.add_argument("images")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--executor", default="local")
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    stats = toy_generate(args.out, args.images, args.workers, args.num_shards, args.sleep, executor=args.executor,
                         ray_address=args.ray_address)
    json.dump({"rows_total": stats["rows_total"]}, sys.stdout)


if __name__ == "__main__":
    # Run through the importable module, not __main__, so spawned workers find build_toy by name.
    sys.path.insert(0, str(Path(__file__).parent))
    import _pipeline_fixtures

    _pipeline_fixtures.main()
