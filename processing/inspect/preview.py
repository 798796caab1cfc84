"""Preview images: QA pairs drawn on their images (boxes, labels, question and answer) as PNG files.

``spatialforge preview DATASET --image-dir SOURCE=DIR --n 16 --out DIR`` writes ``DIR/NN-<task>-<id>.png``
and ``DIR/previews.json`` (file, id, task, question, answer of each). With ``--out`` left out and a
local dataset folder, the previews go to ``DATASET/previews/`` and the dataset card embeds the first
few (:data:`~spatialforge.builders.card.CARD_PREVIEWS`), so they are uploaded with the folder.

Which rows: tasks take turns (schema order), and within a task rows come in the order of
``sha256(seed:id)``, so the same dataset and seed give the same files, byte for byte.

Drawing: object ``k`` of a row gets colour ``PALETTE[k % len(PALETTE)]``; its box ``[x1, y1, x2, y2]``
(0..1000) covers the pixels ``round(x1 / 1000 * W) .. round(x2 / 1000 * W) - 1`` (same for y) of the
EXIF-transposed image of ``W`` x ``H`` pixels (after a downscale to ``max_size``, if any), with a
frame ``line_width(W, H)`` pixels thick drawn inward; its label sits on a patch of the same colour
just above the box (inside it when the box touches the top). The question and answer are printed on
a white panel under the image.

Example:
    >>> report = write_previews("spatialforge-o365/", {"objects365": "/data/o365"}, n=8)   # doctest: +SKIP
    >>> report.files[0].name                                                               # doctest: +SKIP
    '00-grounding-objects365-objects365_v1_00012345-grounding-000.png'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...builders import schema
from ...builders.card import CARD_PREVIEWS, PREVIEW_MANIFEST, PREVIEWS_DIR, refresh_card
from .rows import QAImage, QAImages, load_qa

logger = logging.getLogger(__name__)

# Distinct, saturated colours (Sasha Trubetskoy's list), far from the greys of the caption panel.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
)
PANEL = (255, 255, 255)  # caption panel background
TEXT = (20, 20, 20)
DEFAULT_MAX_SIZE = 1024  # longest side of a preview's image part, in pixels (larger images are downscaled)


def line_width(width: int, height: int) -> int:
    """Thickness of the box frames, in pixels: 2 on small images, about 0.5 % of the shorter side on large ones."""
    return max(2, round(min(width, height) / 200))


def box_pixels(bbox: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel extent ``(left, top, right, bottom)`` (inclusive) of a 0..1000 box on a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = (round(v / schema.BBOX_SCALE * s) for v, s in zip(bbox, (width, height, width, height)))
    x1, x2 = min(max(x1, 0), width - 1), min(max(x2 - 1, x1), width - 1)
    y1, y2 = min(max(y1, 0), height - 1), min(max(y2 - 1, y1), height - 1)
    return x1, y1, x2, y2


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def render(row: Mapping[str, Any], image_path: str | os.PathLike, max_size: int = DEFAULT_MAX_SIZE):
    """The preview of one QA row as a ``PIL.Image`` (RGB): the image with its boxes, then the caption panel."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(image_path) as im:
        image = ImageOps.exif_transpose(im).convert("RGB")
    if max(image.size) > max_size:
        scale = max_size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    W, H = image.size
    draw = ImageDraw.Draw(image)
    lw = line_width(W, H)
    font = _font(max(10, round(min(W, H) / 32)))
    objects = row.get("objects") or []
    for k, obj in enumerate(objects):
        color = PALETTE[k % len(PALETTE)]
        x1, y1, x2, y2 = box_pixels(obj["bbox"], W, H)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=lw)
    for k, obj in enumerate(objects):  # labels after every frame: a label is never hidden by another box
        color = PALETTE[k % len(PALETTE)]
        x1, y1, _, _ = box_pixels(obj["bbox"], W, H)
        text = f"{k}: {obj['label']}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 >= th else y1 + lw
        draw.rectangle([x1, ty, x1 + tw - 1, ty + th - 1], fill=color)
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=(0, 0, 0) if sum(color) > 382 else (255, 255, 255), font=font)

    caption_font = _font(max(12, min(18, round(W / 40))))
    pad = 8
    lines = _wrap(f"[{row['task']}] {row['question']}", caption_font, W - 2 * pad)
    lines += _wrap(f"answer: {row['answer']}", caption_font, W - 2 * pad)
    line_h = round(caption_font.size * 1.3)
    panel_h = 2 * pad + line_h * len(lines)
    canvas = Image.new("RGB", (W, H + panel_h), PANEL)
    canvas.paste(image, (0, 0))
    cdraw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        cdraw.text((pad, H + pad + i * line_h), line, fill=TEXT, font=caption_font)
    return canvas


