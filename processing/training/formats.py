"""Training formats derived from the one stored row schema: chat messages, and the files that
Qwen-VL, LLaVA, InternVL, LLaMA-Factory and ms-swift read.

Nothing is stored twice: every format is computed from rows of ``builders.schema.FEATURES``. Box
text follows the target model (:data:`MODEL_FAMILIES`, one table): it is rewritten from the
structured ``objects`` of each row, never copied from the stored text. The stored text only says
*where* a box stands (``[x1, y1, x2, y2]`` in 0..1000, see ``processing/templates.py``); a box in
the text that matches none of the row's objects is an error (:class:`FormatError`).

==============  ======================  ============================================================
family          box values              box text
==============  ======================  ============================================================
qwen3-vl        relative 0..1000        ``[x1, y1, x2, y2]``; grounding ``[{"bbox_2d": [...], "label": ...}]``
qwen2.5-vl      absolute pixels on the  as qwen3-vl; pixels of the image as the Qwen2.5-VL processor
                resized image           resizes it (:func:`smart_resize`: multiples of 28, min/max pixels)
qwen2-vl        relative 0..1000        ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``; grounding with
                                        ``<|object_ref_start|>label<|object_ref_end|>``
internvl        relative 0..1000        ``<box>[[x1, y1, x2, y2]]</box>``; grounding ``<ref>label</ref><box>[[...], ...]</box>``
==============  ======================  ============================================================

Example:
    >>> row = {"id": "r0", "task": "referring", "width": 640, "height": 480,
    ...        "question": "Name the object inside the box [100, 200, 300, 400].", "answer": "Cup",
    ...        "objects": [{"label": "cup", "bbox": [100, 200, 300, 400]}]}
    >>> to_messages([row], "img.jpg", "internvl")[0]["content"][1]["text"]
    'Name the object inside the box <box>[[100, 200, 300, 400]]</box>.'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...builders.schema import BBOX_SCALE, normalize_bboxes

# --------------------------------------------------------------------------------- model families


@dataclass(frozen=True)
class ModelFamily:
    """How one model family writes boxes.

    ``coords``: ``relative`` (0..1000 of the image, what the rows store) or ``resized_pixels``
    (absolute pixels on the image as the processor resizes it, :func:`smart_resize` with
    ``factor``, ``min_pixels``, ``max_pixels``). ``box``: a box in free text (slots ``x1 y1 x2
    y2``). ``grounding``: the whole grounding answer, ``json`` (the ``bbox_2d`` list) or a
    template with ``{label}`` and ``{boxes}`` (each box through ``grounding_box``, joined by
    ``box_sep``).
    """

    name: str
    coords: str
    box: str
    grounding: str = "json"
    grounding_box: str = ""
    box_sep: str = ""
    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    rephrase: tuple[tuple[str, str], ...] = ()  # (stored phrase, family phrase), e.g. the scale a template names


# The Qwen2.5-VL processor resizes with transformers' ``smart_resize`` (image_processing_qwen2_vl):
# patch_size 14 x merge_size 2 = factor 28, min_pixels 56*56, max_pixels 28*28*1280 by default;
# checkpoints may override min/max in preprocessor_config.json (pass ``image_size`` then).
MODEL_FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("qwen3-vl", "relative", "[{x1}, {y1}, {x2}, {y2}]"),
        ModelFamily("qwen2.5-vl", "resized_pixels", "[{x1}, {y1}, {x2}, {y2}]", rephrase=(("on a 0-1000 scale", "in pixels"),)),
        ModelFamily(
            "qwen2-vl",
            "relative",
            "<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>",
            grounding="<|object_ref_start|>{label}<|object_ref_end|>{boxes}",
            grounding_box="<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>",
        ),
        ModelFamily(
            "internvl",
            "relative",
            "<box>[[{x1}, {y1}, {x2}, {y2}]]</box>",
            grounding="<ref>{label}</ref><box>[{boxes}]</box>",
            grounding_box="[{x1}, {y1}, {x2}, {y2}]",
            box_sep=", ",
        ),
    )
}
DEFAULT_FAMILY = "qwen3-vl"

# A box as the task step writes it into questions and answers (``verify.box_text``).
STORED_BOX = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


class FormatError(ValueError):
    """A row that cannot be written in a training format; ``reason`` names why (for counts)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def get_family(name: str) -> ModelFamily:
    """The :class:`ModelFamily` called ``name`` (``ValueError`` naming the known ones otherwise)."""
    try:
        return MODEL_FAMILIES[name]
    except KeyError:
        raise ValueError(f"model_family must be one of {sorted(MODEL_FAMILIES)}, got {name!r}") from None


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """``(height, width)`` the Qwen2-VL / Qwen2.5-VL image processor resizes an image to: both
    multiples of ``factor``, ``min_pixels <= h * w <= max_pixels``, aspect ratio kept as well as
    possible (the rule of transformers' ``image_processing_qwen2_vl.smart_resize``).

    >>> smart_resize(480, 640)
    (476, 644)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def box_grid(family: ModelFamily, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of the grid the family's box values live on, for an image of
    ``image_size = (width, height)`` pixels: 1000 x 1000 for relative families."""
    if family.coords == "relative":
        return BBOX_SCALE, BBOX_SCALE
    if family.coords == "resized_pixels":
        h, w = smart_resize(image_size[1], image_size[0], family.factor, family.min_pixels, family.max_pixels)
        return w, h
    raise ValueError(f"model family {family.name!r} has unknown coords {family.coords!r}")


