"""A tiny LLaVA really learns from the stream: demo rows -> TrainingStream -> ChatCollator -> loss falls."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

_EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_tiny.py")


@pytest.mark.slow
def test_tiny_llava_loss_falls_on_the_demo_rows(tmp_path):
    demo = tmp_path / "demo"
    cli = os.path.join(os.path.dirname(sys.executable), "spatialforge")
    subprocess.run([cli, "demo", "--scenes", "40", "--out", str(demo), "--no-mono", "--no-load"], check=True,
                   stdout=subprocess.DEVNULL)
    spec = importlib.util.spec_from_file_location("train_tiny", _EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    losses = ex.train(str(demo / "dataset-exact"), {"objects365": str(demo / "objects365" / "images")},
                      str(tmp_path / "out"), steps=200, batch_size=4, seed=0)
    assert len(losses) == 200
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)
