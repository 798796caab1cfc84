"""One run per output folder (lock, manifest, foreign files) and resume checked by content."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from _pipeline_fixtures import build_crashing, make_coco_scene, make_folder, save_image, toy_generate

from spatialforge.processing.executors.local import ShardFailed
from spatialforge.processing.output.run_folder import HASH_SPAN, OutputFolderError, RunFolder, file_identity
from spatialforge.processing.pipeline import GenerateConfig, generate

HERE = Path(__file__).parent


def _files(out: Path) -> dict[str, bytes]:
    """Every output file that must not depend on how the run went (not stats.json: it has timings)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "data").rglob("*")) if p.is_file()}
    files["README.md"] = (out / "README.md").read_bytes()
    return files


def _toy(out: Path, images: Path, **kw) -> dict:
    cfg = GenerateConfig(source="folder", source_name="toy", images=images, out=out, num_shards=4, progress=False, **kw)
    from _pipeline_fixtures import build_toy

    return generate(cfg, build=partial(build_toy, cfg))


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_run_refuses_and_the_first_is_byte_identical_to_a_lone_run(tmp_path):
    from typer.testing import CliRunner

    from spatialforge.processing.cli import _register, app

    images = make_folder(tmp_path / "imgs", 8)
    toy_generate(str(tmp_path / "lone"), str(images), num_shards=4)
    out = tmp_path / "o"
    first = subprocess.Popen([sys.executable, str(HERE / "_pipeline_fixtures.py"), str(out), str(images), "--num-shards", "4",
                              "--sleep", "0.4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / ".spatialforge" / "lock"
        _wait_for(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text(), "the first run's lock")
        _register()
        second = CliRunner().invoke(app, ["generate", "--source", "folder", "--images", str(images), "--out", str(out),
                                          "--overwrite", "--seed", "1", "--num-shards", "4", "--no-progress"])
        holder = f"in use by another run (pid {first.pid} on host {socket.gethostname()}, started "
        assert second.exit_code == 2 and holder in second.stderr and "Traceback" not in second.output
        with pytest.raises(OutputFolderError, match=r"in use by another run \(pid %d" % first.pid):
            toy_generate(str(out), str(images), num_shards=4)  # the same run, started twice, refuses too
        assert first.poll() is None  # both refusals came while the first run was running
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert _files(out) == _files(tmp_path / "lone")
    assert (out / ".spatialforge" / "lock").read_text() == ""  # released: no stale holder line


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spatialforge.processing.output.run_folder import RunFolder\n"
        f"RunFolder({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputFolderError, match=f"pid {holder.pid} on host"):
        RunFolder(out).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert f'"pid": {holder.pid}' in (out / ".spatialforge" / "lock").read_text()  # its line is still there: stale
    with RunFolder(out):
        assert json.loads((out / ".spatialforge" / "lock").read_text())["pid"] == os.getpid()
    images = make_folder(tmp_path / "imgs", 4)
    assert _toy(out, images)["records_out"] == 4  # a run takes the folder too


# -- what a run may write and delete ----------------------------------------------------------------


def _plant(out: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)


STALE = "data/counting/train-00000-of-00004.parquet"
# (files in --out before the run, flags, the refusal's words or None, files that must be kept as they were)
FOREIGN = [
    ({"notes.txt": "mine"}, {}, ["is not empty and holds no SpatialForge run", "notes.txt", "--allow-existing"], {"notes.txt"}),
    ({"notes.txt": "mine"}, {"allow_existing": True}, None, {"notes.txt"}),
    ({"notes.txt": "mine"}, {"overwrite": True}, ["holds no SpatialForge run", "notes.txt", "--overwrite deletes only"], {"notes.txt"}),
    ({"README.md": "my card"}, {"allow_existing": True}, ["holds files this run would write", "README.md"], {"README.md"}),
    ({"stats.json": "{}"}, {"allow_existing": True}, ["holds files this run would write", "stats.json"], {"stats.json"}),
    ({STALE: "old shard"}, {"allow_existing": True}, ["holds files this run would write", STALE], {STALE}),
    ({".spatialforge/markers/shard-00000.json": "{}", "x/y.txt": "mine"}, {}, ["holds no SpatialForge run", "x/"], {"x/y.txt"}),
]


@pytest.mark.parametrize(("before", "flags", "refusal", "kept"), FOREIGN)
def test_a_folder_that_holds_no_run_is_written_only_when_empty(tmp_path, before, flags, refusal, kept):
    images = make_folder(tmp_path / "imgs", 4)
    out = tmp_path / "o"
    _plant(out, before)
    if refusal is None:
        _toy(out, images, **flags)
        toy_generate(str(tmp_path / "lone"), str(images))
        assert _files(out) == _files(tmp_path / "lone")
    else:
        with pytest.raises(OutputFolderError) as info:
            _toy(out, images, **flags)
        for words in refusal:
            assert words in str(info.value)
        assert not (out / ".spatialforge" / "run.json").exists()
    for rel in kept:
        assert (out / rel).read_text() == before[rel]


@pytest.mark.parametrize("removed", [".spatialforge", ".spatialforge/run.json"])
def test_stale_shards_of_a_run_whose_state_was_removed_are_refused_by_name(tmp_path, removed):
    images = make_folder(tmp_path / "imgs", 4)
    out = tmp_path / "o"
    _toy(out, images)
    before = _files(out)
    target = out / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    for flags in ({}, {"allow_existing": True}, {"overwrite": True}):
        with pytest.raises(OutputFolderError) as info:
            _toy(out, images, seed=1, **flags)
        assert "README.md" in str(info.value) and "data/" in str(info.value)
        assert _files(out) == before  # nothing deleted, nothing mixed
    with pytest.raises(OutputFolderError, match=r"data/counting/train-00000-of-00004\.parquet"):
        _toy(out, images, allow_existing=True)


def test_overwrite_deletes_only_the_runs_files(tmp_path):
    images = make_folder(tmp_path / "imgs", 4)
    out = tmp_path / "o"
    _plant(out, {"notes.txt": "mine", "sub/keep.bin": "mine too"})
    _toy(out, images, allow_existing=True)
    (out / "data" / "grounding" / "train-00001-of-00004.parquet.tmp-4242").write_bytes(b"half")  # left by a kill
    _toy(out, images, overwrite=True, tasks=("counting",))  # other settings: a new run
    assert sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*")) == [
        "data/counting", *[f"data/counting/train-0000{k}-of-00004.parquet" for k in range(4)]]
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "keep.bin").read_text() == "mine too"
    _plant(out, {"data/counting/mine.parquet": "a user's file"})
    with pytest.raises(OutputFolderError, match=r"did not write \(not in its manifest\).*data/counting/mine\.parquet"):
        _toy(out, images, overwrite=True)
    assert (out / "data" / "counting" / "mine.parquet").read_text() == "a user's file"