def convert_box(bbox: Sequence[int], grid: tuple[int, int]) -> list[int]:
    """A stored 0..1000 box on a ``(width, height)`` grid: ``round(v / 1000 * size)``."""
    gw, gh = grid
    if (gw, gh) == (BBOX_SCALE, BBOX_SCALE):
        return [int(v) for v in bbox]
    return [round(v / BBOX_SCALE * s) for v, s in zip(bbox, (gw, gh, gw, gh))]


def unconvert_box(box: Sequence[int], grid: tuple[int, int]) -> list[int]:
    """Inverse of :func:`convert_box` (exact for relative families, up to one grid step otherwise)."""
    gw, gh = grid
    if (gw, gh) == (BBOX_SCALE, BBOX_SCALE):
        return [int(v) for v in box]
    return normalize_bboxes([box], gw, gh)[0]


def _box_slots(box: Sequence[int]) -> dict[str, int]:
    return dict(zip(("x1", "y1", "x2", "y2"), box))


def _family_text(row: Mapping, text: str, family: ModelFamily, grid: tuple[int, int], where: str) -> str:
    """``text`` with every stored box replaced by the family's box text of the matching object."""
    boxes = {tuple(int(v) for v in o["bbox"]) for o in row.get("objects") or ()}

    def repl(m: re.Match) -> str:
        box = tuple(int(v) for v in m.groups())
        if box not in boxes:
            raise FormatError(
                f"row {row.get('id')!r}: the box {m.group(0)} in its {where} matches none of its objects "
                f"{sorted(boxes)}", "box_not_in_objects",
            )
        return family.box.format(**_box_slots(convert_box(box, grid)))

    text = STORED_BOX.sub(repl, text)
    for stored, phrase in family.rephrase:
        text = text.replace(stored, phrase)
    return text


def grounding_answer(objects: Sequence[Mapping], family: ModelFamily, grid: tuple[int, int]) -> str:
    """The grounding answer of ``objects`` in the family's syntax (boxes in the objects' order)."""
    if family.grounding == "json":
        return json.dumps([{"bbox_2d": convert_box(o["bbox"], grid), "label": o["label"]} for o in objects])
    labels = list(dict.fromkeys(o["label"] for o in objects))
    if len(labels) != 1:
        raise FormatError(f"grounding answers of {family.name!r} name one label, got {labels}", "mixed_labels")
    boxes = family.box_sep.join(family.grounding_box.format(**_box_slots(convert_box(o["bbox"], grid))) for o in objects)
    return family.grounding.format(label=labels[0], boxes=boxes)


