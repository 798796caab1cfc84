"""The loopback Hub speaks enough of the protocol for the real huggingface_hub and datasets clients."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile, RepoFolder

from hub_server import HubServer, git_blob_sha1, hub, hub_server  # noqa: F401  (hub is a fixture)

NEAR_FAR = {"id": ["nf-0", "nf-1", "nf-2"], "question": ["Which is nearer?"] * 3, "answer": ["cup", "dog", "car"]}
LEFT_RIGHT = {"id": ["lr-0", "lr-1"], "question": ["Is the cup left of the dog?"] * 2, "answer": ["yes", "no"]}
CARD = """---
license: cc-by-nc-4.0
configs:
- config_name: near_far
  data_files:
  - split: train
    path: data/near_far/*.parquet
- config_name: left_right
  data_files:
  - split: train
    path: data/left_right/*.parquet
---
# Tiny spatial QA
"""


def _rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _dataset_folder(root: Path) -> Path:
    """A Hub-ready folder: card with one config per task and one Parquet shard per task."""
    for task, columns in (("near_far", NEAR_FAR), ("left_right", LEFT_RIGHT)):
        (root / "data" / task).mkdir(parents=True)
        pq.write_table(pa.table(columns), root / "data" / task / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(CARD)
    return root


def _upload(hub: HubServer, tmp_path: Path, name: str) -> tuple[HfApi, str]:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    repo_id = api.create_repo(name, repo_type="dataset").repo_id
    api.upload_folder(folder_path=_dataset_folder(tmp_path / "folder"), repo_id=repo_id, repo_type="dataset")
    return api, repo_id


def test_create_repo_and_upload_folder_store_parquet_in_lfs(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    assert api.whoami()["name"] == hub.user
    url = api.create_repo("spatial", repo_type="dataset")
    assert (url.repo_id, url.repo_type) == (f"{hub.user}/spatial", "dataset")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("spatial", repo_type="dataset")
    assert err.value.response.status_code == 409
    assert api.create_repo("spatial", repo_type="dataset", exist_ok=True).repo_id == url.repo_id

    folder = _dataset_folder(tmp_path / "folder")
    info = api.upload_folder(folder_path=folder, repo_id=url.repo_id, repo_type="dataset", commit_message="add")
    assert info.oid == hub.head(url.repo_id)
    assert api.dataset_info(url.repo_id).sha == info.oid
    assert api.list_repo_files(url.repo_id, repo_type="dataset") == [
        ".gitattributes",
        "README.md",
        "data/left_right/train-00000-of-00001.parquet",
        "data/near_far/train-00000-of-00001.parquet",
    ]
    entries = {e.path: e for e in api.list_repo_tree(url.repo_id, repo_type="dataset", recursive=True)}
    assert isinstance(entries["data"], RepoFolder) and isinstance(entries["data/near_far"], RepoFolder)
    shard = folder / "data/near_far/train-00000-of-00001.parquet"
    remote = entries["data/near_far/train-00000-of-00001.parquet"]
    assert isinstance(remote, RepoFile) and remote.size == shard.stat().st_size
    assert remote.lfs is not None and remote.lfs.sha256 == hashlib.sha256(shard.read_bytes()).hexdigest()
    readme = entries["README.md"]
    assert readme.lfs is None and readme.blob_id == git_blob_sha1(CARD.encode())
    # Non-recursive listing of a sub-folder, and the card parsed into repo info.
    assert [e.path for e in api.list_repo_tree(url.repo_id, "data", repo_type="dataset")] == [
        "data/left_right",
        "data/near_far",
    ]
    assert api.dataset_info(url.repo_id).card_data.license == "cc-by-nc-4.0"
    assert hub.unhandled == []


def test_create_commit_with_deletion_and_stale_parent(hub: HubServer, tmp_path: Path) -> None:
    api, repo_id = _upload(hub, tmp_path, "commits")
    first = hub.head(repo_id)
    info = api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationDelete("data/left_right/"),
            CommitOperationAdd("stats.json", b'{"near_far": 3}'),
        ],
        commit_message="drop left_right",
        parent_commit=first,
    )
    assert api.list_repo_files(repo_id, repo_type="dataset") == [
        ".gitattributes",
        "README.md",
        "data/near_far/train-00000-of-00001.parquet",
        "stats.json",
    ]
    titles = [c.title for c in api.list_repo_commits(repo_id, repo_type="dataset")]
    assert titles == ["drop left_right", "Upload folder using huggingface_hub", "initial commit"]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "data/left_right/train-00000-of-00001.parquet", repo_type="dataset")
    # The old revision still has the file.
    old = hf_hub_download(repo_id, "data/left_right/train-00000-of-00001.parquet", repo_type="dataset", revision=first)
    assert pq.read_table(old).to_pydict() == LEFT_RIGHT
    # A commit based on a stale parent is refused, as on the Hub.
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(repo_id, repo_type="dataset", operations=[CommitOperationDelete("stats.json")],
                          commit_message="stale", parent_commit=first)
    assert err.value.response.status_code == 412
    assert hub.head(repo_id) == info.oid
    with pytest.raises(EntryNotFoundError):
        api.create_commit(repo_id, repo_type="dataset", operations=[CommitOperationDelete("missing.txt")],
                          commit_message="nothing")


def test_downloads_resolve_with_etags_and_ranges(hub: HubServer, tmp_path: Path) -> None:
    api, repo_id = _upload(hub, tmp_path, "downloads")
    sha = hub.head(repo_id)
    shard = tmp_path / "folder/data/near_far/train-00000-of-00001.parquet"
    local = hf_hub_download(repo_id, "data/near_far/train-00000-of-00001.parquet", repo_type="dataset")
    assert Path(local).read_bytes() == shard.read_bytes() and f"/snapshots/{sha}/" in local

    url = f"{hub.endpoint}/datasets/{repo_id}/resolve/main/data/near_far/train-00000-of-00001.parquet"
    head = httpx2.head(url)
    size = shard.stat().st_size
    assert head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(shard.read_bytes()).hexdigest()}"'
    assert int(head.headers["X-Linked-Size"]) == size == int(head.headers["Content-Length"])
    part = httpx2.get(url, headers={"Range": "bytes=4-9"})
    assert part.status_code == 206 and part.content == shard.read_bytes()[4:10]
    assert part.headers["Content-Range"] == f"bytes 4-9/{size}"
    assert httpx2.get(url, headers={"Range": "bytes=-4"}).content == b"PAR1"
    assert httpx2.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    readme = httpx2.head(f"{hub.endpoint}/datasets/{repo_id}/resolve/{sha}/README.md")
    assert readme.headers["ETag"] == f'"{git_blob_sha1(CARD.encode())}"' and "X-Linked-Etag" not in readme.headers

    snapshot = Path(snapshot_download(repo_id, repo_type="dataset", local_dir=tmp_path / "snapshot"))
    got = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()
                 and ".cache" not in p.parts)
    assert got == [".gitattributes", "README.md", "data/left_right/train-00000-of-00001.parquet",
                   "data/near_far/train-00000-of-00001.parquet"]
    assert (snapshot / "README.md").read_text() == CARD
    assert hub.unhandled == []


def test_tree_pagination_follows_link_header(tmp_path: Path) -> None:
    with hub_server(tmp_path / "hub", patch_clients=False, page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        repo_id = api.create_repo("paged", repo_type="dataset").repo_id
        api.create_commit(repo_id, repo_type="dataset", commit_message="many",
                          operations=[CommitOperationAdd(f"f{i}.txt", str(i).encode()) for i in range(5)])
        paths = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)]
        assert paths == [".gitattributes", "f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt"]
        pages = [p for m, p, _ in hub.requests if m == "GET" and "/tree/" in p]
        assert len(pages) == 3 and "cursor=4" in pages[-1]
    # The request log outlives the server, for post-mortems in fixture teardown.
    assert hub.errors == [] and ("POST", f"/api/datasets/{repo_id}/commit/main", 200) in hub.requests


def test_errors_are_those_of_the_hub(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info(f"{hub.user}/missing")
    repo_id = api.create_repo("secret", repo_type="dataset", private=True).repo_id
    assert api.dataset_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).dataset_info(repo_id)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\nconfigs: [\n---\n", path_in_repo="README.md", repo_id=repo_id,
                        repo_type="dataset")
    unknown = httpx2.get(f"{hub.endpoint}/api/spaces-hardware")
    assert unknown.status_code == 404 and "does not implement GET /api/spaces-hardware" in unknown.text
    assert hub.unhandled == ["GET /api/spaces-hardware"]


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_reads_each_config_and_sees_new_commits(
    hub: HubServer, tmp_path: Path, streaming: bool
) -> None:
    api, repo_id = _upload(hub, tmp_path, f"load-{streaming}")
    for config, columns in (("near_far", NEAR_FAR), ("left_right", LEFT_RIGHT)):
        loaded = datasets.load_dataset(repo_id, config, split="train", streaming=streaming)
        assert list(loaded) == _rows(columns)

    # A second commit replaces the near_far shard: load_dataset must follow main, not its cache.
    more = {key: values + values[:1] for key, values in NEAR_FAR.items()}
    more["id"][-1] = "nf-3"
    shard = tmp_path / "more.parquet"
    pq.write_table(pa.table(more), shard)
    api.upload_file(path_or_fileobj=shard, path_in_repo="data/near_far/train-00000-of-00001.parquet",
                    repo_id=repo_id, repo_type="dataset")
    loaded = datasets.load_dataset(repo_id, "near_far", split="train", streaming=streaming)
    assert list(loaded) == _rows(more)
    assert hub.unhandled == []


def test_push_to_hub_round_trip(hub: HubServer) -> None:
    repo_id = f"{hub.user}/pushed"
    datasets.Dataset.from_dict(NEAR_FAR).push_to_hub(repo_id, config_name="near_far")
    datasets.Dataset.from_dict(LEFT_RIGHT).push_to_hub(repo_id, config_name="left_right", split="test")
    files = HfApi(endpoint=hub.endpoint).list_repo_files(repo_id, repo_type="dataset")
    assert [f for f in files if f.endswith(".parquet")] == [
        "left_right/test-00000-of-00001.parquet",
        "near_far/train-00000-of-00001.parquet",
    ]
    assert datasets.load_dataset(repo_id, "near_far", split="train").to_dict() == NEAR_FAR
    assert list(datasets.load_dataset(repo_id, "left_right", split="test", streaming=True)) == _rows(LEFT_RIGHT)
    assert hub.unhandled == []


def test_model_repo_branches_paths_info_and_filesystem(hub: HubServer) -> None:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    repo_id = api.create_repo("tiny-depth").repo_id  # a model repo: URLs without a type prefix
    weights = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=b'{"model_type": "depth_anything"}', path_in_repo="config.json", repo_id=repo_id)
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=repo_id,
                    commit_message="weights")
    assert Path(hf_hub_download(repo_id, "model.safetensors")).read_bytes() == weights
    assert api.file_exists(repo_id, "config.json") and not api.file_exists(repo_id, "nope.json")

    config, model = api.get_paths_info(repo_id, ["config.json", "model.safetensors", "nope.json"], expand=True)
    assert config.lfs is None and config.last_commit.title == "Upload config.json with huggingface_hub"
    assert model.lfs.sha256 == hashlib.sha256(weights).hexdigest() and model.last_commit.title == "weights"

    fs = HfFileSystem(endpoint=hub.endpoint, token=hub.token)
    with fs.open(f"{repo_id}/model.safetensors", "rb", block_size=64) as fh:
        fh.seek(300)
        assert fh.read(10) == weights[300:310]

    api.create_branch(repo_id, branch="v1")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id, revision="v1")
    refs = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).branches}
    assert refs == {"main": hub.head(repo_id, "model"), "v1": hub.head(repo_id, "model", "v1")}
    assert Path(hf_hub_download(repo_id, "config.json", revision="v1")).read_bytes() == b"{}"
    assert Path(hf_hub_download(repo_id, "config.json")).read_bytes() == b'{"model_type": "depth_anything"}'

    api.delete_repo(repo_id)
    assert not api.repo_exists(repo_id)
    assert hub.unhandled == []
