"""RayExecutor on a local Ray instance: the local executor's Parquet bytes, stats and markers; resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from _model_fixtures import make_model_scene, model_config
from _pipeline_fixtures import make_coco_scene, make_folder, toy_generate
from typer.testing import CliRunner

from spatialforge.processing.base import BatchStep, Step
from spatialforge.processing.cli import _register, app
from spatialforge.processing.executors.ray import Stage, chunk_size_of, plan
from spatialforge.processing.pipeline import GenerateConfig, generate

HERE = Path(__file__).parent


def _files(out: Path) -> dict[str, bytes]:
    """Every output file that must not depend on the executor (not stats.json: it has timings)."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").rglob("*")) if p.is_file()}
    files["README.md"] = (out / "README.md").read_bytes()
    return files


def _counts(stats: dict) -> dict:
    """The stats without timings."""
    steps = [{k: v for k, v in s.items() if not k.endswith("seconds")} for s in stats["steps"]]
    keep = ("records_in", "records_out", "no_objects", "rows_per_task", "candidate_drops", "shards_done", "num_shards")
    return {**{k: stats[k] for k in keep}, "steps": steps}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module (about 4 s to start). Its workers import the test helpers."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 2**20, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_coco_scene(tmp_path_factory.mktemp("scene"), 12)


class _Plain(Step):
    name = "plain"


class _Model(BatchStep):
    name = "model"

    def __init__(self, batch_size: int, prepares: bool) -> None:
        super().__init__(batch_size)
        if prepares:
            self.prepare_batch = lambda records: None  # an instance attribute is not an override
        self._prepares = prepares

    @property
    def prepares(self) -> bool:
        return self._prepares


def test_plan_gives_each_model_step_a_cpu_stage_and_an_actor_stage():
    steps = [_Plain(), _Plain(), _Model(4, True), _Model(6, False), _Plain(), _Plain(), _Plain()]
    assert plan(steps) == [Stage([1]), Stage([2], prepare=True), Stage([2], model=True), Stage([3], model=True),
                           Stage([4, 5])]
    assert chunk_size_of(steps) == 12  # a multiple of both batch sizes: no batch straddles two chunks


def test_executor_settings_are_checked_with_the_value(scene, tmp_path):
    def cfg(**kw):
        return GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"],
                              out=tmp_path / "o", **kw)

    with pytest.raises(ValueError, match="executor must be one of .* got 'slurm'"):
        cfg(executor="slurm")
    with pytest.raises(ValueError, match="ray_address 'auto' needs executor='ray'"):
        cfg(ray_address="auto")
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0, got -1"):
        cfg(prefetch=-1)
    with pytest.raises(ValueError, match="ray_concurrency must be an integer >= 1, got 0"):
        cfg(executor="ray", ray_concurrency=0)
    assert cfg(executor="ray", ray_num_gpus=0.5).fingerprint() == cfg().fingerprint()  # same output, resumable


def test_cli_ray_executor_writes_the_local_bytes_and_stats(scene, ray_address, tmp_path):
    common = ["generate", "--source", "objects365", "--annotations", str(scene["annotations"]), "--images", str(scene["images"]),
              "--depth-dir", str(scene["depth"]), "--num-shards", "3", "--no-progress"]
    _register()
    runner = CliRunner()
    local = runner.invoke(app, [*common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, [*common, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", ray_address])
    assert on_ray.exit_code == 0, on_ray.output
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    s_local, s_ray = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("local", "ray"))
    assert _counts(s_ray) == _counts(s_local)
    assert s_ray["rows_total"] > 0 and s_ray["records_out"] == 12
    assert sorted(p.name for p in (tmp_path / "ray" / ".spatialforge" / "markers").iterdir()) == [
        f"shard-{k:05d}.json" for k in range(3)]


def test_ray_executor_resumes_a_run_of_the_local_one(scene, ray_address, tmp_path):
    """Both executors keep the same run record and markers: a local run's finished shards are kept."""
    def cfg(**kw):
        return GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"],
                              depth_dir=scene["depth"], out=tmp_path / "o", num_shards=3, progress=False, **kw)

    reference = _files_after(generate(cfg()), tmp_path / "o")
    marker = tmp_path / "o" / ".spatialforge" / "markers" / "shard-00001.json"
    marker.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "data").rglob("shard-00000-*.parquet")}
    stats = generate(cfg(executor="ray"))
    assert _files(tmp_path / "o") == reference
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # shard 0 was not redone
    assert stats["shards_done"] == 3


def _files_after(_stats: dict, out: Path) -> dict[str, bytes]:
    return _files(out)


def test_a_failing_step_on_ray_names_its_shard(ray_address, tmp_path):
    from functools import partial

    from _pipeline_fixtures import build_crashing

    images = make_folder(tmp_path / "imgs", 8)
    cfg = GenerateConfig(source="folder", source_name="toy", images=images, out=tmp_path / "o", num_shards=4,
                         progress=False, executor="ray")
    from spatialforge.processing.executors.local import ShardFailed

    with pytest.raises(ShardFailed, match="shard 2 failed") as info:
        generate(cfg, build=partial(build_crashing, cfg, "img_005", "raise"))
    assert isinstance(info.value.__cause__, ValueError)
    assert "cannot process 'img_005'" in str(info.value.__cause__)


@pytest.mark.slow
def test_ray_model_steps_give_the_local_bytes(ray_address, tmp_path):
    """Detection and depth as actor stages, their decoding and preprocessing as CPU stages (the
    image decoded for detection is kept for depth). Pose is left out to keep the run short: its
    prepare / process split is checked against the inline path in test_prefetch."""
    scene = make_model_scene(tmp_path / "scene")
    local = generate(model_config(scene, tmp_path / "local", pose=False, prefetch=0))
    on_ray = generate(model_config(scene, tmp_path / "ray", pose=False, executor="ray"))
    assert local["rows_total"] > 0
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert _counts(on_ray) == _counts(local)


@pytest.mark.slow
def test_ray_run_killed_halfway_resumes_to_the_same_bytes(ray_address, tmp_path):
    images = make_folder(tmp_path / "imgs", 48)
    reference = tmp_path / "reference"
    toy_generate(str(reference), str(images), num_shards=6)

    out = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "_pipeline_fixtures.py"), str(out), str(images), "--num-shards", "6",
           "--sleep", "0.06", "--executor", "ray", "--ray-address", ray_address]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / ".spatialforge" / "markers"
    deadline = time.monotonic() + 120
    while not (markers.is_dir() and any(markers.glob("shard-*.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard finished within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # the driver: it writes every file, so nothing writes after this
    proc.wait()
    done = len(list(markers.glob("shard-*.json")))
    assert 1 <= done < 6, f"{done} shards were done at the kill: the test did not interrupt the run"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["rows_total"] == 48
    assert _files(out) == _files(reference)
    ids = sorted(i for p in (out / "data").rglob("*.parquet") for i in pq.read_table(p, columns=["id"])["id"].to_pylist())
    assert len(ids) == len(set(ids)) == 48
    assert not list((out / "data").rglob("*.tmp*"))
