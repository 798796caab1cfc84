"""Factories for loader tests: small images in each source's real layout, annotation shards, a card.

Reusable from any test::

    from _loader_fixtures import make_dataset
    fx = make_dataset(tmp_path)             # images + data/<task>/*.parquet + README.md
    fx.annotations, fx.image_dirs, fx.rows  # known truth

Images are solid gray with one colored rectangle whose box is recorded in every row of the image
(on the EXIF-transposed grid). ``rotated`` images are stored with EXIF Orientation 6 (rotate 90° to
display), so the raw pixel grid differs from the grid the boxes refer to.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from spatialforge.builders.schema import (
    ALL_CONFIG, DATA_DIR, TASKS, VERIFICATION, arrow_schema, make_id, normalize_bbox, validate_row,
)

RECT_COLOR = (255, 0, 0)
BACKGROUND = (128, 128, 128)


@dataclass
class FixtureImage:
    source: str
    image_id: str
    path: str
    width: int  # EXIF-transposed (displayed) size, what the rows record
    height: int
    rect: tuple[int, int, int, int]  # pixel xyxy of the red rectangle on the displayed grid
    orientation: int | None = None


@dataclass
class LoaderFixture:
    root: str
    annotations: str
    image_dirs: dict[str, str]
    images: list[FixtureImage]
    rows: list[dict]
    extra: dict = field(default_factory=dict)

    def rows_of(self, task: str) -> list[dict]:
        return [r for r in self.rows if task == ALL_CONFIG or r["task"] == task]


def make_jpeg(
    path: str,
    size: tuple[int, int] = (64, 48),
    rect: tuple[int, int, int, int] | None = None,
    orientation: int | None = None,
    fmt: str = "JPEG",
) -> None:
    """Write an image whose DISPLAYED (EXIF-transposed) grid is ``size`` with a red ``rect`` on it.

    With ``orientation=6`` the stored pixels are rotated 90° counter-clockwise and the EXIF tag says
    "rotate 90° clockwise to display", which ``PIL.ImageOps.exif_transpose`` undoes.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    shown = Image.new("RGB", size, BACKGROUND)
    if rect is not None:
        shown.paste(RECT_COLOR, rect)
    kwargs = {}
    raw = shown
    if orientation is not None:
        if orientation != 6:
            raise ValueError(f"only orientation 6 is supported by this factory, got {orientation}")
        raw = shown.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs["quality"] = 95
    with open(path, "wb") as f:  # "path" may lack an extension (Pixmo): name the format explicitly
        raw.save(f, format=fmt, **kwargs)


