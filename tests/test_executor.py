"""LocalExecutor / generate: same bytes for any worker count, merged stats, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from _pipeline_fixtures import make_coco_scene, make_folder, toy_generate

from spatialforge.builders.schema import TASKS
from spatialforge.processing.pipeline import GenerateConfig, build_steps, generate

HERE = Path(__file__).parent


def _files(out: Path) -> dict[str, bytes]:
    """Every output file that must not depend on how the run went (not stats.json: it has timings)."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").rglob("*")) if p.is_file()}
    files["README.md"] = (out / "README.md").read_bytes()
    return files


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_coco_scene(tmp_path_factory.mktemp("scene"), 12)


def _cfg(scene, out, **kw) -> GenerateConfig:
    kw = {"source": "objects365", "num_shards": 3, "progress": False, **kw}
    return GenerateConfig(annotations=scene["annotations"], images=scene["images"], depth_dir=scene["depth"], out=out, **kw)


def test_build_steps_order(scene, tmp_path):
    names = [s.name for s in build_steps(_cfg(scene, tmp_path / "o"))]
    assert names == ["reader", "depth_files", "facing", "tasks", "writer"]


def test_config_validation_names_the_value(scene, tmp_path):
    with pytest.raises(ValueError, match="source must be one of .* got 'coco'"):
        _cfg(scene, tmp_path, source="coco")
    with pytest.raises(ValueError, match=r"tasks must be .* got \('near_far', 'far_near'\)"):
        _cfg(scene, tmp_path, tasks=("near_far", "far_near"))
    with pytest.raises(ValueError, match="not both"):
        _cfg(scene, tmp_path, depth_model="some/model")
    with pytest.raises(ValueError, match="depth_measured says what depth files hold: give depth_dir"):
        GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"], depth_model="some/model",
                       depth_measured=True, out=tmp_path)


def test_workers_do_not_change_the_bytes_and_stats_merge(scene, tmp_path):
    s1 = generate(_cfg(scene, tmp_path / "w1", workers=1))
    s2 = generate(_cfg(scene, tmp_path / "w2", workers=2))
    f1, f2 = _files(tmp_path / "w1"), _files(tmp_path / "w2")
    assert f1 == f2
    assert "data/near_far/train-00002-of-00003.parquet" in f1
    assert s1["rows_per_task"] == s2["rows_per_task"] and s1["candidate_drops"] == s2["candidate_drops"]
    # merged stats agree with the files
    for task, n in s1["rows_per_task"].items():
        assert sum(pq.read_metadata(p).num_rows for p in (tmp_path / "w1" / "data" / task).glob("*.parquet")) == n
    assert s1["records_in"] == 12 and s1["records_out"] == 12 and s1["shards_done"] == 3
    assert [s["name"] for s in s1["steps"]] == ["reader", "depth_files", "facing", "tasks", "writer"]
    assert s1["steps"][0]["records_in"] == 12
    assert sum(s1["candidate_drops"].values()) > 0  # record.drops of every shard are merged
    saved = json.loads((tmp_path / "w1" / "stats.json").read_text())
    assert saved["rows_per_task"] == s1["rows_per_task"] and saved["config"]["num_shards"] == 3
    # every task with rows has a config; perspective (no person in the scene) has empty files, no config
    assert s1["rows_per_task"]["perspective"] == 0
    meta = yaml.safe_load((tmp_path / "w1" / "README.md").read_text().split("---")[1])
    assert {c["config_name"] for c in meta["configs"]} == {"all", *TASKS} - {"perspective"}
    assert pq.read_metadata(tmp_path / "w1" / "data" / "perspective" / "train-00001-of-00003.parquet").num_rows == 0
    markers = sorted(p.name for p in (tmp_path / "w1" / ".spatialforge" / "markers").iterdir())
    assert markers == ["shard-00000.json", "shard-00001.json", "shard-00002.json"]