def row_text(row: Mapping, model_family: str | ModelFamily = DEFAULT_FAMILY,
             image_size: tuple[int, int] | None = None) -> tuple[str, str]:
    """``(question, answer)`` of one row with its box text written for ``model_family``.

    ``image_size``: ``(width, height)`` of the image file the model will see (default: the row's
    ``width`` x ``height``, the grid its boxes refer to); only ``resized_pixels`` families use it.
    """
    family = model_family if isinstance(model_family, ModelFamily) else get_family(model_family)
    grid = box_grid(family, image_size or (int(row["width"]), int(row["height"])))
    question = _family_text(row, row["question"], family, grid, "question")
    if row.get("task") == "grounding":
        objects = row.get("objects") or []
        if not objects:
            raise FormatError(f"row {row.get('id')!r}: a grounding row without objects", "grounding_without_objects")
        answer = grounding_answer(objects, family, grid)
    else:
        answer = _family_text(row, row["answer"], family, grid, "answer")
    return question, answer


def to_messages(
    rows: Sequence[Mapping],
    image: str | None,
    model_family: str = DEFAULT_FAMILY,
    image_size: tuple[int, int] | None = None,
) -> list[dict]:
    """Hugging Face chat messages with content parts: one user/assistant pair per row.

    Several rows (of one image) make a multi-turn conversation; the image is a content part of the
    first user turn only (none when ``image`` is None). Box text is rewritten for ``model_family``
    from each row's ``objects`` (see the module docstring).

    >>> rows = [{"id": "a", "task": "counting", "width": 8, "height": 8, "objects": [],
    ...          "question": "How many cups are there in the image?", "answer": "2"}]
    >>> to_messages(rows, "/data/x.jpg")[0]["content"][0]
    {'type': 'image', 'image': '/data/x.jpg'}
    """
    family = get_family(model_family)
    messages: list[dict] = []
    for k, row in enumerate(rows):
        question, answer = row_text(row, family, image_size)
        content: list[dict] = []
        if k == 0 and image is not None:
            content.append({"type": "image", "image": image})
        content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


# ------------------------------------------------------------------------------------ file formats
IMAGE_TAG = "<image>"
BBOX_TAG = "<bbox>"  # ms-swift's placeholder of one box of ``objects.bbox``
STRUCTURED_KEY = "spatialforge"
"""Key of the structured part of the rows (what text cannot carry: boxes of bare mentions, facts,
verification) in exported samples; the frameworks ignore keys they do not read, the importer uses
it to give back the same rows."""


@dataclass
class Sample:
    """One training sample: one row, or every row of one image (multi-turn, ``--group-by-image``).

    ``image`` is the path as the file names it (absolute, or relative to the media root);
    ``image_size`` the ``(width, height)`` of that file (default: the rows' recorded size).
    """

    rows: list[dict]
    image: str
    image_size: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        """The row id, or for several rows the id of the first one plus ``+<n-1>``."""
        first = self.rows[0]["id"]
        return first if len(self.rows) == 1 else f"{first}+{len(self.rows) - 1}"

    @property
    def size(self) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size
        return int(self.rows[0]["width"]), int(self.rows[0]["height"])


def structured(rows: Sequence[Mapping]) -> list[dict]:
    """The rows without their text (question and answer are in the conversation)."""
    return [{k: v for k, v in row.items() if k not in ("question", "answer", "image")} for row in rows]


def _turns(sample: Sample, model_family: str) -> list[tuple[str, str]]:
    family = get_family(model_family)
    return [row_text(row, family, sample.size) for row in sample.rows]


def to_conversations(sample: Sample, model_family: str = DEFAULT_FAMILY, role_key: str = "from",
                     text_key: str = "value", user: str = "human", assistant: str = "gpt",
                     image_tag: str = IMAGE_TAG + "\n") -> list[dict]:
    """Turns as ``{from, value}`` dicts (LLaVA / InternVL / Qwen-VL finetune; LLaMA-Factory with
    ``role``/``content``), ``<image>`` opening the first user turn: one tag for the one image."""
    out = []
    for k, (question, answer) in enumerate(_turns(sample, model_family)):
        out.append({role_key: user, text_key: (image_tag if k == 0 else "") + question})
        out.append({role_key: assistant, text_key: answer})
    return out


