"""Train a tiny LLaVA on SpatialForge rows: the stream, the collate function and a real processor.

Everything is built offline from configs (no download): a byte-level BPE tokenizer trained on the
rows' text, a ``CLIPImageProcessor``, a LLaVA chat template, a 2-layer CLIP vision tower and a
2-layer Llama. They are saved and loaded back with ``from_pretrained``, the path a real checkpoint
takes (swap ``--model`` for e.g. ``llava-hf/llava-1.5-7b-hf`` on a GPU).

    spatialforge demo --scenes 40 --out demo-out --no-mono
    python examples/train_tiny.py --data demo-out/dataset-exact \\
        --image-dir objects365=demo-out/objects365/images --steps 200

prints the loss every 20 steps and, at the end, the mean loss of the first and last 20 steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time

logger = logging.getLogger("train_tiny")

IMAGE_TOKEN = "<image>"
# LLaVA-1.5's conversation shape: "USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ..."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    " {% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(folder: str, corpus: list[str], image_size: int = 32, patch: int = 8, vocab_size: int = 1000,
                     seed: int = 0) -> str:
    """Save a tiny LLaVA (model + processor) under ``folder``; its tokenizer is trained on ``corpus``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<pad>", IMAGE_TOKEN], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=image_size, patch_size=patch, projection_dim=32),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def rows_text(annotations: str, task: str = "all") -> list[str]:
    """Questions and answers of the annotation rows (the tokenizer's training text)."""
    from spatialforge.builders.annotations import iter_batches, locate_shards

    shards = locate_shards(annotations, task)
    out: list[str] = []
    for path in shards.files:
        for table in iter_batches(path, shards.format, ["question", "answer"], tasks=shards.task_filter):
            out += table.column("question").to_pylist() + table.column("answer").to_pylist()
    return out


def train(data: str, image_dirs: dict[str, str], out: str, steps: int = 200, batch_size: int = 4, lr: float = 2e-3,
          seed: int = 0, task: str = "all", num_workers: int = 0, log_every: int = 20, threads: int = 1) -> list[float]:
    """Train ``steps`` optimizer steps; returns the loss of every step.

    ``threads``: torch intra-op threads; the matrices of a tiny model are too small to gain from more.
    """
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from spatialforge.processing.training.collate import ChatCollator
    from spatialforge.processing.training.stream import TrainingStream

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model_dir = os.path.join(out, "tiny-llava")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        build_tiny_llava(model_dir, rows_text(data, task), seed=seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    model.train()
    collate = ChatCollator(processor, model_family="qwen3-vl", max_length=256)
    # decode_size=processor: each image is decoded at the smallest scale its processor still downscales from
    stream = TrainingStream(data, task, image_dirs, seed=seed, shuffle_buffer=256, group_by_image=True, max_turns=2,
                            index_dir=os.path.join(out, "index"), decode_size=processor)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses: list[float] = []
    epoch, t0 = 0, time.perf_counter()
    while len(losses) < steps:
        stream.set_epoch(epoch)
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if len(losses) % log_every == 0:
                logger.info("step %d  loss %.3f  (%.1fs)", len(losses), sum(losses[-log_every:]) / log_every, time.perf_counter() - t0)
            if len(losses) >= steps:
                break
        epoch += 1
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder (e.g. demo-out/dataset-exact)")
    parser.add_argument("--image-dir", action="append", default=[], metavar="SOURCE=DIR", help="image folder of a source (repeatable)")
    parser.add_argument("--out", default="train-tiny-out", help="folder for the tiny model and the image index")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="samples (images with their QA turns) per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, then cosine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the tokenizer corpus order and the stream")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image_dirs = dict(item.split("=", 1) for item in args.image_dir)
    losses = train(args.data, image_dirs, args.out, args.steps, args.batch_size, args.lr, args.seed, num_workers=args.workers)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(json.dumps({"steps": len(losses), "first20": round(first, 4), "last20": round(last, 4), "ratio": round(last / first, 4)}))


if __name__ == "__main__":
    main()