def test_resume_redoes_unfinished_shards_only(scene, tmp_path):
    full = tmp_path / "full"
    generate(_cfg(scene, full))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    # shard 1 "was killed": no marker, a half-written tmp file and a corrupted renamed file
    (part / ".spatialforge" / "markers" / "shard-00001.json").unlink()
    (part / "data" / "near_far" / "train-00001-of-00003.parquet").write_bytes(b"half a file")
    (part / "data" / "grounding" / "train-00001-of-00003.parquet.tmp-999").write_bytes(b"tmp")
    done_before = (part / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns
    stats = generate(_cfg(scene, part, workers=2))
    assert _files(part) == _files(full)
    assert (part / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns == done_before  # skipped
    assert stats["records_in"] == 12


def test_rerun_with_other_settings_refuses_or_overwrites(scene, tmp_path):
    out = tmp_path / "o"
    generate(_cfg(scene, out, tasks=("near_far",)))
    with pytest.raises(ValueError, match="holds a run with other settings"):
        generate(_cfg(scene, out, tasks=("near_far",), seed=1))
    stats = generate(_cfg(scene, out, tasks=("counting",), overwrite=True))
    assert set(stats["rows_per_task"]) == {"counting"}
    assert not (out / "data" / "near_far").exists()


def test_cli_generate_prints_summary(scene, tmp_path):
    from typer.testing import CliRunner

    from spatialforge.processing.cli import _register, app

    _register()
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--image-dir",
        str(scene["images"]), "--depth-dir", str(scene["depth"]), "--out", str(out), "--num-shards", "2",
        "--tasks", "near_far,left_right", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "near_far" in result.output and "acceptance" in result.output
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["rows_per_task"]) == {"near_far", "left_right"}
    bad = CliRunner().invoke(app, ["generate", "--source", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "source must be one of" in bad.output


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_output(tmp_path):
    images = make_folder(tmp_path / "imgs", 48)
    reference = tmp_path / "reference"
    toy_generate(str(reference), str(images), workers=1, num_shards=6)

    out = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "_pipeline_fixtures.py"), str(out), str(images), "--workers", "2",
           "--num-shards", "6", "--sleep", "0.06"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / ".spatialforge" / "markers"
    deadline = time.monotonic() + 60
    while not (markers.is_dir() and any(markers.glob("shard-*.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished within 60 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must notice and stop
    proc.wait()
    done = len(list(markers.glob("shard-*.json")))
    assert 1 <= done < 6, f"{done} shards were done at the kill: the test did not interrupt the run"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["rows_total"] == 48
    assert _files(out) == _files(reference)
    ids = sorted(i for p in (out / "data").rglob("*.parquet") for i in pq.read_table(p, columns=["id"])["id"].to_pylist())
    assert len(ids) == len(set(ids)) == 48
    assert not list((out / "data").rglob("*.tmp*"))


@pytest.mark.slow
def test_generate_with_a_depth_model_step(scene, tmp_path):
    """The model step is built from the config inside the run; its depth feeds the relation tasks."""
    from _tiny_models import TinyModels

    model = TinyModels(tmp_path / "models").depth_anything()
    cfg = GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"], out=tmp_path / "o",
                         depth_model=model, tasks=("near_far",), num_shards=2, batch_size=4, device="cpu", progress=False)
    stats = generate(cfg)
    assert [s["name"] for s in stats["steps"]] == ["reader", "depth_model", "facing", "tasks", "writer"]
    assert stats["steps"][1]["records_out"] == 12
    rows = [r for p in sorted((tmp_path / "o" / "data").rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == stats["rows_total"]
    assert all(r["verification"]["depth_source"].startswith("model:") for r in rows)
    # random weights give meaningless depth: what must hold is that every candidate pair
    # (3 boxes -> 3 pairs per image) was judged on it, kept or dropped by reason
    judged = len(rows) + sum(n for k, n in stats["candidate_drops"].items() if k.startswith("near_far/"))
    assert judged == 12 * 3


@pytest.mark.parametrize("mode, workers", [("raise", 1), ("raise", 2), pytest.param("die", 2, marks=pytest.mark.slow)])
def test_a_failing_shard_stops_the_run_with_its_number(tmp_path, mode, workers):
    from functools import partial

    from _pipeline_fixtures import build_crashing

    images = make_folder(tmp_path / "imgs", 8)
    cfg = GenerateConfig(source="folder", images=images, out=tmp_path / "o", num_shards=4, workers=workers, progress=False)
    with pytest.raises(RuntimeError, match="shard 1 failed: ValueError" if mode == "raise" else "failed: BrokenProcessPool"):
        generate(cfg, build=partial(build_crashing, cfg, "img_004", mode))
    assert not (tmp_path / "o" / ".spatialforge" / "markers" / "shard-00001.json").exists()  # ids sorted: img_003, img_004 form shard 1


def test_rerun_on_changed_inputs_refuses_to_resume(tmp_path):
    scene = make_coco_scene(tmp_path / "in", 6)
    out = tmp_path / "o"
    generate(_cfg(scene, out, tasks=("near_far",)))
    data = json.loads(scene["annotations"].read_text())
    data["images"] = data["images"][:2]  # other annotations, same file name
    scene["annotations"].write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"inputs\.annotations\.size: \d+ -> \d+.*--overwrite"):
        generate(_cfg(scene, out, tasks=("near_far",)))
    # a killed run (some shards done) is refused too, instead of mixing old and new shards
    (out / ".spatialforge" / "markers" / "shard-00002.json").unlink()
    with pytest.raises(ValueError, match="holds a run with other settings or inputs"):
        generate(_cfg(scene, out, tasks=("near_far",)))
    (scene["depth"] / "extra.npy").write_bytes(b"")  # a depth file no image reads
    stats = generate(_cfg(scene, out, tasks=("near_far",), overwrite=True))
    assert stats["records_in"] == 2
    # depth files are checked one by one per shard (tests/test_run_folder.py): the folder's own
    # metadata is not an input, so the finished run resumes with nothing to redo
    done = (out / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns
    os.utime(scene["depth"], ns=(0, 0))
    assert generate(_cfg(scene, out, tasks=("near_far",)))["records_in"] == 2
    assert (out / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns == done


def test_same_inputs_named_from_another_directory_resume(scene, tmp_path, monkeypatch):
    out = tmp_path / "o"
    generate(_cfg(scene, out, tasks=("near_far",)))
    done = (out / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns
    root = scene["annotations"].parent
    monkeypatch.chdir(root.parent)
    rel = GenerateConfig(source="objects365", annotations=f"{root.name}/annotations.json", images=f"{root.name}/images",
                         depth_dir=f"{root.name}/depth", out=out, num_shards=3, progress=False, tasks=("near_far",))
    stats = generate(rel)  # same run: nothing to redo
    assert stats["records_in"] == 12
    assert (out / ".spatialforge" / "markers" / "shard-00000.json").stat().st_mtime_ns == done


def test_folder_source_with_other_images_refuses_to_resume(tmp_path):
    images = make_folder(tmp_path / "imgs", 4)
    cfg = GenerateConfig(source="folder", images=images, out=tmp_path / "o", num_shards=2, progress=False)
    generate(cfg)
    shutil.copy(images / "img_001.jpg", images / "img_100.jpg")
    with pytest.raises(ValueError, match=r"inputs\.images\.image_ids: 4 -> 5"):
        generate(cfg)


def test_cli_generate_bad_input_is_one_clean_error(tmp_path):
    from typer.testing import CliRunner

    from spatialforge.processing.cli import _register, app

    _register()
    scene = make_coco_scene(tmp_path / "in", 3)
    data = json.loads(scene["annotations"].read_text())
    data["images"][1]["file_name"] = "images/v2/patch0/not_there.jpg"
    scene["annotations"].write_text(json.dumps(data))
    args = ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--image-dir", str(scene["images"]),
            "--out", str(tmp_path / "o"), "--num-shards", "1", "--on-bad-input", "error", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2  # bad input
    assert "Error: shard 0: objects365: image 'not_there'" in result.stderr and "[missing_image]" in result.stderr
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1
    verbose = CliRunner().invoke(app, [*args, "--verbose"])  # the traceback stays available
    assert verbose.exit_code == 1 and "BadInputError" in repr(verbose.exception.__cause__)
    other = CliRunner().invoke(app, ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]),
                                     "--image-dir", str(scene["images"]), "--out", str(tmp_path / "o"), "--seed", "3", "--no-progress"])
    assert other.exit_code == 2 and "Error:" in other.stderr and "--overwrite" in other.stderr
