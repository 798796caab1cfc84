"""Preview images: boxes at the right pixels (read back from the PNGs), determinism, the card's embeds, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spatialforge.builders.card import CARD_PREVIEWS, write_card
from spatialforge.builders.schema import validate_row
from spatialforge.processing.cli import _register, app
from spatialforge.processing.inspect.preview import PALETTE, line_width, write_previews
from spatialforge.processing.output.parquet import task_path, write_parquet

GRAY = (128, 128, 128)


def _row(image_id: str, task: str, objects: list[tuple[str, list[int]]], width: int, height: int, k: int = 0) -> dict:
    row = {"id": f"toy-{image_id}-{task}-{k:03d}", "source": "toy", "image_id": image_id, "width": width, "height": height,
           "task": task, "question": f"Where is the {objects[0][0]}?", "answer": "here",
           "objects": [{"label": label, "bbox": bbox} for label, bbox in objects],
           "fact": None, "count": None, "verification": {"checks": ["toy"]}}
    if task == "left_right":
        row["fact"] = {"subject": 0, "predicate": "left_of", "object": 1, "frame": "camera"}
        row["question"], row["answer"] = "Is the cup left of the lamp?", "Yes"
    validate_row(row)
    return row


def _gray(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, GRAY)
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    return path


@pytest.fixture
def toy_dataset(tmp_path: Path) -> dict:
    """Two gray images (one stored rotated with EXIF orientation 6) and three rows with known boxes."""
    images = tmp_path / "images"
    _gray(images / "plain.png", (400, 300))
    _gray(images / "rotated.jpg", (300, 400), orientation=6)  # 400 x 300 once transposed
    rows = [
        _row("plain", "grounding", [("cup", [100, 200, 600, 900])], 400, 300),
        _row("plain", "left_right", [("cup", [50, 300, 250, 700]), ("lamp", [700, 150, 950, 850])], 400, 300),
        _row("rotated", "grounding", [("book", [500, 100, 900, 400])], 400, 300),
    ]
    out = tmp_path / "ds"
    for task in ("grounding", "left_right"):
        write_parquet([r for r in rows if r["task"] == task], task_path(out, task, "train-00000-of-00001"))
    return {"out": out, "images": images, "rows": rows}


def _expect_edges(px: np.ndarray, bbox: list[int], width: int, height: int, color: tuple[int, int, int], tol: int = 0) -> None:
    """The frame of ``bbox`` (0..1000) on a ``width`` x ``height`` image: its outer pixels have ``color``,
    the pixels just outside and just inside the frame do not."""
    x1, y1 = round(bbox[0] / 1000 * width), round(bbox[1] / 1000 * height)
    x2, y2 = round(bbox[2] / 1000 * width) - 1, round(bbox[3] / 1000 * height) - 1  # last pixel inside the box
    lw = line_width(width, height)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2

    def close(p, c):
        return bool(np.all(np.abs(p.astype(int) - np.array(c)) <= tol))

    for x, y in [(x1, cy), (x2, cy), (cx, y2), (x1 + lw - 1, cy), (x2 - lw + 1, cy)]:
        assert close(px[y, x], color), f"pixel ({x}, {y}) of box {bbox} is {px[y, x].tolist()}, want {color}"
    for x, y in [(x1 - 1, cy), (x2 + 1, cy), (cx, y2 + 1), (x1 + lw, cy), (x2 - lw, cy), (cx, y2 - lw)]:
        assert close(px[y, x], GRAY), f"pixel ({x}, {y}) next to box {bbox} is {px[y, x].tolist()}, want the image's gray"


def test_boxes_are_drawn_at_their_pixels(toy_dataset):
    report = write_previews(str(toy_dataset["out"]), {"toy": str(toy_dataset["images"])}, out=toy_dataset["out"] / "p", n=10)
    assert len(report.files) == 3 and report.missing == {}
    manifest = json.loads((report.out / "previews.json").read_text())
    by_id = {e["id"]: report.out / e["file"] for e in manifest}
    for row in toy_dataset["rows"]:
        with Image.open(by_id[row["id"]]) as im:
            px = np.asarray(im.convert("RGB"))
        assert px.shape[1] == 400 and px.shape[0] > 300  # the image, then the caption panel under it
        for k, obj in enumerate(row["objects"]):
            _expect_edges(px[:300], obj["bbox"], 400, 300, PALETTE[k])
        assert (px[300:] == 255).all(axis=2).mean() > 0.5  # a white panel with dark text
        assert (px[300:].max(axis=2) < 100).any()


def test_boxes_follow_a_downscale(toy_dataset):
    out = toy_dataset["out"] / "small"
    write_previews(str(toy_dataset["out"]), {"toy": str(toy_dataset["images"])}, out=out, n=3, max_size=200)
    entry = next(e for e in json.loads((out / "previews.json").read_text()) if e["task"] == "left_right")
    with Image.open(out / entry["file"]) as im:
        px = np.asarray(im.convert("RGB"))
    row = next(r for r in toy_dataset["rows"] if r["task"] == "left_right")
    for k, obj in enumerate(row["objects"]):  # a uniform image stays uniform under bilinear resizing
        _expect_edges(px[:150], obj["bbox"], 200, 150, PALETTE[k])


def test_previews_are_deterministic_and_spread_over_tasks(toy_dataset):
    a = write_previews(str(toy_dataset["out"]), {"toy": str(toy_dataset["images"])}, out=toy_dataset["out"] / "a", n=2, seed=3)
    b = write_previews(str(toy_dataset["out"]), {"toy": str(toy_dataset["images"])}, out=toy_dataset["out"] / "b", n=2, seed=3)
    assert [p.name for p in a.files] == [p.name for p in b.files]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a.files, b.files))
    assert [p.name.split("-")[1] for p in a.files] == ["grounding", "left_right"]  # tasks take turns


def test_rows_without_their_image_are_counted(toy_dataset):
    (toy_dataset["images"] / "rotated.jpg").unlink()
    report = write_previews(str(toy_dataset["out"]), {"toy": str(toy_dataset["images"])}, out=toy_dataset["out"] / "p")
    assert len(report.files) == 2 and report.missing == {"missing_image": 1}
    with pytest.raises(ValueError, match="no row of .* has its image"):
        write_previews(str(toy_dataset["out"]), {"other": str(toy_dataset["images"])}, out=toy_dataset["out"] / "q")


def test_card_embeds_previews_and_the_folder_still_loads(toy_dataset):
    out = toy_dataset["out"]
    stats = {"rows_per_task": {"grounding": 2, "left_right": 1}, "config": {"tasks": ["grounding", "left_right"], "synthetic": True}}
    write_card(out, stats, synthetic=True)
    assert "## Previews" not in (out / "README.md").read_text()
    report = write_previews(str(out), {"toy": str(toy_dataset["images"])}, n=3)  # default: <dataset>/previews
    assert report.out == out / "previews" and report.card == out / "README.md"
    card = (out / "README.md").read_text()
    embedded = [line for line in card.splitlines() if line.startswith("![")]
    assert len(embedded) == min(3, CARD_PREVIEWS)
    for line, path in zip(embedded, report.files):
        assert line.endswith(f"(previews/{path.name})") and path.is_file()
    assert "- synthetic" in card  # the card was rewritten with the run's settings
    # a second run with fewer previews leaves only its own files
    write_previews(str(out), {"toy": str(toy_dataset["images"])}, n=1)
    assert sorted(p.name for p in (out / "previews").iterdir()) == sorted([report.files[0].name, "previews.json"])
    assert sum(line.startswith("![") for line in (out / "README.md").read_text().splitlines()) == 1

    import datasets

    ds = datasets.load_dataset(str(out), "grounding", split="train")
    assert sorted(ds["id"]) == sorted(r["id"] for r in toy_dataset["rows"] if r["task"] == "grounding")


def test_cli_preview(toy_dataset):
    _register()
    out = toy_dataset["out"] / "cli"
    result = CliRunner().invoke(app, ["preview", str(toy_dataset["out"]), "--image-dir", f"toy={toy_dataset['images']}",
                                      "--n", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 previews" in result.output
    assert len(list(out.glob("*.png"))) == 2
    bad = CliRunner().invoke(app, ["preview", str(toy_dataset["out"]), "--image-dir", "toy"])
    assert bad.exit_code == 2 and "SOURCE=DIR" in bad.output
