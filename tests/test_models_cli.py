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

from spatialforge.processing.base import Step

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
        "--image-dir", str(images), "--out", str(out), "--source-name", "tiny",
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


def test_model_flags_reach_the_steps(tmp_path, monkeypatch):
    """CLI flags -> GenerateConfig -> steps (nothing is loaded: model steps load in setup())."""
    from typer.testing import CliRunner

    from _pipeline_fixtures import make_coco_scene
    from spatialforge.processing import pipeline
    from spatialforge.processing.cli import _register, app

    _register()
    scene = make_coco_scene(tmp_path / "scene", 1)
    seen = []
    monkeypatch.setattr(pipeline, "generate", lambda cfg: seen.append(cfg) or {"rows_per_task": {}})
    base = ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--image-dir", str(scene["images"]),
            "--out", str(tmp_path / "o"), "--no-progress"]
    flags = ["--depth-model", "org/depth", "--depth-flip-tta", "--detector", "org/det", "--detector-threshold", "0.45",
             "--pose-model", "org/pose", "--ground-contact", "--dtype", "bf16"]
    result = CliRunner().invoke(app, [*base, *flags])
    assert result.exit_code == 0, result.output
    steps = {s.name: s for s in pipeline.build_steps(seen[-1])}
    assert list(steps) == ["reader", "detection", "depth_model", "pose", "tasks", "writer"]  # pose sets facing itself
    assert steps["depth_model"].flip_tta and steps["depth_model"].target == "depth"
    assert steps["detection"].threshold == 0.45
    assert {steps[n].dtype_arg for n in ("detection", "depth_model", "pose")} == {"bf16"}
    assert steps["tasks"].config.ground_contact is True
    # each image decoded once for all model steps: kept by all but the last, which releases it
    assert [steps[n].keep_image for n in ("detection", "depth_model", "pose")] == [True, True, False]
    assert steps["pose"].person_labels == set(steps["tasks"].config.person_labels)  # Man, Woman, Boy, Girl too

    result = CliRunner().invoke(app, [*base, "--depth-dir", str(scene["depth"]), "--second-depth-model", "org/other"])
    assert result.exit_code == 0, result.output
    steps = {s.name: s for s in pipeline.build_steps(seen[-1])}
    assert list(steps) == ["reader", "depth_files", "depth_model_alt", "facing", "tasks", "writer"]
    assert steps["depth_model_alt"].keep_image is False
    assert steps["facing"].person_labels == set(steps["tasks"].config.person_labels)
    assert steps["depth_model_alt"].target == "alt" and steps["depth_model_alt"].model_id == "org/other"
    assert steps["tasks"].config.ground_contact is False

    both = CliRunner().invoke(app, [*base, "--depth-model", "a/b", "--depth-flip-tta", "--second-depth-model", "c/d"])
    assert both.exit_code != 0 and "not both" in both.output


class ProbeDepthAlt(Step):
    """Counts the source of ``record.meta["depth_alt"]`` per record (as a candidate drop, so it reaches the stats)."""

    name = "probe"

    def process(self, record):
        alt = record.meta.get("depth_alt")
        record.drop(f"probe/depth_alt={alt.source if alt is not None else None}")
        return record


def _probed(cfg):
    from spatialforge.processing.pipeline import build_steps

    steps = build_steps(cfg)
    return [*steps[:-1], ProbeDepthAlt(), steps[-1]]


@pytest.mark.slow
def test_second_depth_signals_reach_near_far(tmp_path):
    """--depth-flip-tta and --second-depth-model fill record.meta["depth_alt"], which near_far checks."""
    from functools import partial

    import pyarrow.parquet as pq

    from _pipeline_fixtures import make_coco_scene
    from spatialforge.processing.pipeline import GenerateConfig, generate

    tiny = TinyModels(tmp_path / "models")
    first, second = tiny.depth_anything(), tiny.dpt()
    scene = make_coco_scene(tmp_path / "scene", 4)
    common = {"source": "objects365", "annotations": scene["annotations"], "images": scene["images"], "tasks": ("near_far",),
              "num_shards": 1, "batch_size": 4, "device": "cpu", "progress": False}

    cfg = GenerateConfig(out=tmp_path / "tta", depth_model=first, depth_flip_tta=True, **common)
    stats = generate(cfg, build=partial(_probed, cfg))
    assert stats["candidate_drops"][f"probe/depth_alt=model:{first}:inverse_depth:flip"] == 4

    # exact depth files first (pairs pass on them), the second model's order checked on every such pair
    cfg = GenerateConfig(out=tmp_path / "second", depth_dir=scene["depth"], depth_measured=True, second_depth_model=second,
                         **common)
    stats = generate(cfg, build=partial(_probed, cfg))
    assert [s["name"] for s in stats["steps"]] == ["reader", "depth_files", "depth_model_alt", "facing", "tasks", "probe", "writer"]
    assert stats["candidate_drops"][f"probe/depth_alt=model:{second}:inverse_depth"] == 4
    rows = [r for p in (tmp_path / "second" / "data").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    checked = sum("depth_alt" in r["verification"]["checks"] for r in rows)
    disagreed = sum(n for k, n in stats["candidate_drops"].items() if k.startswith("near_far/depth_alt"))
    assert checked + disagreed > 0
    assert all(r["verification"]["depth_source"] == "file:depth" for r in rows)  # the first depth stays the files'


_MISSING = r"""
import sys
sys.modules[{module!r}] = None  # as if not installed: importing it raises ImportError
sys.argv = ["spatialforge"] + {argv!r}
from spatialforge.processing.cli import main
try:
    main()
except SystemExit as e:
    print("exit", e.code)
print("torch imported:", sys.modules.get("torch") is not None)
"""


@pytest.mark.parametrize(
    "module, flags, named",
    [
        ("torch", ["--depth-model", "org/depth"], "--depth-model"),
        ("transformers", ["--detector", "org/det", "--pose-model", "org/pose"], "--detector, --pose-model"),
        ("scipy", ["--detector", "OWLV2"], "OWLv2"),  # a local folder whose config says owlv2
    ],
)
def test_missing_model_packages_fail_before_any_shard(tmp_path, module, flags, named):
    from _pipeline_fixtures import make_coco_scene

    scene = make_coco_scene(tmp_path / "scene", 1)
    owl = tmp_path / "owl"
    owl.mkdir()
    (owl / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    flags = [str(owl) if f == "OWLV2" else f for f in flags]
    out = tmp_path / "out"
    argv = ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--image-dir",
            str(scene["images"]), "--out", str(out), "--num-shards", "1", "--no-progress", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _MISSING.format(module=module, argv=argv)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "exit 2" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert f"{module!r} is needed by" in error[0] and named in error[0]
    assert "pip install 'spatialforge[models]'" in error[0]
    assert "torch imported: False" in proc.stdout  # nothing model-related ran
    assert not list(out.rglob("*.parquet")) and not (out / "stats.json").exists()  # no shard ran