def test_data_must_hold_exactly_the_runs_files_before_the_card(tmp_path):
    images = make_folder(tmp_path / "imgs", 4)
    out = tmp_path / "o"
    _toy(out, images)
    card = (out / "README.md").read_bytes()
    _plant(out, {"data/grounding/extra.parquet": "x"})
    with pytest.raises(OutputFolderError, match=r"files no shard of this run wrote: data/grounding/extra\.parquet"):
        _toy(out, images)
    (out / "data" / "grounding" / "extra.parquet").unlink()
    (out / "data" / "counting" / "train-00002-of-00004.parquet").unlink()
    with pytest.raises(OutputFolderError, match=r"files its shards wrote that are gone: data/counting/train-00002-of-00004\.parquet"):
        _toy(out, images)
    assert (out / "README.md").read_bytes() == card


def test_a_users_card_dropped_into_an_unfinished_run_is_not_replaced(tmp_path):
    images = make_folder(tmp_path / "imgs", 8)
    out = tmp_path / "o"
    cfg = GenerateConfig(source="folder", source_name="toy", images=images, out=out, num_shards=4, progress=False)
    with pytest.raises(ShardFailed):
        generate(cfg, build=partial(build_crashing, cfg, "img_004", "raise"))
    _plant(out, {"README.md": "my card"})
    with pytest.raises(OutputFolderError, match="holds README.md that this run did not write"):
        _toy(out, images)
    assert (out / "README.md").read_text() == "my card"