def _rect_for(k: int, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1 = 4 + (k * 7) % (w // 2), 3 + (k * 5) % (h // 2)
    return (x1, y1, x1 + w // 3, y1 + h // 3)


def make_images(root: str, n_per_source: int = 3) -> tuple[dict[str, str], list[FixtureImage]]:
    """Images of the three known sources in their real layouts, plus a user source ``mine``.

    Objects365 (train + val patch folders), OpenImages (FiftyOne zoo layout and split folders),
    Pixmo (sha256 names with and without extension), ``mine`` (flat ``{image_id}.png``).
    The first Objects365 image is EXIF-rotated (orientation 6).
    """
    dirs = {s: os.path.join(root, s) for s in ("objects365", "openimages", "pixmo", "mine")}
    images: list[FixtureImage] = []
    for k in range(n_per_source):
        w, h = 64 + 8 * k, 48
        # Objects365: v2 names under train/patchN and val/patchN
        split = "train" if k % 2 == 0 else "val"
        iid = f"objects365_v2_{908726 + k:08d}"
        p = os.path.join(dirs["objects365"], split, f"patch{k % 2 + 15}", iid + ".jpg")
        orientation = 6 if k == 0 else None
        images.append(FixtureImage("objects365", iid, p, w, h, _rect_for(k, w, h), orientation))
        # OpenImages: FiftyOne zoo layout for even k, <split>/<ImageID>.jpg for odd k
        iid = hashlib.sha1(f"oi{k}".encode()).hexdigest()[:16]
        sub = os.path.join("open-images-v7", "train", "data") if k % 2 == 0 else "validation"
        p = os.path.join(dirs["openimages"], sub, iid + ".jpg")
        images.append(FixtureImage("openimages", iid, p, w, h, _rect_for(k + 1, w, h)))
        # Pixmo: sha256 names, with .jpg / none
        iid = hashlib.sha256(f"px{k}".encode()).hexdigest()
        p = os.path.join(dirs["pixmo"], iid + (".jpg" if k % 2 else ""))
        images.append(FixtureImage("pixmo", iid, p, w, h, _rect_for(k + 2, w, h)))
        # a user source: generic {image_id}.* rule
        iid = f"img{k:03d}"
        p = os.path.join(dirs["mine"], iid + ".png")
        images.append(FixtureImage("mine", iid, p, w, h, _rect_for(k + 3, w, h)))
    for im in images:
        make_jpeg(im.path, (im.width, im.height), im.rect, im.orientation, fmt="PNG" if im.path.endswith(".png") else "JPEG")
    # a file that is not an image and a FiftyOne side folder: the resolvers must ignore both
    os.makedirs(os.path.join(dirs["openimages"], "open-images-v7", "train", "labels"), exist_ok=True)
    with open(os.path.join(dirs["openimages"], "open-images-v7", "train", "labels", "detections.csv"), "w") as f:
        f.write("ImageID,LabelName\n")
    return dirs, images


_EMPTY_VERIFICATION = {**dict.fromkeys(VERIFICATION), "checks": []}  # every field of the schema


def rows_for_image(im: FixtureImage, tasks: tuple[str, ...] = TASKS) -> list[dict]:
    """One valid row per task for ``im``; objects[0] is the red rectangle (0..1000 box)."""
    box = normalize_bbox(im.rect, im.width, im.height)
    other = normalize_bbox([0, 0, 2, 2], im.width, im.height)
    out = []
    for task in tasks:
        objects = [{"label": "red box", "bbox": box}]
        fact, count = None, None
        if task in ("near_far", "left_right", "perspective"):
            objects.append({"label": "person" if task == "perspective" else "corner", "bbox": other})
            predicate = {"near_far": "nearer_than", "left_right": "right_of", "perspective": "left_of"}[task]
            fact = {"subject": 0, "predicate": predicate, "object": 1, "frame": "person" if task == "perspective" else "camera"}
        if task == "counting":
            count = 1
        row = {
            "id": make_id(im.source, im.image_id, task, 0),
            "source": im.source,
            "image_id": im.image_id,
            "width": im.width,
            "height": im.height,
            "task": task,
            "question": f"{task} question about the red box?",
            "answer": f"{task} answer",
            "objects": objects,
            "fact": fact,
            "count": count,
            "verification": dict(_EMPTY_VERIFICATION),
        }
        validate_row(row)
        out.append(row)
    return out


def write_card(folder: str, fmt: str = "parquet") -> str:
    """Minimal Hub card (used for JSONL folders; Parquet folders get the project's card): YAML ``configs:`` (``all`` default + one per task) with ``data_files``."""
    lines = ["---", "license: cc-by-nc-4.0", "configs:"]
    lines += [f"- config_name: {ALL_CONFIG}", "  default: true", "  data_files:", "  - split: train", f"    path: {DATA_DIR}/*/*.{fmt}"]
    for task in TASKS:
        lines += [f"- config_name: {task}", "  data_files:", "  - split: train", f"    path: {DATA_DIR}/{task}/*.{fmt}"]
    lines += ["---", "", "# SpatialForge test annotations", ""]
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def write_shards(folder: str, rows: list[dict], fmt: str = "parquet", shards_per_task: int = 2, card: bool = True) -> str:
    """Write ``rows`` as ``data/<task>/train-0000k-of-0000n.<fmt>`` (rows split round-robin into shards)."""
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        d = os.path.join(folder, DATA_DIR, task)
        os.makedirs(d, exist_ok=True)
        n = min(shards_per_task, len(task_rows))
        chunk = -(-len(task_rows) // n)
        for k in range(n):
            part = task_rows[k * chunk : (k + 1) * chunk]
            path = os.path.join(d, f"train-{k:05d}-of-{n:05d}.{fmt}")
            if fmt == "parquet":
                pq.write_table(pa.Table.from_pylist(part, schema=arrow_schema()), path)
            else:
                with open(path, "w") as f:
                    for r in part:
                        f.write(json.dumps(r) + "\n")
    if card and fmt == "parquet":
        from spatialforge.builders.card import write_card as write_project_card

        counts = {t: sum(r["task"] == t for r in rows) for t in TASKS}
        write_project_card(folder, {"rows_per_task": counts})
    elif card:
        write_card(folder, fmt)
    return folder


def make_dataset(tmp: str, fmt: str = "parquet", n_per_source: int = 3, shards_per_task: int = 2) -> LoaderFixture:
    """Images of every source + one row per (image, task) in a Hub-ready annotation folder."""
    tmp = os.fspath(tmp)
    image_dirs, images = make_images(os.path.join(tmp, "images"), n_per_source)
    rows = [r for im in images for r in rows_for_image(im)]
    rows.sort(key=lambda r: (TASKS.index(r["task"]), r["id"]))
    folder = write_shards(os.path.join(tmp, "annotations"), rows, fmt, shards_per_task)
    # reading order = task order, then shard file order
    ordered = []
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        ordered += task_rows
    return LoaderFixture(tmp, folder, image_dirs, images, ordered)


def corrupt(path: str, how: str) -> None:
    """Damage an image file: ``zero_byte``, ``not_image`` (text), ``truncated`` (drop the tail)."""
    if how == "zero_byte":
        open(path, "wb").close()
    elif how == "not_image":
        with open(path, "w") as f:
            f.write("this is not an image\n" * 10)
    elif how == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) * 2 // 3])
    else:
        raise ValueError(f"how must be zero_byte | not_image | truncated, got {how!r}")


def train_split(builder, streaming: bool):
    """The builder's train split in the mode under test (in memory: prepared first)."""
    if streaming:
        return builder.as_streaming_dataset(split="train")
    builder.download_and_prepare()
    return builder.as_dataset(split="train")
