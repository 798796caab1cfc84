"""Open-vocabulary detection over the 365 Objects365 labels: text queries encoded once vs every batch.

A real-size OWLv2 base patch16 architecture (``google/owlv2-base-patch16-ensemble``'s config: ViT-B/16
image tower, 12-layer 512-wide text tower, 16-token queries) with random weights: the same compute as
the trained model, built offline, with a CLIP BPE tokenizer over the Objects365 prompt words.
``--image-size`` is the model's input side: 960 is the real model's (3600 patches); the default 480
(900 patches, a quarter of the image-side cost) keeps the default run short on a shared 2-core
machine. The text side does not depend on it (365 queries x 16 tokens per image for the plain
forward), so the speed-up at 960 is smaller than at 480: run ``--image-size 960`` for the real ratio.

:class:`DetectionStep.process_batch` on fresh records, batch by batch on the same images, A/B in
alternation (the machine may be shared; each pair sees the same load; which goes first alternates),
summarized as the MEDIAN of per-batch ratios:

* cached: ``cache_text_queries=True`` (default): the 365 queries go through the text tower once
  (timed separately, with the one-time check against the forward), then per batch only the image
  tower and the class / box heads;
* plain:  ``cache_text_queries=False``: ``model(input_ids, pixel_values)`` on every batch, the text
  tower on 365 queries per image.

    python benchmarks/detection.py                           # 8 photos, 480 input, batch 2, 2 threads (~2 min)
    python benchmarks/detection.py --image-size 960 --images 4 --batch-size 2
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np

from models import PHOTO_SIZES, make_records, quiet_torch, summary


def write_tokenizer(folder: str, prompts: list[str]):
    """A CLIP BPE tokenizer in which each word of ``prompts`` is one token (pad id 0, as OWL expects)."""
    from transformers import CLIPTokenizer

    words = sorted({w for p in prompts for w in p.lower().split()})
    vocab: dict[str, int] = {"!": 0}
    merges: list[tuple[str, str]] = []
    for ch in sorted({c for w in words for c in w}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    seen: set[tuple[str, str]] = set()
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: ((p e) r) ... -> one token per word
            pair = (pieces[0], pieces[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            pieces = [pair[0] + pair[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=16)
    tok.save_pretrained(folder)
    return tok


def build_model(folder: str, prompts: list[str], image_size: int = 960) -> None:
    """OWLv2 base patch16 (architecture only, random weights) + its processor at ``image_size``."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tok = write_tokenizer(folder, prompts)
    config = Owlv2Config(
        text_config=dict(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
            max_position_embeddings=16, pad_token_id=0, bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        ),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=image_size, patch_size=16),
        projection_dim=512,
    )
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    Owlv2Processor(Owlv2ImageProcessor(size={"height": image_size, "width": image_size}), tok).save_pretrained(folder)


def timed(step, records) -> float:
    fresh = [copy.copy(r) for r in records]
    for r in fresh:
        r.meta = {}
    start = time.perf_counter()
    out = step.process_batch(fresh)
    seconds = time.perf_counter() - start
    assert all(r is not None and r.box_source.startswith("model:") for r in out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="photos (mixed aspect ratios) measured")
    parser.add_argument("--image-size", type=int, default=480, help="model input side (960 as the real model)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    quiet_torch(args.threads)
    from spatialforge.processing.perception.detection import DetectionStep
    from spatialforge.processing.perception.objects365_labels import OBJECTS365_PROMPTS

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "owlv2-base-patch16-random")
        build_model(model_dir, list(OBJECTS365_PROMPTS), args.image_size)
        records = make_records(tmp, args.images + 1)
        warm, records = records[0], records[1:]
        common = dict(threshold=0.1, batch_size=args.batch_size, device="cpu", dtype="fp32")
        steps = {"cached": DetectionStep(model_dir, **common), "plain": DetectionStep(model_dir, cache_text_queries=False, **common)}
        once = {}
        for name, step in steps.items():
            step.setup()  # weights load once per worker: not part of the throughput
            once[name] = timed(step, [warm])  # first call: allocations; cached: encodes the 365 queries + check
        assert steps["cached"]._owl_queries[1] is not None and steps["plain"]._owl_queries[1] is None
        totals = {"cached": 0.0, "plain": 0.0}
        ratios = []
        for k, i in enumerate(range(0, len(records), args.batch_size)):
            chunk = records[i : i + args.batch_size]
            seconds = {}
            for name in (("cached", "plain") if k % 2 == 0 else ("plain", "cached")):
                seconds[name] = timed(steps[name], chunk)
                totals[name] += seconds[name]
            ratios.append(seconds["plain"] / seconds["cached"])
    n = len(records)
    print(f"OWLv2 base patch16 (random weights), {len(OBJECTS365_PROMPTS)} Objects365 label queries, input "
          f"{args.image_size}x{args.image_size} ({(args.image_size // 16) ** 2} patches), {n} photos of mixed aspect "
          f"ratios ({', '.join(f'{w}x{h}' for w, h in PHOTO_SIZES[: min(n, len(PHOTO_SIZES))])}), {args.threads} torch "
          f"threads, CPU, {len(ratios)} batches of {args.batch_size}")
    print(f"{'path':<8} {'images/s':>9} {'s/image':>8}")
    for name in ("cached", "plain"):
        print(f"{name:<8} {n / totals[name]:>9.3f} {totals[name] / n:>8.2f}")
    print(f"cached vs plain, images/s ratio, median of per-batch ratios: {summary(ratios)}  "
          f"(per batch: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"first batch of 1 image (cached: + encoding the 365 queries once and the check): "
          f"cached {once['cached']:.1f} s, plain {once['plain']:.1f} s")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