def pick(images: Sequence[QAImage], n: int, seed: int = 0) -> list[tuple[dict[str, Any], QAImage]]:
    """``n`` rows (with their image): tasks take turns in schema order, rows of a task in ``sha256(seed:id)`` order."""
    per_task: dict[str, list[tuple[str, dict[str, Any], QAImage]]] = {}
    for image in images:
        for row in image.rows:
            key = hashlib.sha256(f"{seed}:{row['id']}".encode()).hexdigest()
            per_task.setdefault(row["task"], []).append((key, row, image))
    queues = [sorted(per_task[t], key=lambda e: e[0]) for t in schema.TASKS if t in per_task]
    out: list[tuple[dict[str, Any], QAImage]] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append((q[depth][1], q[depth][2]))
        depth += 1
    return out


def _file_name(i: int, row: Mapping[str, Any]) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", row["id"])[:120]
    return f"{i:02d}-{row['task']}-{safe}.png"


@dataclass
class PreviewReport:
    out: Path
    files: list[Path] = field(default_factory=list)
    rows: int = 0  # rows in the dataset
    missing: dict[str, int] = field(default_factory=dict)  # rows left out: their image was not found, by reason
    card: Path | None = None  # the dataset card that now embeds the previews (None: not a dataset folder)


def write_previews(
    dataset: str,
    image_dirs: Mapping[str, str],
    out: str | os.PathLike | None = None,
    n: int = 16,
    seed: int = 0,
    task: str = schema.ALL_CONFIG,
    max_size: int = DEFAULT_MAX_SIZE,
    qa: QAImages | None = None,
) -> PreviewReport:
    """Draw ``n`` QA rows of ``dataset`` into PNG files under ``out`` (default ``<dataset>/previews``).

    When ``out`` is the ``previews/`` folder of a local dataset folder that has a card and
    ``stats.json``, the card is rewritten to embed the first :data:`CARD_PREVIEWS` of them.
    Previews listed by an earlier ``previews.json`` in ``out`` are removed first, so the folder
    holds exactly this run's files.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if max_size < 16:
        raise ValueError(f"max_size must be >= 16 pixels, got {max_size!r}")
    if out is None:
        if not Path(dataset).is_dir():
            raise ValueError(f"give an output folder: {dataset!r} is not a local dataset folder to put previews/ in")
        out = Path(dataset) / PREVIEWS_DIR
    out = Path(out)
    qa = qa if qa is not None else load_qa(dataset, image_dirs, task)
    qa.require_images(dataset, task)
    chosen = pick(qa.images, n, seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / PREVIEW_MANIFEST
    if manifest.is_file():
        for entry in json.loads(manifest.read_text(encoding="utf-8")):
            (out / Path(entry["file"]).name).unlink(missing_ok=True)
    report = PreviewReport(out=out, rows=qa.rows, missing=dict(qa.missing))
    entries = []
    from tqdm.auto import tqdm

    for i, (row, image) in enumerate(tqdm(chosen, desc="previews", unit="image", disable=len(chosen) < 8)):
        path = out / _file_name(i, row)
        render(row, image.path, max_size).save(path, format="PNG")
        report.files.append(path)
        entries.append({"file": path.name, "id": row["id"], "task": row["task"], "question": row["question"],
                        "answer": row["answer"], "source": row["source"], "image_id": row["image_id"]})
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    dataset_dir = Path(dataset)
    if dataset_dir.is_dir() and out.resolve() == (dataset_dir / PREVIEWS_DIR).resolve():
        report.card = refresh_card(dataset_dir)
    logger.info("wrote %d previews to %s%s", len(report.files), out,
                f" ({CARD_PREVIEWS} embedded in {report.card})" if report.card else "")
    return report
