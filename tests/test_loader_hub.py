"""Annotations from a Hub dataset repo id (loopback Hub), in memory and streaming."""

from __future__ import annotations

import pytest
from _loader_fixtures import make_dataset
from hub_server import HubServer, hub  # noqa: F401  (hub is a fixture)
from huggingface_hub import HfApi

from spatialforge.builders.schema import COLUMNS
from spatialforge_10m import SpatialForge10M


@pytest.mark.parametrize("streaming", [False, True])
def test_annotations_from_a_repo_id(hub: HubServer, tmp_path, streaming):
    fx = make_dataset(tmp_path)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    repo_id = api.create_repo(f"{hub.user}/sf-{streaming}", repo_type="dataset").repo_id
    api.upload_folder(folder_path=fx.annotations, repo_id=repo_id, repo_type="dataset")
    b = SpatialForge10M(config_name="near_far", annotations=repo_id, image_dirs=fx.image_dirs,
                        on_missing_image="skip", cache_dir=str(tmp_path / "cache"))
    if streaming:
        ds = b.as_streaming_dataset(split="train")
        assert ds.num_shards == 2
        files = b._shards.files
        assert all(f.startswith(f"hf://datasets/{repo_id}@{hub.head(repo_id)}/data/near_far/") for f in files)
    else:
        b.download_and_prepare()
        ds = b.as_dataset(split="train")
    rows = list(ds)
    assert [{c: r[c] for c in COLUMNS} for r in rows] == fx.rows_of("near_far")
    assert all(r["image"].size == (r["width"], r["height"]) for r in rows)
    assert b.dropped_rows == 0
    assert hub.unhandled == []
