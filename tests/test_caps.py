"""Per-image caps are a setting: ``--max-per-task task=N,...`` reproduces a task mix."""

import json
from collections import Counter

import pytest

from spatialforge.processing.synth.demo import read_rows
from spatialforge.processing.pipeline import GenerateConfig, parse_caps
from spatialforge.processing.synth.scenes import make_scenes, write_objects365_layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_objects365_layout(make_scenes(12, seed=5, width=160, height=120), tmp_path_factory.mktemp("o365"))


def test_parse_caps():
    assert parse_caps("grounding=2,near_far=1,perspective=none") == {"grounding": 2, "near_far": 1, "perspective": None}
    for bad in ("grounding", "cups=2", "near_far=-1", "near_far=two"):
        with pytest.raises(ValueError, match="max_per_task"):
            parse_caps(bad)


def test_generate_verb_applies_the_caps(layout, tmp_path):
    from typer.testing import CliRunner

    from spatialforge.processing.cli import _register, app

    _register()
    args = ["generate", "--source", "objects365", "--annotations", str(layout.annotations), "--images", str(layout.images),
            "--depth-dir", str(layout.depth), "--num-shards", "1", "--no-progress", "--seed", "0", "--no-rebalance"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "capped"), "--max-per-task", "grounding=1,near_far=none,left_right=0"])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "capped")
    per_image = Counter((r["image_id"], r["task"]) for r in rows)
    assert max(n for (_, t), n in per_image.items() if t == "grounding") == 1
    assert not any(r["task"] == "left_right" for r in rows)
    stats = json.loads((tmp_path / "capped" / "stats.json").read_text())
    drops = stats["candidate_drops"]
    assert "near_far/over_cap" not in drops and drops.get("grounding/over_cap", 0) > 0
    # Uncapped near_far keeps every candidate that passed: more rows than the default cap of 2 allows.
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "default")])
    assert res.exit_code == 0, res.output
    default = read_rows(tmp_path / "default")
    near = lambda rs: sum(r["task"] == "near_far" for r in rs)  # noqa: E731
    assert near(rows) == near(default) + json.loads((tmp_path / "default" / "stats.json").read_text())["candidate_drops"]["near_far/over_cap"]


def test_config_refuses_bad_caps(layout, tmp_path):
    with pytest.raises(ValueError, match="max_per_task"):
        GenerateConfig(source="objects365", out=str(tmp_path / "x"), annotations=str(layout.annotations),
                       images=str(layout.images), max_per_task={"cups": 1})
