"""FiftyOne, with its real MongoDB (started by FiftyOne in a temporary database folder).

Every pytest worker gets its own database folder and database name, and every test its own dataset
names, so parallel workers (which may share one FiftyOne database service) never see each other's
datasets, and nothing touches ``~/.fiftyone``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _pipeline_fixtures import make_coco_scene
from spatialforge.builders.schema import TASKS
from spatialforge.processing.pipeline import GenerateConfig, generate

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="session")
def fo(tmp_path_factory, worker_id):
    """``fiftyone``, configured before its first import: temporary database folder and name."""
    root = tmp_path_factory.mktemp("fiftyone")
    env = {
        "FIFTYONE_DATABASE_DIR": str(root / "db"),
        "FIFTYONE_DATABASE_NAME": f"spatialforge-test-{worker_id}-{os.getpid()}",
        "FIFTYONE_DATABASE_VALIDATION": "false",  # the bundled mongod is older than FiftyOne's preferred one
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_CONFIG_PATH": str(root / "config.json"),  # no user config
        "FIFTYONE_APP_CONFIG_PATH": str(root / "app_config.json"),
        "FIFTYONE_DATASET_ZOO_DIR": str(root / "zoo"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(root / "datasets"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fiftyone

    assert fiftyone.config.database_dir == env["FIFTYONE_DATABASE_DIR"]
    yield fiftyone
    for name in fiftyone.list_datasets():  # this worker's database only
        fiftyone.delete_dataset(name)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """A real pipeline run on 6 synthetic scenes with known depths, candidate drops kept."""
    root = tmp_path_factory.mktemp("fo-scene")
    scene = make_coco_scene(root / "o365", 6, size=(96, 64))
    out = root / "ds"
    stats = generate(GenerateConfig(source="objects365", annotations=scene["annotations"], images=scene["images"],
                                    depth_dir=scene["depth"], out=out, num_shards=2, keep_drops=True, progress=False,
                                    rebalance=False))  # a few fixed labels: rebalancing would leave little
    return {**scene, "root": root, "out": out, "stats": stats}


def _rows(folder: Path) -> list[dict]:
    from spatialforge.processing.inspect.rows import read_rows

    return sorted(read_rows(str(folder)), key=lambda r: r["id"])


def test_round_trip_keeps_counts_boxes_and_rows(fo, generated):
    from spatialforge.processing.inspect.fiftyone import export_qa, import_qa, read_drops
    from spatialforge.processing.inspect.rows import load_qa

    rows = _rows(generated["out"])
    assert {r["task"] for r in rows} >= {"grounding", "counting", "near_far", "left_right"}
    name = _name("roundtrip")
    qa = load_qa(str(generated["out"]), {"objects365": str(generated["images"])})
    dataset = export_qa(qa, name, drops=read_drops(generated["out"]))

    # counts: one sample per image, one Detection per object of every row of a task
    assert len(dataset) == len({r["image_id"] for r in rows})
    for task in TASKS:
        want = sum(len(r["objects"]) for r in rows if r["task"] == task)
        have = dataset.count(f"{task}.detections") if dataset.has_sample_field(task) else 0
        assert have == want, task
    # boxes: FiftyOne's relative [x, y, w, h] are the rows' 0..1000 boxes / 1000
    for image_id, dets in zip(*dataset.values(["image_id", "near_far.detections"])):
        want = sorted((r["id"], k, [b / 1000 for b in (o["bbox"][0], o["bbox"][1], o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1])])
                      for r in rows if r["image_id"] == image_id and r["task"] == "near_far" for k, o in enumerate(r["objects"]))
        have = sorted((d["qa_id"], d["object_index"], d.bounding_box) for d in dets or [])
        assert [(i, k) for i, k, _ in have] == [(i, k) for i, k, _ in want]
        assert np.allclose([b for *_, b in have], [b for *_, b in want], atol=1e-12) if want else not have
    # evidence and roles travel with the boxes
    det = dataset.first()["near_far"].detections[0] if dataset.first()["near_far"] else None
    if det is not None:
        row = next(r for r in rows if r["id"] == det["qa_id"])
        assert det["question"] == row["question"] and det["depth_margin"] == row["verification"]["depth_margin"]
        assert det["role"] == ("subject" if row["fact"]["subject"] == det["object_index"] else "object")
    # drop reasons as tags, counts equal to the run's own candidate-drop counters
    tags = dataset.count_sample_tags()
    drops = Counter()
    for d in dataset.values("drops"):
        drops.update(d or {})
    assert drops == Counter(generated["stats"]["candidate_drops"])
    assert set(tags) == {f"drop:{r}" for r in generated["stats"]["candidate_drops"]}

    # and back: every row, every column, the same
    assert sorted(import_qa(name), key=lambda r: r["id"]) == rows


def test_fiftyone_source_gives_the_same_rows_as_the_coco_reader(fo, generated, tmp_path):
    """FiftyOne's own COCO importer (as its zoo uses) -> --source fiftyone: the same Parquet bytes as
    reading the COCO file with the objects365 reader (whose run also kept its drops: data/ is unchanged by that)."""
    name = _name("coco")
    fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(generated["root"] / "o365"),
                        labels_path=str(generated["annotations"]), label_types=["detections"], name=name, persistent=True)
    out = tmp_path / "from-fo"
    # two worker processes: each opens the dataset by name
    generate(GenerateConfig(source="fiftyone", fiftyone_dataset=name, source_name="objects365", depth_dir=generated["depth"],
                            out=out, num_shards=2, workers=2, progress=False, rebalance=False))
    ours = sorted(p.relative_to(generated["out"]) for p in (generated["out"] / "data").rglob("*.parquet"))
    theirs = sorted(p.relative_to(out) for p in (out / "data").rglob("*.parquet"))
    assert ours == theirs and ours
    for rel in ours:
        assert (out / rel).read_bytes() == (generated["out"] / rel).read_bytes(), rel


def test_reader_flags_problems_and_fields(fo, tmp_path):
    from spatialforge.processing.readers.fiftyone import FiftyOneReader

    for i in range(3):
        Image.new("RGB", (200, 100), (i * 60, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "zdup").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "zdup" / "img0.png")
    name = _name("zoo-like")
    ds = fo.Dataset(name)
    det = fo.Detection
    ds.add_samples([
        fo.Sample(filepath=str(tmp_path / "img0.png"), ground_truth=fo.Detections(detections=[
            det(label="Tree", bounding_box=[0.1, 0.2, 0.25, 0.5], IsGroupOf=True, IsOccluded=False, IsDepiction=True),
            det(label="Person", bounding_box=[0.5, 0.0, 0.5, 1.0], confidence=0.75),
            det(label=None, bounding_box=[0.1, 0.1, 0.1, 0.1]),
        ]), predictions=fo.Detections()),
        fo.Sample(filepath=str(tmp_path / "img1.png")),
        fo.Sample(filepath=str(tmp_path / "missing.png")),
        fo.Sample(filepath=str(tmp_path / "zdup" / "img0.png")),
    ])
    reader = FiftyOneReader(name, source="openimages")
    records = {r.image_id: r for r in reader.run()}
    assert sorted(records) == ["img0", "img1"]
    objects = records["img0"].objects
    assert objects.labels == ["Tree", "Person"]
    assert np.allclose(objects.xyxy, [[20, 20, 70, 70], [100, 0, 200, 100]])
    assert list(objects.is_group) == [True, False] and list(objects.is_depiction) == [True, False]
    assert np.allclose(objects.scores, [1.0, 0.75])
    assert records["img0"].source == "openimages" and (records["img0"].width, records["img0"].height) == (200, 100)
    assert reader.stats.dropped == Counter({"missing_image": 1, "duplicate_image_id": 1})
    assert reader.objects_dropped == Counter({"unknown_category": 1})

    with pytest.raises(ValueError, match="no Detections field 'nope'"):
        FiftyOneReader(name, label_field="nope").items()
    ds.add_sample_field("other", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    ds.rename_sample_field("ground_truth", "gt")
    with pytest.raises(ValueError, match="choose one with --fiftyone-label-field"):
        FiftyOneReader(name).items()
    assert len(FiftyOneReader(name, label_field="gt").items()) == 3
    with pytest.raises(ValueError, match="no FiftyOne dataset named 'absent-"):
        FiftyOneReader(_name("absent")).items()
    with pytest.raises(ValueError, match="needs fiftyone_dataset"):
        GenerateConfig(source="fiftyone", out=str(tmp_path / "x"))

    from spatialforge.processing.cli import _register, app

    _register()
    absent = _name("absent")
    result = CliRunner().invoke(app, ["generate", "--source", "fiftyone", "--fiftyone-dataset", absent, "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and f"no FiftyOne dataset named {absent!r}" in result.output
    assert "Traceback" not in result.output


def test_cli_fiftyone(fo, generated):
    from spatialforge.processing.cli import _register, app

    _register()
    name = _name("cli")
    args = ["fiftyone", str(generated["out"]), "--image-dir", f"objects365={generated['images']}", "--name", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    n_images = len({r["image_id"] for r in _rows(generated["out"])})
    assert f"{n_images:,} images, {len(_rows(generated['out'])):,} QA rows" in result.output
    assert fo.dataset_exists(name) and fo.load_dataset(name).persistent
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    none = CliRunner().invoke(app, ["fiftyone", str(generated["out"]), "--image-dir", "elsewhere=/", "--name", _name("none")])
    assert none.exit_code == 1 and "no_image_dir" in none.output


# ---------------------------------------------------------------------------------------------
# The App in a real browser
# ---------------------------------------------------------------------------------------------

COLORS = [(230, 40, 40), (40, 200, 60), (40, 90, 230), (240, 200, 30)]  # one solid colour per sample image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium, as root on Debian)")
    return path


def _screenshot(browser: str, url: str, png: Path, profile: Path) -> None:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--hide-scrollbars",
           "--virtual-time-budget=20000", f"--screenshot={png}", url]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)


@pytest.mark.slow
def test_app_shows_the_samples_grid_in_chromium(fo, tmp_path):
    from spatialforge.processing.inspect.fiftyone import export_qa, launch_app
    from spatialforge.processing.inspect.rows import QAImage, QAImages

    browser = _chromium()
    images = []
    for i, color in enumerate(COLORS):
        path = tmp_path / f"tile{i}.png"
        Image.new("RGB", (320, 240), color).save(path)
        row = {"id": f"toy-tile{i}-grounding-000", "task": "grounding", "question": "Where is the cup?", "answer": "[]",
               "objects": [{"label": "cup", "bbox": [300, 300, 700, 700]}], "fact": None, "count": None,
               "verification": {"checks": ["toy"]}}
        images.append(QAImage("toy", f"tile{i}", str(path), 320, 240, [row]))
    name = _name("app")
    export_qa(QAImages(images=images, rows=len(images)), name)
    port = _free_port()
    session = launch_app(name, port=port)
    try:
        url = f"http://127.0.0.1:{port}/datasets/{name}"
        deadline = time.monotonic() + 60
        while True:  # bounded: the server answers within seconds
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        png = tmp_path / "app.png"
        counts: list[int] = []
        for attempt in range(3):  # the grid loads asynchronously: at most three screenshots
            _screenshot(browser, url, png, tmp_path / f"profile{attempt}")
            px = np.asarray(Image.open(png).convert("RGB")).astype(int)
            counts = [int((np.abs(px - np.array(c)).max(axis=2) <= 12).sum()) for c in COLORS]
            if min(counts) > 2000:
                break
    finally:
        session.close()
    shutil.copy(png, Path(os.environ.get("SPATIALFORGE_SCREENSHOT_DIR", tmp_path)) / "fiftyone-app.png")
    # each sample's thumbnail is a block of its colour (a 320x240 image shown at roughly 200x150)
    assert min(counts) > 2000, f"pixels of each sample's colour in the screenshot: {counts}"
    # the tiles sit in the grid right of the sidebar, side by side
    centers = []
    for c in COLORS:
        ys, xs = np.nonzero(np.abs(px - np.array(c)).max(axis=2) <= 12)
        centers.append((xs.mean(), ys.mean()))
    assert all(x > 300 for x, _ in centers)
    assert len({round(y / 50) for _, y in centers}) <= 2  # one or two rows of tiles, not scattered
