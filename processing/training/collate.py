"""Batch training samples through a ``transformers`` processor, with labels on the assistant turns only.

A sample is what :class:`~.stream.TrainingStream` yields (``rows`` of one image plus the decoded
``image``). :class:`ChatCollator` turns its rows into chat messages (:func:`.formats.to_messages`,
box text for ``model_family``), renders them with the processor's own chat template, and tokenizes
turn by turn::

    [prompt 1 + image]  [answer 1 + end of turn]  [prompt 2]  [answer 2 + end of turn] ...
     processor(text, images)  tokenizer(...)       tokenizer   tokenizer
     labels -100              labels = ids         -100        labels = ids

The turn boundaries come from the template itself: the text of the first ``i`` messages with the
generation prompt is a prefix of the text of the first ``i + 1`` messages, and what lies between is
the assistant's answer with the template's end-of-turn marker (``</s>``, ``<|im_end|>``, ...),
which the model must learn to emit. Only the first piece goes through the processor, which
expands the image placeholder into the model's image tokens and returns ``pixel_values`` (and
``image_sizes`` / ``image_grid_thw`` where the model has them); the other pieces are plain text.
This is how prompts are tokenized at inference (prompt, then generated answer), and it needs no
``{% generation %}`` markers in the template, which few checkpoints ship.

Padding is on the tokenizer's ``padding_side``; padded positions get ``attention_mask`` 0 and label
``ignore_index``.

Example:
    >>> collate = ChatCollator(AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf"))  # doctest: +SKIP
    >>> batch = collate([next(iter(stream))])                                            # doctest: +SKIP
    >>> sorted(batch)                                                                   # doctest: +SKIP
    ['attention_mask', 'input_ids', 'labels', 'pixel_values']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .formats import to_messages
from .images import processor_decode_size

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def _plain_rgb(image: Any) -> bool:
    """A PIL image in RGB without a transparent color (what the stream decodes)."""
    return getattr(image, "mode", None) == "RGB" and "transparency" not in getattr(image, "info", {})


class ChatCollator:
    """``collate_fn`` for a DataLoader over :class:`~.stream.TrainingStream` samples.

    ``processor``: a ``transformers`` processor with a chat template (``processor.chat_template``
    or its tokenizer's). ``max_length``: cut longer sequences at the end (the prompt with the image
    must fit, else ``ValueError`` naming the sample). Pair it with
    ``TrainingStream(..., decode_size=processor)``: images then arrive decoded at the scale the
    processor reads (``self.decode_size``); box text always uses the full ``image_size``.
    """

    def __init__(
        self,
        processor: Any,
        model_family: str = "qwen3-vl",
        max_length: int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {type(processor).__name__} has no pad token; set tokenizer.pad_token")
        self.model_family = model_family
        self.max_length = max_length
        self.ignore_index = ignore_index
        self.decode_size = processor_decode_size(processor)  # what TrainingStream(decode_size=processor) decodes at
        self._hinted = False

    # -- one sample --------------------------------------------------------------------------------
    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered conversation cut at the turn boundaries: ``(text, is_assistant_answer)``."""
        out: list[tuple[str, bool]] = []
        done = ""
        for i in range(0, len(messages), 2):
            prompt = self._render(messages[: i + 1], True)
            full = self._render(messages[: i + 2], False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError(
                    "the chat template does not render turn by turn (the text of the first messages must be a prefix "
                    f"of the text of more messages): {prompt[len(done):][:80]!r} / {full[len(prompt):][:80]!r}"
                )
            out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return out

    def encode(self, samples: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]], dict[str, Any]]:
        """``input_ids`` and ``labels`` (lists, unpadded) of each sample, and the processor's image tensors.

        One processor call for the first pieces (with the images) of the whole batch and one
        tokenizer call for every other piece: the per-call overhead of a processor is larger than
        the work for one short prompt.
        """
        pieces, firsts, images = [], [], []
        for sample in samples:
            image = sample["image"]
            size = tuple(sample.get("image_size") or image.size)  # the full image's, where it was decoded smaller
            messages = to_messages(sample["rows"], sample.get("image_path") or "image", self.model_family, image_size=size)
            pieces.append(self.pieces(messages))
            firsts.append(pieces[-1][0][0])
            images.append(image)
        self._hint(images)
        bos = self.tokenizer.bos_token
        kwargs = {}
        if getattr(getattr(self.processor, "image_processor", None), "do_convert_rgb", None) and all(map(_plain_rgb, images)):
            kwargs["do_convert_rgb"] = False  # already RGB, nothing to composite: the conversion would only copy
        enc = self.processor(
            text=firsts, images=images, return_tensors="pt", padding=True,
            add_special_tokens=not (bos and all(t.startswith(bos) for t in firsts)), **kwargs,
        )
        rest = [text for p in pieces for text, _ in p[1:]]
        rest_ids = iter(self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
        all_ids, all_labels = [], []
        for k, (sample, p) in enumerate(zip(samples, pieces)):
            ids = enc["input_ids"][k][enc["attention_mask"][k].bool()].tolist()
            prompt = len(ids)
            labels = [self.ignore_index] * prompt
            for _, train in p[1:]:
                piece = next(rest_ids)
                ids += piece
                labels += piece if train else [self.ignore_index] * len(piece)
            if self.max_length is not None and len(ids) > self.max_length:
                if prompt > self.max_length:
                    raise ValueError(
                        f"sample {sample.get('id')!r}: the first prompt with its image is {prompt} tokens, "
                        f"more than max_length={self.max_length}"
                    )
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            all_ids.append(ids)
            all_labels.append(labels)
        return all_ids, all_labels, {k: v for k, v in enc.items() if k not in _TEXT_KEYS}

    def _hint(self, images: list) -> None:
        """Say once when images arrive at twice the size this processor reads, or more."""
        need = self.decode_size
        if self._hinted or need is None:
            return
        big = [im.size for im in images if min(im.size[0] // need[0], im.size[1] // need[1]) >= 2]
        if big:
            self._hinted = True
            logger.info("images reach the collator at %dx%d and more; TrainingStream(decode_size=processor) decodes "
                        "them at the scale %s reads (%dx%d at least), which is faster", *big[0],
                        type(self.processor).__name__, *need)

    # -- a batch -----------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        all_ids, all_labels, images = self.encode(samples)
        width = max(len(i) for i in all_ids)
        pad, left = self.tokenizer.pad_token_id, self.tokenizer.padding_side == "left"
        ids = torch.full((len(all_ids), width), pad, dtype=torch.long)
        labels = torch.full((len(all_ids), width), self.ignore_index, dtype=torch.long)
        mask = torch.zeros((len(all_ids), width), dtype=torch.long)
        for k, (i, lab) in enumerate(zip(all_ids, all_labels)):
            cols = slice(width - len(i), width) if left else slice(0, len(i))
            ids[k, cols] = torch.tensor(i)
            labels[k, cols] = torch.tensor(lab)
            mask[k, cols] = 1
        # Image tensors as the processor batches them (LLaVA: one image per row of pixel_values;
        # Qwen-VL: patches concatenated, one image_grid_thw row per image).
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, **images}


__all__ = ["IGNORE_INDEX", "ChatCollator"]
