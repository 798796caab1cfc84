"""spatialforge_10m.load_dataset is shaped like datasets.load_dataset: name, split=None, and the image report."""

from __future__ import annotations

import os

import datasets
import pytest
from _loader_fixtures import make_dataset

from spatialforge_10m import load_dataset


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("sf-load"))


@pytest.mark.parametrize("streaming", [False, True])
def test_name_selects_the_task(fx, tmp_path, streaming):
    ds = load_dataset(fx.annotations, name="near_far", split="train", image_dirs=fx.image_dirs, streaming=streaming,
                      cache_dir=str(tmp_path / "c"))
    ids = [r["id"] for r in ds]
    assert ids and sorted(ids) == sorted(r["id"] for r in fx.rows_of("near_far"))
    assert len(ids) < len(fx.rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_split_none_gives_a_dataset_dict(fx, tmp_path, streaming):
    dd = load_dataset(fx.annotations, "counting", image_dirs=fx.image_dirs, streaming=streaming, cache_dir=str(tmp_path / "c"))
    assert isinstance(dd, datasets.IterableDatasetDict if streaming else datasets.DatasetDict)
    assert list(dd) == ["train"]
    assert sorted(r["id"] for r in dd["train"]) == sorted(r["id"] for r in fx.rows_of("counting"))
    assert dd["train"].image_stats["rows"] == len(fx.rows_of("counting"))


def test_name_and_task_must_agree(fx):
    with pytest.raises(ValueError, match="name='near_far', task='counting'"):
        load_dataset(fx.annotations, name="near_far", task="counting", image_dirs=fx.image_dirs)


@pytest.mark.parametrize("streaming", [False, True])
def test_image_report_in_both_modes(tmp_path, streaming):
    fx = make_dataset(str(tmp_path / "d"))
    gone = fx.images[1]
    os.remove(gone.path)
    ds = load_dataset(fx.annotations, "all", "train", image_dirs=fx.image_dirs, streaming=streaming,
                      on_missing_image="skip", cache_dir=str(tmp_path / "c"))
    lost = [r for r in fx.rows if (r["source"], r["image_id"]) == (gone.source, gone.image_id)]
    stats = ds.image_stats
    assert stats["dropped_rows"] == len(lost) and stats["dropped_rows_by_reason"] == {"missing": len(lost)}
    assert stats["sources"][gone.source]["missing"] == 1
    assert len(list(ds)) == len(fx.rows) - len(lost)
