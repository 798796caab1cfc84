"""``spatialforge generate`` end to end with tiny depth, detection and pose models, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import TinyModels

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_generate_with_model_steps_offline(tmp_path):
    from PIL import Image

    tiny = TinyModels(tmp_path / "models")
    depth, detector, pose = tiny.depth_anything(), tiny.owlv2(grid_boxes=True), tiny.vitpose()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # one EXIF-rotated photo: displayed 96x128
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / "rot.jpg", exif=exif)

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "spatialforge.processing.cli", "generate", "--source", "folder",
        "--images", str(images), "--out", str(out), "--source-name", "tiny",
        "--depth-model", depth, "--detector", detector, "--detector-labels", "person,cup,dog,chair",
        "--pose-model", pose, "--batch-size", "2", "--device", "cpu", "--num-shards", "1", "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    stats = json.loads((out / "stats.json").read_text())
    steps = {s["name"]: s for s in stats["steps"]}
    for name in ("detection", "depth_model", "pose"):
        assert steps[name]["records_in"] == 5, steps[name]
        assert steps[name]["records_out"] == 5, steps[name]
    rows = stats["rows_per_task"]
    assert sum(rows.values()) > 0

    import datasets

    ds = datasets.load_dataset(str(out), "all", split="train")
    assert len(ds) == sum(rows.values())
    assert set(ds["source"]) == {"tiny"}
    for row in ds:
        assert row["verification"]["box_source"] == f"model:{detector}"
        if row["task"] == "near_far":
            assert row["verification"]["depth_source"] == f"model:{depth}:inverse_depth"
        assert row["task"] != "counting"  # model boxes are not exhaustive
    rotated = [row for row in ds if row["image_id"].startswith("rot")]
    assert all((row["width"], row["height"]) == (96, 128) for row in rotated)
    assert Path(out / "README.md").exists()