# -- resume by content ---------------------------------------------------------------------------------


def _scene_cfg(scene, out, **kw) -> GenerateConfig:
    return GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"],
                          depth_dir=scene["depth"], out=out, num_shards=3, progress=False, **kw)


def _marker_times(out: Path) -> list[int | None]:
    markers = [out / ".spatialforge" / "markers" / f"shard-{s:05d}.json" for s in range(3)]
    return [m.stat().st_mtime_ns if m.is_file() else None for m in markers]


def _rewrite_depth_keep_stat(path: Path) -> None:
    """Other depth values (near and far swapped), same size and the same mtime: only the hash tells."""
    st = path.stat()
    depth = np.load(path)
    np.save(path, (11.0 - depth).astype(depth.dtype))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _replace_image(path: Path) -> None:
    save_image(path, 96, 64, seed=99)


# image 00000001 is in shard 0 (6 images, 3 shards of 2); (what changes, shards redone)
CHANGES = [
    ("depth rewritten in place, size and mtime kept", lambda s: _rewrite_depth_keep_stat(s["depth"] / "objects365_v2_00000001.npy"), {0}),
    ("depth rewritten", lambda s: np.save(s["depth"] / "objects365_v2_00000003.npy", np.ones((64, 96), np.float32)), {1}),
    ("depth removed", lambda s: (s["depth"] / "objects365_v2_00000000.npy").unlink(), {0}),
    ("image replaced", lambda s: _replace_image(s["images"] / "v2" / "patch0" / "objects365_v2_00000001.jpg"), {0}),
    ("depth touched only", lambda s: os.utime(s["depth"] / "objects365_v2_00000001.npy", ns=(0, 10**18)), set()),
    ("depth folder touched", lambda s: os.utime(s["depth"], ns=(0, 10**18)), set()),
]


