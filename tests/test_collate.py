"""ChatCollator through a real LLaVA processor built offline: exactly the assistant tokens carry labels."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from PIL import Image

from spatialforge.processing.training.collate import IGNORE_INDEX, ChatCollator

_EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_tiny.py")


def _example():
    spec = importlib.util.spec_from_file_location("train_tiny", _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(k: int, question: str, answer: str) -> dict:
    return {"id": f"mine-a-counting-{k:03d}", "source": "mine", "image_id": "a", "task": "counting", "width": 40,
            "height": 30, "question": question, "answer": answer, "objects": [], "fact": None, "count": int(answer)}


QA = [("How many cups are there in the image?", "2"), ("How many chairs are there in the image?", "3")]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    corpus = [q for q, _ in QA] + ["USER: ASSISTANT: How many cups chairs are there in the image? 1 2 3"] * 4
    folder = _example().build_tiny_llava(str(tmp_path_factory.mktemp("llava") / "tiny"), corpus)
    return AutoProcessor.from_pretrained(folder)  # the from_pretrained path of a real checkpoint


def _samples():
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    return [
        {"id": "two", "rows": [_row(0, *QA[0]), _row(1, *QA[1])], "image": img, "image_path": "/x/a.png"},
        {"id": "one", "rows": [_row(0, *QA[0])], "image": img, "image_path": "/x/a.png"},
    ]


def _n(processor, text: str) -> int:
    img = Image.new("RGB", (40, 30))
    return processor(text=[text], images=[img], return_tensors="pt")["input_ids"].shape[1]


def test_labels_are_the_assistant_turns_exactly(processor):
    batch = ChatCollator(processor)(_samples())
    tok = processor.tokenizer
    # the conversation as LLaVA-1.5 writes it, by hand (not through the template under test)
    p1 = f"USER: <image>\n{QA[0][0]} ASSISTANT:"
    a1 = p1 + f" {QA[0][1]}</s>"
    p2 = a1 + f"USER: {QA[1][0]} ASSISTANT:"
    a2 = p2 + f" {QA[1][1]}</s>"
    spans = [(_n(processor, p1), _n(processor, a1)), (_n(processor, p2), _n(processor, a2))]
    full = processor(text=[a2], images=[Image.new("RGB", (40, 30))], return_tensors="pt")["input_ids"][0]
    n = len(full)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape[1] == n and torch.equal(ids[0], full)  # same tokens as the whole text in one go
    unmasked = [k for k in range(n) if labels[0, k] != IGNORE_INDEX]
    assert unmasked == list(range(*spans[0])) + list(range(*spans[1]))
    assert torch.equal(labels[0, unmasked], ids[0, unmasked])
    assert [tok.decode(ids[0, a:b]) for a, b in spans] == [f" {QA[0][1]}</s>", f" {QA[1][1]}</s>"]
    # the one-turn sample: its answer only, then padding (right side): pad ids, mask 0, label -100
    m = _n(processor, a1)
    assert [k for k in range(n) if labels[1, k] != IGNORE_INDEX] == list(range(*spans[0]))
    assert mask[1].tolist() == [1] * m + [0] * (n - m)
    assert (ids[1, m:] == tok.pad_token_id).all() and (labels[1, m:] == IGNORE_INDEX).all()
    # 16 image tokens (32x32 crop, 8x8 patches, CLS dropped) per sample; one image tensor each
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (ids == image_id).sum(dim=1).tolist() == [16, 16]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


def test_left_padding_and_max_length(processor):
    processor.tokenizer.padding_side = "left"
    try:
        batch = ChatCollator(processor)(_samples())
    finally:
        processor.tokenizer.padding_side = "right"
    n, m = batch["input_ids"].shape[1], int(batch["attention_mask"][1].sum())
    assert batch["attention_mask"][1].tolist() == [0] * (n - m) + [1] * m
    assert (batch["labels"][1, : n - m] == IGNORE_INDEX).all()
    cut = ChatCollator(processor, max_length=m)(_samples())
    assert cut["input_ids"].shape[1] == m
    with pytest.raises(ValueError, match="'two'.*max_length=5"):
        ChatCollator(processor, max_length=5)(_samples())
