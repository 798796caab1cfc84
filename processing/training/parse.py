"""The other direction: annotation files in chat shapes -> rows of the stored schema.

Shapes read (one sample per JSON object; ``.json`` holds a list, ``.jsonl`` one per line):

* ``conversations`` with ``from``/``value`` (LLaVA, Qwen-VL finetune, InternVL JSONL lines) and an
  ``image`` (path or list); an InternVL meta JSON (``{name: {root, annotation, ...}}``) is followed
  to its JSONL with paths under ``root``;
* ``messages`` with ``role``/``content`` strings and ``images`` (sharegpt / LLaMA-Factory, ms-swift
  with ``objects`` for its ``<bbox>`` / ``<ref-object>`` placeholders);
* ``messages`` with content parts (``{"type": "image", "image": path}``) as processors take them.

Image paths map to ``(source, image_id)`` through the resolvers: a path under an ``image_dirs``
root belongs to that source, else a file name in a source's layout (``Resolver.id_pattern``:
``objects365_v2_00908726.jpg``, an OpenImages ImageID, a Pixmo sha256). Box text of any family is
read back to 0..1000 (``qwen2.5-vl`` pixels need ``model_family="qwen2.5-vl"`` and the image size).

A sample exported with its structured rows (key ``"spatialforge"``) gives back the same rows.
Otherwise each user/assistant pair is parsed through the templates of ``processing/templates.py``:
grounding answers (``bbox_2d`` JSON), counts, referring labels and relation answers become
``objects`` / ``count`` / ``fact``. What the text does not carry is left empty and counted by
reason in :attr:`ChatReader.stats` (e.g. ``object_box_not_in_text`` for "the cup" without a box,
``unknown_question`` for a question no template matches: its row keeps its text, task null).
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ...builders.schema import COLUMNS, VERIFICATION, make_id, normalize_bboxes
from ..tasks.templates import OPPOSITE, SIDE_WORDS, TEMPLATES
from .formats import (
    BBOX_TAG,
    DEFAULT_FAMILY,
    IMAGE_TAG,
    STRUCTURED_KEY,
    box_grid,
    convert_box,
    get_family,
    unconvert_box,
)

logger = logging.getLogger(__name__)

# A box in any family's syntax (Qwen2-VL, InternVL, then the plain [x1, y1, x2, y2] of Qwen2.5/3-VL and
# of the stored text), one alternation so that each box is read back exactly once.
_ANY_BOX = re.compile(
    r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>"
    r"|<box>\[\[(\d+), (\d+), (\d+), (\d+)\]\]</box>"
    r"|\[(\d+), (\d+), (\d+), (\d+)\]"
)
_INTERNVL_GROUNDING = re.compile(r"^<ref>(?P<label>.+?)</ref><box>\[(?P<boxes>.*)\]</box>$", re.S)
_QWEN2_GROUNDING = re.compile(r"^<\|object_ref_start\|>(?P<label>.+?)<\|object_ref_end\|>(?P<boxes>(?:<\|box_start\|>.*?<\|box_end\|>)+)$", re.S)
_MENTION = re.compile(r"^the (?P<label>.+?)(?: at \[(?P<box>\d+, \d+, \d+, \d+)\])?$", re.I | re.S)
_SLOTS = {
    "a": r"(?P<a>the .+?)", "b": r"(?P<b>the .+?)", "answer": r"(?P<answer>the .+?)",
    "label": r"(?P<label>.+?)", "labels": r"(?P<labels>.+?)", "box": r"\[(?P<box>\d+, \d+, \d+, \d+)\]",
    "count": r"(?P<count>\d+)", "yes_no": r"(?P<yes_no>yes|no)", "side": r"(?P<side>closer|farther|left|right)",
    "json": r"(?P<json>\[.*\])",
}


def _pattern(text: str) -> re.Pattern:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if name:
            parts.append(_SLOTS[name])
    return re.compile("".join(parts), re.I | re.S)


_SIDE_PREDICATE = {word: predicate for predicate, word in SIDE_WORDS.items()}
_TEMPLATES = [(task, t, _pattern(t.question), _pattern(t.answer)) for task, ts in TEMPLATES.items() for t in ts]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


@dataclass
class ChatReader:
    """Reads chat-shaped annotation files into schema rows (see the module docstring).

    ``image_dirs``: source -> folder (paths under a folder belong to its source);
    ``media_root``: folder relative image paths are under; ``model_family``: whose box values the
    text holds (only ``qwen2.5-vl`` differs: pixels of the resized image).
    """

    image_dirs: Mapping[str, str] = field(default_factory=dict)
    media_root: str | None = None
    model_family: str = DEFAULT_FAMILY
    stats: dict[str, Counter] = field(default_factory=dict)  # file -> reason -> count

    def __post_init__(self) -> None:
        get_family(self.model_family)
        from ...builders.resolvers import get_resolver

        self._resolvers = {s: get_resolver(s, os.fspath(r)) for s, r in sorted((self.image_dirs or {}).items())}

    @property
    def counts(self) -> dict[str, int]:
        """Counts of every file read, by reason (``rows``, ``rows_structured`` and what was not parsed)."""
        total: Counter = Counter()
        for c in self.stats.values():
            total.update(c)
        return dict(sorted(total.items()))

    # -- files --------------------------------------------------------------------------------
    def read(self, path: str) -> Iterator[dict]:
        """Rows of one file, in sample order."""
        counts = self.stats[path] = Counter()
        index: Counter = Counter()  # rows per (source, image_id, task) so far: the index in their ids
        for sample, root in self._samples(path):
            yield from self._rows(sample, root, counts, index)

    def _samples(self, path: str) -> Iterator[tuple[dict, str | None]]:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line), self.media_root
                        except json.JSONDecodeError as err:
                            raise ValueError(f"{path}:{lineno}: not a JSON object ({err})") from err
                return
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not JSON ({err})") from err
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "annotation" in v for v in data.values()):
            for name, meta in data.items():  # InternVL meta file
                ann = meta["annotation"]
                ann = ann if os.path.isabs(ann) else os.path.join(os.path.dirname(path), ann)
                root = meta.get("root") or self.media_root
                for sample, _ in self._samples(ann):
                    yield sample, root
            return
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of samples (or an InternVL meta file), got {type(data).__name__}")
        for sample in data:
            yield sample, self.media_root

    # -- samples ------------------------------------------------------------------------------
    @staticmethod
    def _images(sample: dict) -> list[str]:
        if "conversations" in sample:
            images = sample.get("image") or []
        else:
            images = list(sample.get("images") or [])
            for m in sample.get("messages") or []:
                if isinstance(m.get("content"), list):
                    images += [p.get("image") for p in m["content"] if p.get("type") == "image"]
        return [images] if isinstance(images, str) else list(images)

    @staticmethod
    def _turns(sample: dict, size: tuple[int | None, int | None], counts: Counter) -> list[tuple[str, str]]:
        """``[(question, answer)]`` of a sample, ``<image>`` tags dropped, swift placeholders filled."""
        if "conversations" in sample:
            turns = [t.get("value") or "" for t in sample["conversations"]]
        else:
            turns = []
            for m in sample.get("messages") or []:
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(p.get("text") or "" for p in content if p.get("type") == "text")
                turns.append(content or "")
        objects = sample.get("objects") or {}
        if objects.get("bbox"):  # ms-swift: <bbox> / <ref-object> placeholders, in order
            boxes, refs = iter(objects["bbox"]), iter(objects.get("ref") or [])
            norm1 = objects.get("bbox_type") == "norm1"

            def fill(m: re.Match) -> str:
                if m.group(0) != BBOX_TAG:
                    return next(refs, "")
                box = next(boxes, None)
                if box is None or (not norm1 and not all(size)):
                    counts["swift_bbox_unreadable"] += 1
                    return m.group(0)
                width, height = (1, 1) if norm1 else size
                return "[" + ", ".join(str(v) for v in normalize_bboxes([box], width, height)[0]) + "]"

            turns = [re.sub(r"<bbox>|<ref-object>", fill, t) for t in turns]
        if len(turns) % 2:
            counts["unanswered_turn"] += 1
        return [(turns[k].replace(IMAGE_TAG, "").strip(), turns[k + 1].strip()) for k in range(0, len(turns) - 1, 2)]

    def _image(self, images: list[str], root: str | None, counts: Counter) -> tuple[str, str, int | None, int | None, str | None]:
        """``(source, image_id, width, height, path)`` of a sample's (first) image."""
        from ...builders.resolvers import OK, inspect_image, source_of_file

        if not images:
            counts["no_image"] += 1
            return "unknown", "", None, None, None
        if len(images) > 1:
            counts["extra_images_ignored"] += len(images) - 1
        rel = images[0]
        path = rel if os.path.isabs(rel) or not root else os.path.join(root, rel)
        real = os.path.realpath(path)
        name = os.path.basename(rel)
        found = None
        for src, resolver in self._resolvers.items():  # a file under a source's folder is of that source
            if real.startswith(resolver.root_real.rstrip(os.sep) + os.sep):
                found = src, resolver.key_for(name) or name
                break
        found = found or source_of_file(name)  # else the source whose layout the name fits
        if found is None:
            counts["unknown_image_source"] += 1
            found = "unknown", os.path.splitext(name)[0]
        status = inspect_image(path)  # header only; EXIF-transposed size, the grid boxes refer to
        width, height = (status.width, status.height) if status.status == OK else (None, None)
        if width is None:
            counts["image_size_unknown"] += 1
        return found[0], found[1], width, height, path

    def _rows(self, sample: dict, root: str | None, counts: Counter, index: Counter) -> Iterator[dict]:
        source, image_id, width, height, _ = self._image(self._images(sample), root, counts)
        if sample.get("width") and sample.get("height"):
            width, height = int(sample["width"]), int(sample["height"])
        pairs = self._turns(sample, (width, height), counts)
        family = get_family(self.model_family)
        no_grid = family.coords != "relative" and not width
        if no_grid:  # pixel boxes of an image of unknown size cannot go back to 0..1000: text kept, boxes left out
            counts["pixel_boxes_without_image_size"] += 1
            family = get_family(DEFAULT_FAMILY)
        grid = box_grid(family, (width, height))
        structured = sample.get(STRUCTURED_KEY)
        if structured is not None and len(structured) != len(pairs):
            counts["structured_rows_mismatch"] += 1
            structured = None
        if structured is not None:
            for row, (q, a) in zip(structured, pairs):
                if (row.get("source"), row.get("image_id")) != (source, image_id):
                    counts["structured_image_differs_from_path"] += 1
                out = dict(row)
                objects = row.get("objects") or []
                out["question"] = self._stored_text(q, family, grid, objects)
                out["answer"] = self._stored_text(a, family, grid, objects)
                if out.get("task") == "grounding":
                    out["answer"] = json.dumps([{"bbox_2d": o["bbox"], "label": o["label"]} for o in out["objects"]])
                counts["rows"] += 1
                counts["rows_structured"] += 1
                yield {c: out.get(c) for c in COLUMNS}
            return
        for q, a in pairs:
            q, a = self._stored_text(q, family, grid), self._stored_text(a, family, grid)
            row = self._parse(q, a, counts)
            if no_grid:
                row["objects"] = [dict(o, bbox=None) for o in row["objects"]]
            task = row["task"]
            row.update(source=source, image_id=image_id, width=width, height=height, question=q)
            key = (source, image_id, task or "unknown")
            row["id"] = make_id(*key, index[key])
            index[key] += 1
            counts["rows"] += 1
            yield {c: row.get(c) for c in COLUMNS}

    @staticmethod
    def _stored_text(text: str, family, grid, objects: list[dict] | None = None) -> str:
        """Text with the family's box syntax back in the stored ``[x1, y1, x2, y2]`` (0..1000).

        With the row's ``objects``, a box is the object's own box when its family values match
        (exact also where the family grid is coarser than 0..1000, e.g. Qwen2.5-VL pixels).
        """
        known = {tuple(convert_box(o["bbox"], grid)): list(o["bbox"]) for o in objects or ()}

        def back(values: list[int]) -> list[int]:
            return known.get(tuple(values)) or unconvert_box(values, grid)

        for stored, phrase in family.rephrase:
            text = text.replace(phrase, stored)
        m = _INTERNVL_GROUNDING.match(text) or _QWEN2_GROUNDING.match(text)
        if m:  # a grounding answer in a family syntax: back to the bbox_2d JSON (only coordinates are numbers)
            values = [int(v) for v in re.findall(r"\d+", m.group("boxes"))]
            boxes = [back(values[k : k + 4]) for k in range(0, len(values) - 3, 4)]
            return json.dumps([{"bbox_2d": b, "label": m.group("label")} for b in boxes])
        return _ANY_BOX.sub(lambda mm: "[" + ", ".join(map(str, back([int(v) for v in mm.groups() if v]))) + "]", text)

    # -- answers ------------------------------------------------------------------------------
    def _parse(self, q: str, a: str, counts: Counter) -> dict:
        """Task, objects, fact and count of one stored-text pair (text kept whatever is parsed)."""
        row = {"task": None, "answer": a, "objects": [], "fact": None, "count": None,
               "verification": dict.fromkeys(VERIFICATION, None) | {"checks": []}}
        for task, t, qp, ap in _TEMPLATES:
            mq, ma = qp.fullmatch(q), ap.fullmatch(a)
            if mq and ma:
                break
        else:
            grounding = _grounding_objects(a)
            if grounding:
                row.update(task="grounding", objects=grounding)
                counts["question_not_a_template"] += 1
            elif a.strip().rstrip(".").isdigit():
                row.update(task="counting", count=int(a.strip().rstrip(".")))
                counts["question_not_a_template"] += 1
                counts["count_boxes_not_in_text"] += 1
            else:
                counts["unknown_question"] += 1
            return row
        slots = {**mq.groupdict(), **ma.groupdict()}
        row["task"] = task
        if task == "grounding":
            objects = _grounding_objects(a)
            if objects is None:
                counts["grounding_answer_not_json"] += 1
            row["objects"] = objects or []
        elif task == "referring":  # the answer is the sentence-cased display label
            label = slots["label"]
            label = label if len(label) > 1 and label[1].isupper() else label[:1].lower() + label[1:]
            row["objects"] = [{"label": label, "bbox": _ints(slots["box"])}]
        elif task == "counting":
            row["count"] = int(slots["count"])
            counts["count_boxes_not_in_text"] += 1
        else:
            mentions = {r: _mention(slots[r]) for r in t.roles}
            for label, box in mentions.values():
                if box is None:
                    counts["object_box_not_in_text"] += 1
            row["objects"] = [{"label": label, "bbox": box} for label, box in mentions.values()]
            a_k, b_k = t.roles.index("a"), t.roles.index("b")
            if t.form == "choice":
                holder = a_k if _mention(slots["answer"]) == mentions["a"] else b_k
                fact = (holder, t.asks, b_k if holder == a_k else a_k)
            elif t.form == "yesno":
                fact = (a_k, t.asks if slots["yes_no"].lower() == "yes" else OPPOSITE[t.asks], b_k)
            else:
                predicate = _SIDE_PREDICATE[slots["side"].lower()]
                fact = (a_k, predicate, b_k)
            row["fact"] = {"subject": fact[0], "predicate": fact[1], "object": fact[2],
                           "frame": "person" if task == "perspective" else "camera"}
        return row


def _mention(text: str) -> tuple[str, list[int] | None]:
    m = _MENTION.match(text.strip())
    if not m:
        return text, None
    return m.group("label"), (_ints(m.group("box")) if m.group("box") else None)


def _grounding_objects(answer: str) -> list[dict] | None:
    try:
        data = json.loads(answer)
    except (json.JSONDecodeError, ValueError):
        return None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) and len(d.get("bbox_2d") or ()) == 4 for d in data):
        return None
    return [{"label": str(d.get("label", "")), "bbox": [int(v) for v in d["bbox_2d"]]} for d in data]


__all__ = ["ChatReader"]