def messages_record(sample: Sample, model_family: str = DEFAULT_FAMILY) -> dict:
    """``{"id", "messages"}``: Hugging Face messages with content parts (processors' chat templates)."""
    return {"id": sample.id, "messages": to_messages(sample.rows, sample.image, model_family, sample.size)}


def qwen_vl_record(sample: Sample, model_family: str = DEFAULT_FAMILY) -> dict:
    """Qwen-VL finetune JSON (``qwen-vl-finetune``): ``image`` + ``conversations`` (human/gpt)."""
    return {"id": sample.id, "image": sample.image, "conversations": to_conversations(sample, model_family)}


def llava_record(sample: Sample, model_family: str = DEFAULT_FAMILY) -> dict:
    """LLaVA: ``id``, ``image``, ``conversations`` (human/gpt), ``<image>`` in the first human turn."""
    return {"id": sample.id, "image": sample.image, "conversations": to_conversations(sample, model_family)}


def internvl_record(sample: Sample, model_family: str = "internvl") -> dict:
    """InternVL JSONL line: ``id``, ``image``, ``width``, ``height``, ``conversations``."""
    width, height = sample.size
    return {"id": sample.id, "image": sample.image, "width": width, "height": height,
            "conversations": to_conversations(sample, model_family)}


def llamafactory_record(sample: Sample, model_family: str = DEFAULT_FAMILY) -> dict:
    """LLaMA-Factory sharegpt: ``messages`` (role/content) + ``images``; one ``<image>`` per image."""
    messages = to_conversations(sample, model_family, "role", "content", "user", "assistant", IMAGE_TAG)
    return {"id": sample.id, "messages": messages, "images": [sample.image]}


def swift_record(sample: Sample, model_family: str | None = None) -> dict:
    """ms-swift: ``messages`` + ``images`` + ``objects`` (``ref``, ``bbox``, ``bbox_type``).

    Boxes stay structured: each box in the text becomes swift's ``<bbox>`` placeholder and its
    value goes, in the same order, to ``objects.bbox`` as ``norm1`` (0..1 of the image, exact from
    the stored 0..1000); swift's template writes them for the model it trains (0..1000 for Qwen2-VL /
    Qwen3-VL / InternVL, pixels of the resized image for Qwen2.5-VL). ``model_family`` is unused.
    For Qwen2.5-VL / Qwen3-VL, swift must run with ``QWENVL_BBOX_FORMAT=new`` to write a box as
    ``[x1, y1, x2, y2]``, which keeps the grounding answers JSON; its default, ``legacy``, writes
    Qwen2-VL's ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` there.
    """
    messages, refs, bboxes = [], [], []
    for k, row in enumerate(sample.rows):
        by_box = {tuple(o["bbox"]): o["label"] for o in row.get("objects") or ()}

        def placeholder(m: re.Match, by_box=by_box, row=row) -> str:
            box = tuple(int(v) for v in m.groups())
            if box not in by_box:
                raise FormatError(f"row {row.get('id')!r}: the box {m.group(0)} matches none of its objects",
                                  "box_not_in_objects")
            refs.append(by_box[box])
            bboxes.append([v / BBOX_SCALE for v in box])
            return BBOX_TAG

        question = STORED_BOX.sub(placeholder, row["question"])
        if row.get("task") == "grounding":
            objects = row.get("objects") or []
            answer = json.dumps([{"bbox_2d": "\0", "label": o["label"]} for o in objects])
            answer = answer.replace('"\\u0000"', BBOX_TAG)
            refs += [o["label"] for o in objects]
            bboxes += [[v / BBOX_SCALE for v in o["bbox"]] for o in objects]
        else:
            answer = STORED_BOX.sub(placeholder, row["answer"])
        messages.append({"role": "user", "content": (IMAGE_TAG if k == 0 else "") + question})
        messages.append({"role": "assistant", "content": answer})
    return {"id": sample.id, "messages": messages, "images": [sample.image],
            "objects": {"ref": refs, "bbox": bboxes, "bbox_type": "norm1"}}