@pytest.mark.parametrize(("what", "change", "redone"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_input_redoes_exactly_the_shards_that_read_it(tmp_path, caplog, what, change, redone):
    scene = make_coco_scene(tmp_path / "in", 6)
    out = tmp_path / "o"
    generate(_scene_cfg(scene, out))
    # a kill before shard 2's marker: its renamed files stay, it runs again on resume
    (out / ".spatialforge" / "markers" / "shard-00002.json").unlink()
    before = _marker_times(out)
    change(scene)
    with caplog.at_level(logging.WARNING, logger="spatialforge.processing.executors.local"):
        generate(_scene_cfg(scene, out))
    after = _marker_times(out)
    assert {s for s in range(3) if after[s] != before[s]} == redone | {2}
    assert sorted(int(r.message.split()[1]) for r in caplog.records if "is redone" in r.message) == sorted(redone)
    generate(_scene_cfg(scene, tmp_path / "lone"))  # a lone run on the changed inputs
    assert _files(out) == _files(tmp_path / "lone")


def test_a_depth_file_added_later_redoes_the_shard_that_missed_it(tmp_path):
    scene = make_coco_scene(tmp_path / "in", 6)
    kept = tmp_path / "kept.npy"
    shutil.move(scene["depth"] / "objects365_v2_00000002.npy", kept)
    out = tmp_path / "o"
    stats = generate(_scene_cfg(scene, out))
    assert stats["steps"][1]["dropped"] == {"missing_depth": 1}
    before = _marker_times(out)
    shutil.move(kept, scene["depth"] / "objects365_v2_00000002.npy")
    stats = generate(_scene_cfg(scene, out))
    after = _marker_times(out)
    assert [a != b for a, b in zip(after, before)] == [False, True, False]
    assert stats["steps"][1]["dropped"] == {}


def test_an_annotation_file_changed_in_place_refuses_the_run_by_its_hash(tmp_path):
    scene = make_coco_scene(tmp_path / "in", 6)
    out = tmp_path / "o"
    generate(_scene_cfg(scene, out))
    ann = scene["annotations"]
    st = ann.stat()
    text = ann.read_text()
    ann.write_text(text.replace('"width": 96', '"width": 69', 1))  # same size
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match=r"holds a run with other settings or inputs.*inputs\.annotations\.sha256_ends: '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        generate(_scene_cfg(scene, out))


@pytest.mark.parametrize("size", [0, 10, HASH_SPAN, HASH_SPAN + 1, 2 * HASH_SPAN + 1, 300 * 1024])
def test_file_identity_sees_a_change_at_either_end(tmp_path, size):
    path = tmp_path / "f.bin"
    data = bytearray(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    first = file_identity(path)
    assert first[0] == size and first == file_identity(path)
    for where in {0, size - 1} if size else ():
        changed = bytearray(data)
        changed[where] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert file_identity(path)[3] != first[3]
    assert file_identity(tmp_path / "absent") is None


def test_input_change_trusts_stat_only_when_nothing_touched_the_file(tmp_path, monkeypatch):
    """Long after the recording, an untouched file is not read again; a write that set the mtime
    back is still seen (its ctime moved), and a touch with the same bytes is no change."""
    from spatialforge.processing.output import run_folder

    path = tmp_path / "d.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    recorded = file_identity(path)
    later = time.time_ns() + 3600 * 10**9
    hashed = []
    monkeypatch.setattr(run_folder, "file_identity", lambda p: hashed.append(p) or file_identity(p))
    assert run_folder.input_change(str(path), recorded, later) is None and hashed == []
    st = path.stat()
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4)[::-1].copy())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_folder.input_change(str(path), recorded, later) == "content changed" and len(hashed) == 1
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert run_folder.input_change(str(path), recorded, later) is None  # same bytes: same file
    assert run_folder.input_change(str(tmp_path / "gone.npy"), recorded, later) == "removed"
    assert run_folder.input_change(str(path), None, later) == "appeared"


def test_a_depth_file_rewritten_between_kill_and_resume_redoes_its_shard(tmp_path, caplog):
    """SIGKILL after shard 0's marker, rewrite the depth of an image of shard 0 in place (same size and
    mtime), resume: shard 0 is redone with the new depth and the folder equals a lone run on it."""
    scene = make_coco_scene(tmp_path / "in", 6)
    out = tmp_path / "o"
    script = (
        "import time\n"
        "from spatialforge.processing.base import Step\n"
        "from spatialforge.processing.pipeline import GenerateConfig, build_steps, generate\n"
        "class Slow(Step):\n"
        "    name = 'slow'\n"
        "    def process(self, record):\n"
        "        time.sleep(0.5)\n"
        "        return record\n"
        f"cfg = GenerateConfig(source='objects365', annotations={str(scene['annotations'])!r}, images={str(scene['images'])!r},\n"
        f"                     depth_dir={str(scene['depth'])!r}, out={str(out)!r}, num_shards=3, progress=False)\n"
        "generate(cfg, build=lambda: [*build_steps(cfg)[:-1], Slow(), build_steps(cfg)[-1]])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    marker = out / ".spatialforge" / "markers" / "shard-00000.json"
    try:
        _wait_for(lambda: marker.is_file() or proc.poll() is not None, "shard 0's marker")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert not (out / ".spatialforge" / "markers" / "shard-00002.json").exists(), "the run ended before the kill"
    near_far = out / "data" / "near_far" / "train-00000-of-00003.parquet"
    old_rows = near_far.read_bytes()
    _rewrite_depth_keep_stat(scene["depth"] / "objects365_v2_00000001.npy")
    with caplog.at_level(logging.WARNING, logger="spatialforge.processing.executors.local"):
        generate(_scene_cfg(scene, out))
    assert [r.message.split(":")[0] for r in caplog.records if "is redone" in r.message] == ["shard 0 is redone"]
    assert "objects365_v2_00000001.npy changed (content changed)" in caplog.text
    generate(_scene_cfg(scene, tmp_path / "lone"))
    assert _files(out) == _files(tmp_path / "lone")
    assert near_far.read_bytes() != old_rows  # the new depth changed shard 0's near/far rows
