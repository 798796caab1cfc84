"""Overhead of the depth model step over the bare model, and batched vs one image at a time.

A real-size Depth Anything V2 Small architecture (DINOv2-S/14 backbone, DPT head; the
``depth-anything/Depth-Anything-V2-Small-hf`` config) with random weights: the same compute as the
trained model, built offline. Side by side on the same images at the same 518 px input:

* bare:     ``model(pixel_values)`` on already preprocessed batches (forward pass only);
* pipeline: :class:`DepthModelStep` over records: image decoding + EXIF transpose, the image
  processor, the forward pass, post-processing to each image's own grid, ``DepthMap`` creation;
* both with batches of ``--batch-size`` and with one image at a time, measured batch by batch in
  alternating order (the machine may be shared; pairs see the same load).

Prints images/s and the pipeline's overhead over the bare forward (goal: <= 10%), measured two
ways: paired wall-clock runs (sensitive to other load on the machine) and, within the pipeline
runs, the time spent outside ``model.forward`` (hooks; insensitive to load that slows both alike).

    python benchmarks/models.py                    # 8 images, 2 threads (about 1-2 minutes on 2 idle cores)
    python benchmarks/models.py --images 64 --batch-size 8 --threads 8
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import numpy as np


def build_model(folder: str) -> None:
    """Depth Anything V2 Small (architecture only, random weights) + its image processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14,
        image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False, layerscale_value=1.0,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=384, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
        depth_estimation_type="relative",
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def make_records(folder: str, n: int, size: int, seed: int = 0):
    from PIL import Image

    from spatialforge.processing.records import Record

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        path = os.path.join(folder, f"img{i:03d}.jpg")
        # Smooth random content compresses like a photo; noise would inflate JPEG decoding time.
        low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((size, size), Image.BICUBIC).save(path, quality=90)
        records.append(Record("bench", f"img{i:03d}", size, size, image_path=path))
    return records


class ForwardTimer:
    """Time spent inside ``model.forward`` (hooks), to split pipeline time into model and the rest."""

    def __init__(self, model) -> None:
        self.seconds = 0.0
        self._start = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.seconds += time.perf_counter() - self._start


def paired_seconds(step, processor, records, batch_size: int) -> tuple[float, float]:
    """(pipeline, bare) seconds over ``records``, measured batch by batch, alternating which runs
    first, so that load from other processes hits both paths alike.

    The bare path uses the step's own model on batches preprocessed outside the timed region.
    """
    import copy

    import torch

    pipeline = bare = 0.0
    for k, i in enumerate(range(0, len(records), batch_size)):
        chunk = records[i : i + batch_size]
        fresh = [copy.copy(r) for r in chunk]
        pixel_values = processor(images=[r.load_image() for r in chunk], return_tensors="pt")["pixel_values"]

        def run_pipeline() -> float:
            start = time.perf_counter()
            out = step.process_batch(fresh)
            seconds = time.perf_counter() - start
            assert all(r.depth.values.shape == (r.height, r.width) for r in out)
            return seconds

        def run_bare() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                step.model(pixel_values=pixel_values)
            return time.perf_counter() - start

        if k % 2 == 0:
            pipeline += run_pipeline()
            bare += run_bare()
        else:
            bare += run_bare()
            pipeline += run_pipeline()
    return pipeline, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per measurement")
    parser.add_argument("--size", type=int, default=512, help="side of the square test images (input is 518)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from spatialforge.processing.depth_models import DepthModelStep

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "depth-anything-v2-small-random")
        build_model(model_dir)
        records = make_records(tmp, args.images, args.size)
        processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
        results: dict = {}
        inside: dict = {}
        for bs in (args.batch_size, 1):
            step = DepthModelStep(model_dir, batch_size=bs, device="cpu", dtype="fp32")
            step.setup()  # weights load once per worker: not part of the throughput
            step.process_batch([copy.copy(records[0])])  # warm-up: first calls allocate
            timer = ForwardTimer(step.model)
            results[("pipeline", bs)], results[("bare", bs)] = paired_seconds(step, processor, records, bs)
            # The forward time inside the pipeline runs is total forward time minus the bare runs'.
            inside[bs] = timer.seconds - results[("bare", bs)]
        n = len(records)

    print(f"Depth Anything V2 Small (random weights), {n} images {args.size}x{args.size} -> 518 input, "
          f"{args.threads} torch threads, CPU")
    print(f"{'path':<10} {'batch':>5} {'images/s':>9} {'s/image':>8}")
    for (path, bs), sec in sorted(results.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        print(f"{path:<10} {bs:>5} {n / sec:>9.2f} {sec / n:>8.3f}")
    for bs in (args.batch_size, 1):
        overhead = results[("pipeline", bs)] / results[("bare", bs)] - 1
        own = (results[("pipeline", bs)] - inside[bs]) / inside[bs]
        print(f"batch {bs}: pipeline vs bare forward (paired runs): {overhead:+.1%}; "
              f"within the pipeline runs, time outside the forward pass: {own:+.1%} of it (goal <= +10%)")
    speedup = results[("pipeline", 1)] / results[("pipeline", args.batch_size)]
    print(f"pipeline batch {args.batch_size} vs batch 1: {speedup:.2f}x images/s")


if __name__ == "__main__":
    main()
