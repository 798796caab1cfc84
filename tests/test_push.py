"""`spatialforge push` against the loopback Hub: only the dataset, path-free, through faults, resumable after a kill."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from _pipeline_fixtures import make_coco_scene
from hub_server import Faults, HubServer, hub  # noqa: F401  (hub is a fixture)
from huggingface_hub import HfApi, hf_hub_download

from spatialforge.builders.schema import COLUMNS
from spatialforge.processing.hub.push import PushError, Retrier, RetryPolicy, is_transient, plan_files, push
from spatialforge_10m import SpatialForge10M

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, seed=0)  # retries without waiting in tests


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """A folder written by the real pipeline (6 tasks, 3 shards; perspective without rows: no person),
    plus what a run leaves beside the dataset: run state, image copies (as --source hf makes), a temp file."""
    from spatialforge.processing.pipeline import GenerateConfig, generate

    root = tmp_path_factory.mktemp("work")
    scene = make_coco_scene(root / "scene", 8)
    out = root / "sf-out"
    generate(GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"],
                            depth_dir=scene["depth"], out=out, num_shards=3, progress=False, rebalance=False))
    copies = out / ".spatialforge" / "cache" / "images"
    copies.mkdir(parents=True, exist_ok=True)
    shutil.copy(next((scene["images"] / "v2" / "patch0").glob("*.jpg")), copies / "copy.jpg")
    (out / "data" / "near_far" / "train-00000-of-00003.parquet.tmp-9").write_bytes(b"partial")
    (out / "notes.txt").write_text(f"made in {root}\n")
    return {"root": root, "out": out, "images": scene["images"]}


def _published(out: Path) -> list[str]:
    return sorted(["README.md", "stats.json", *(p.relative_to(out).as_posix() for p in out.glob("data/*/*.parquet"))])


def _configs(folder: Path) -> list[str]:
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    return [c["config_name"] for c in meta["configs"]]


def _local_rows(folder: Path, config: str) -> list[dict]:
    """Rows of a config read with pyarrow alone: files in sorted order, rows in file order."""
    pattern = "data/*/*.parquet" if config == "all" else f"data/{config}/*.parquet"
    return [row for path in sorted(folder.glob(pattern)) for row in pq.read_table(path).to_pylist()]


def _repo_files(hub: HubServer, repo_id: str) -> dict[str, str]:
    """path -> sha256 of the content, for every file of the repo's main branch (read from the server's store)."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    out = {}
    for entry in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True):
        if hasattr(entry, "size"):
            path = hf_hub_download(repo_id, entry.path, repo_type="dataset", cache_dir=str(hub.root / "client-cache"))
            out[entry.path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def _local_files(out: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((out / rel).read_bytes()).hexdigest() for rel in _published(out)}


def _uploads(hub: HubServer, start: int = 0) -> list[str]:
    """LFS objects the server received in full and stored, one entry per upload, since upload number ``start``."""
    return hub.uploads[start:]


def test_a_generated_folder_loads_every_declared_config_with_plain_load_dataset(generated):
    out = generated["out"]
    assert pq.read_metadata(out / "data" / "perspective" / "train-00000-of-00003.parquet").num_rows == 0
    configs = _configs(out)
    assert "perspective" not in configs and {"all", "near_far", "counting"} <= set(configs)
    assert "Tasks without rows (perspective) have no config" in (out / "README.md").read_text()
    for config in configs:
        for streaming in (False, True):
            ds = datasets.load_dataset(str(out), config, split="train", streaming=streaming)
            assert list(ds) == _local_rows(out, config), (config, streaming)


def test_only_the_dataset_is_published_and_nothing_holds_a_local_path(generated):
    files, left_out = plan_files(generated["out"])
    assert sorted(f.path_in_repo for f in files) == _published(generated["out"])
    assert left_out["run_state"] == len([p for p in (generated["out"] / ".spatialforge").rglob("*") if p.is_file()]) >= 6
    assert left_out["temporary"] == 1 and left_out["not_dataset"] == 1  # the .tmp shard, notes.txt
    stats = json.loads((generated["out"] / "stats.json").read_text())
    assert stats["config"]["annotations"] == "annotations.json" and "inputs" not in stats["config"]


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_push_then_load_equals_the_local_folder_for_every_config(hub: HubServer, generated, tmp_path, streaming):
    out = generated["out"]
    result = push(out, f"{hub.user}/sf-push", token=hub.token, files_per_commit=7, retry=FAST, progress=False)
    repo_id = result.repo_id
    assert result.commits == 3 and sorted(result.uploaded) == _published(out) and result.unchanged == []
    repo = _repo_files(hub, repo_id)
    assert repo.pop(".gitattributes")
    assert repo == _local_files(out)  # exactly the dataset: no run state, no image copy, no stray file
    for path in repo:  # no uploaded byte names the work folder
        data = Path(hf_hub_download(repo_id, path, repo_type="dataset", cache_dir=str(tmp_path / "c"))).read_bytes()
        assert str(generated["root"]).encode() not in data and str(out.resolve()).encode() not in data, path
    card = (out / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "liu2026spatialforge" in card  # the card went up as written
    for config in _configs(out):
        ds = datasets.load_dataset(repo_id, config, split="train", streaming=streaming)
        assert list(ds) == _local_rows(out, config), config
    builder = SpatialForge10M(config_name="near_far", annotations=repo_id, image_dirs={"objects365": str(generated["images"])},
                              on_missing_image="error", cache_dir=str(tmp_path / "cache"))
    if streaming:
        rows = list(builder.as_streaming_dataset(split="train"))
    else:
        builder.download_and_prepare()
        rows = list(builder.as_dataset(split="train"))
    assert [{c: r[c] for c in COLUMNS} for r in rows] == _local_rows(out, "near_far")
    assert all(r["image"].size == (r["width"], r["height"]) for r in rows)
    # A second push finds everything in place and uploads nothing.
    start, uploads = len(hub.requests), len(hub.uploads)
    again = push(out, repo_id, token=hub.token, retry=FAST, progress=False)
    assert again.uploaded == [] and again.commits == 0 and sorted(again.unchanged) == _published(out)
    assert _uploads(hub, uploads) == [] and not [r for r in hub.requests[start:] if "/commit/" in r[1]]
    assert hub.unhandled == []


@pytest.mark.slow
def test_push_survives_server_errors_dropped_connections_and_slow_answers(hub: HubServer, generated):
    out = generated["out"]
    hub.faults = Faults(seed=3, error_rate=0.2, drop_rate=0.15, slow_rate=0.1, slow_seconds=0.05, max_per_request=1)
    result = push(out, f"{hub.user}/sf-faults", token=hub.token, files_per_commit=5, retry=FAST, progress=False)
    kinds = {(kind, status >= 500) for kind, status, _, _ in hub.injected}
    assert {("error", True), ("drop", False), ("slow", False)} <= kinds, hub.injected
    assert any(status == 429 for _, status, _, _ in hub.injected)
    assert any(kind == "drop" and method == "PUT" for kind, _, method, _ in hub.injected)  # mid-upload
    assert sum(result.retries.values()) > 0  # our own retries, beyond huggingface_hub's LFS ones
    hub.faults = None
    repo = _repo_files(hub, result.repo_id)
    repo.pop(".gitattributes")
    assert repo == _local_files(out)  # none missing, none extra, none duplicated
    # no content stored more often than local files hold it (the empty perspective shards share one object)
    copies = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("data/*/*.parquet"))
    assert set(_uploads(hub)) == set(copies)
    assert all(n <= copies[oid] for oid, n in Counter(_uploads(hub)).items())
    ds = datasets.load_dataset(result.repo_id, "all", split="train")
    assert list(ds) == _local_rows(out, "all")
    assert hub.unhandled == []


@pytest.mark.slow
def test_a_killed_push_reruns_uploading_only_the_rest(hub: HubServer, generated):
    out = generated["out"]
    repo_id = f"{hub.user}/sf-killed"
    lfs_objects = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("data/*/*.parquet")}
    hub.faults = Faults(slow_rate=1.0, slow_seconds=0.25, max_per_request=10**6, paths=("/lfs-objects/",))
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1"}
    cmd = [sys.executable, "-m", "spatialforge.processing.cli", "push", str(out), "--repo-id", repo_id,
           "--files-per-commit", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            commits = [r for r in hub.requests if "/commit/" in r[1] and r[2] == 200]
            if len(commits) >= 2 and len(_uploads(hub)) >= 9:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"push ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.kill()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    first = _uploads(hub)
    assert 0 < len(set(first)) < len(lfs_objects)  # killed halfway
    hub.faults = None
    start = len(hub.uploads)
    result = push(out, repo_id, token=hub.token, files_per_commit=4, retry=FAST, progress=False)
    second = _uploads(hub, start)
    assert set(first).isdisjoint(second)  # nothing uploaded twice
    assert set(first) | set(second) == lfs_objects  # and nothing missing
    assert len(result.unchanged) >= 8  # the committed batches were not sent again
    repo = _repo_files(hub, repo_id)
    repo.pop(".gitattributes")
    assert repo == _local_files(out)


def test_stale_remote_shards_are_deleted(hub: HubServer, generated, tmp_path):
    out = generated["out"]
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    repo_id = api.create_repo("sf-stale", repo_type="dataset").repo_id
    stale = tmp_path / "old.parquet"
    shutil.copy(out / "data" / "near_far" / "train-00000-of-00003.parquet", stale)
    api.upload_file(path_or_fileobj=stale, path_in_repo="data/near_far/train-00000-of-00002.parquet",
                    repo_id=repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"kept", path_in_repo="extra/notes.txt", repo_id=repo_id, repo_type="dataset")
    result = push(out, repo_id, token=hub.token, retry=FAST, progress=False)
    assert result.deleted == ["data/near_far/train-00000-of-00002.parquet"]
    files = set(api.list_repo_files(repo_id, repo_type="dataset"))
    assert files == {".gitattributes", "extra/notes.txt", *_published(out)}


def test_push_to_a_new_private_repo_on_a_branch(hub: HubServer, generated):
    out = generated["out"]
    result = push(out, "sf-branch", token=hub.token, revision="v1", private=True, retry=FAST, progress=False)
    assert result.repo_id == f"{hub.user}/sf-branch" and result.revision == "v1"
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert api.dataset_info(result.repo_id).private is True
    assert api.list_repo_files(result.repo_id, repo_type="dataset") == [".gitattributes"]  # main untouched
    assert sorted(api.list_repo_files(result.repo_id, repo_type="dataset", revision="v1")) == sorted(
        [".gitattributes", *_published(out)])
    assert hub.head(result.repo_id, branch="v1") == result.commit
    ds = datasets.load_dataset(result.repo_id, "counting", split="train", revision="v1")
    assert list(ds) == _local_rows(out, "counting")


def test_token_and_repo_are_checked_before_anything_is_uploaded(hub: HubServer, generated, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    out = generated["out"]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PushError, match=r"no Hugging Face token: run `hf auth login` or pass --token"):
        push(out, "sf-tester/x", retry=FAST, progress=False)
    with pytest.raises(PushError, match=r"token was refused .*401.*hf auth login"):
        push(out, "sf-tester/x", token="hf_wrong", retry=FAST, progress=False)
    with pytest.raises(PushError, match=r"'someone-else' is neither your user"):
        push(out, "someone-else/x", token=hub.token, retry=FAST, progress=False)
    writes = [r for r in hub.requests if r[0] in ("PUT", "POST")]
    assert writes == []  # no repo created, nothing uploaded
    assert [r[1] for r in hub.requests if r[0] == "GET"] == ["/api/whoami-v2", "/api/whoami-v2",
                                                           "/api/datasets/someone-else/x"]


def test_push_cli_errors_are_one_line(hub: HubServer, generated, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_wrong", "HF_HUB_DISABLE_XET": "1"}
    cmd = [sys.executable, "-m", "spatialforge.processing.cli", "push", str(generated["out"]), "--repo-id", "sf-tester/x"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "hf auth login" in errors[0] and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "spatialforge.processing.cli", "-v", *cmd[3:]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "PushError" in proc.stderr
    helped = subprocess.run([sys.executable, "-m", "spatialforge.processing.cli", "push", "--help"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    for flag in ("--repo-id", "--private", "--revision", "--token", "--files-per-commit", "--max-retries"):
        assert flag in helped.stdout


def test_local_checks_refuse_what_must_not_be_published(generated, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(generated["out"], bad)
    (bad / "README.md").write_text((bad / "README.md").read_text() + f"\nbuilt from {bad}/inputs\n")
    with pytest.raises(PushError, match="holds the local path"):
        plan_files(bad)
    shutil.copy(generated["out"] / "README.md", bad / "README.md")
    run = json.loads((bad / ".spatialforge" / "run.json").read_text())
    (bad / ".spatialforge" / "markers" / "shard-00002.json").unlink()
    with pytest.raises(PushError, match=rf"unfinished \(2 of {run['num_shards']} shards\)"):
        plan_files(bad)
    shutil.rmtree(bad / ".spatialforge")
    card = (bad / "README.md").read_text().replace("- config_name: near_far", "- config_name: perspective\n  "
                                                    "data_files:\n  - split: train\n    path: data/perspective/*.parquet\n"
                                                    "- config_name: near_far", 1)
    (bad / "README.md").write_text(card)
    with pytest.raises(PushError, match=r"config .perspective. .* has no rows.*datasets#8401"):
        plan_files(bad)
    # an older folder's stats.json with absolute paths is published path-free
    shutil.copy(generated["out"] / "README.md", bad / "README.md")
    stats = json.loads((bad / "stats.json").read_text())
    stats["config"]["images"] = str(generated["images"])
    (bad / "stats.json").write_text(json.dumps(stats))
    published = {f.path_in_repo: f for f in plan_files(bad)[0]}["stats.json"]
    assert json.loads(published.content)["config"]["images"] == "images"
    assert hashlib.sha256(published.content).hexdigest() == published.sha256


def test_retry_policy_backs_off_with_jitter_and_retries_only_transient_errors():
    policy = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=3.0, seed=0)
    import random

    rng = random.Random(0)
    delays = [policy.delay(a, rng) for a in range(6) for _ in range(50)]
    assert all(0 <= d <= 3.0 for d in delays) and len(set(delays)) == len(delays)  # capped, and jittered
    assert policy.delay(0, rng, retry_after=7.0) == 7.0
    slept: list[float] = []
    retrier = Retrier(policy, sleep=slept.append)
    calls = iter([ConnectionResetError("reset"), TimeoutError("slow"), "done"])

    def flaky():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert retrier("call", flaky) == "done" and len(slept) == 2 and retrier.retries["call"] == 2
    assert is_transient(ConnectionResetError()) and not is_transient(PushError("no")) and not is_transient(KeyError())
    with pytest.raises(KeyError):
        retrier("other", lambda: {}["x"])
    assert retrier.retries["other"] == 0
    always = Retrier(policy, sleep=slept.append)
    with pytest.raises(ConnectionResetError):
        always("down", lambda: (_ for _ in ()).throw(ConnectionResetError("down")))
    assert always.retries["down"] == policy.max_attempts - 1


def test_faults_are_deterministic_from_the_seed_and_bounded_per_request():
    def picks(seed: int) -> list:
        faults = Faults(seed=seed, error_rate=0.3, drop_rate=0.2, slow_rate=0.1)
        return [faults.pick("PUT", f"/lfs-objects/{i}") for i in range(60)]

    assert picks(5) == picks(5) and picks(5) != picks(6)
    assert {p[0] for p in picks(5) if p} == {"error", "drop", "slow"}
    faults = Faults(seed=0, error_rate=1.0, max_per_request=2, paths=("/commit/",))
    tries = [faults.pick("POST", "/api/datasets/a/b/commit/main") for _ in range(3)]
    assert [t[0] if t else None for t in tries] == ["error", "error", None]  # the third try goes through
    assert faults.pick("GET", "/api/whoami-v2") is None  # not an eligible path
