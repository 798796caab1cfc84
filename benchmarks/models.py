"""Overhead of the depth model step over the bare model, and batched vs one image at a time.

A real-size Depth Anything V2 Small architecture (DINOv2-S/14 backbone, DPT head; the
``depth-anything/Depth-Anything-V2-Small-hf`` config) with random weights: the same compute as the
trained model, built offline. Photos of mixed aspect ratios (4:3, 3:4, 3:2, 2:3, 16:9, 9:16 ...,
as real photo collections), preprocessed as Depth Anything does (aspect ratio kept, sides
multiples of 14; ``--input`` is the processor size: 518 is the real model's, the default 392 has
about half its pixels, to keep the default run short on a shared 2-core machine).

Measured batch by batch on the same images, in alternation (the machine may be shared; each pair
sees the same load), and summarized as the MEDIAN of per-batch ratios:

* pipeline: :class:`DepthModelStep.process_batch` on fresh records: image decoding + EXIF
  transpose, the image processor, the forward pass(es), resizing to each image's own grid,
  ``DepthMap`` creation;
* bare:     ``model(pixel_values)`` on exactly the inputs the pipeline gave the model in that batch
  (captured with a hook), so the ratio is the pipeline's own cost, whatever its batching does;
* both with batches of ``--batch-size`` and with one image at a time (the same images, right
  after), also compared with each other: images/s batched vs one at a time;
* the step run as the pipeline runs it (``step.run`` over all photos), with and without
  prefetching (``--prefetch`` batches decoded and preprocessed in threads while one runs),
  alternating ``--rounds`` times: the share of the step's time spent waiting for input
  (``input_wait_seconds / (input_wait_seconds + seconds)``, as ``stats.json`` reports it) and
  images/s, best round of each. On a CPU the model and the prefetch threads share the cores, so
  the share drops more than the wall time; on a GPU the decoding overlaps the forward pass.

    python benchmarks/models.py                    # 24 mixed photos, 392 input, 2 threads (1-2 min on 2 cores)
    python benchmarks/models.py --images 64 --batch-size 8 --input 518 --threads 8
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np

PHOTO_SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (360, 640), (500, 375), (375, 500)]


def build_model(folder: str, input_size: int = 518) -> None:
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
        size={"height": input_size, "width": input_size}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def make_records(folder: str, n: int, seed: int = 0):
    """``n`` JPEG photos cycling through :data:`PHOTO_SIZES` (mixed aspect ratios)."""
    from PIL import Image

    from spatialforge.processing.records import Record

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        path = os.path.join(folder, f"img{i:03d}.jpg")
        # Smooth random content compresses like a photo; noise would inflate JPEG decoding time.
        low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((w, h), Image.BICUBIC).save(path, quality=90)
        records.append(Record("bench", f"img{i:03d}", w, h, image_path=path))
    return records


class Capture:
    """The ``pixel_values`` of every forward call (to replay them bare) and the number of calls."""

    def __init__(self, model) -> None:
        self.inputs: list = []
        model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs) -> None:
        self.inputs.append(kwargs["pixel_values"] if "pixel_values" in kwargs else args[0])


def timed_pipeline(step, capture: Capture, records) -> tuple[float, list]:
    capture.inputs = []
    fresh = [copy.copy(r) for r in records]
    for r in fresh:
        r.meta = {}
    start = time.perf_counter()
    if step.batch_size >= len(fresh):
        out = step.process_batch(fresh)
    else:
        out = [r for one in fresh for r in step.process_batch([one])]
    seconds = time.perf_counter() - start
    assert all(r.depth.values.shape == (r.height, r.width) for r in out)
    return seconds, list(capture.inputs)


def timed_bare(model, inputs) -> float:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for pixel_values in inputs:
            model(pixel_values=pixel_values)
    return time.perf_counter() - start


def timed_run(step, records, prefetch: int) -> tuple[float, float, float]:
    """``(wall seconds, input wait, model seconds)`` of ``step.run`` over fresh copies of ``records``."""
    from spatialforge.processing.base import SEQ_KEY, StepStats

    fresh = [copy.copy(r) for r in records]
    for i, r in enumerate(fresh):
        r.meta = {SEQ_KEY: i}
    step.prefetch = prefetch
    step.stats = StepStats(step.name)
    start = time.perf_counter()
    out = list(step.run(fresh))
    wall = time.perf_counter() - start
    assert len(out) == len(records)
    return wall, step.stats.wait_seconds, step.stats.seconds


def summary(values: list[float]) -> str:
    q = np.percentile(values, [25, 75]) if len(values) > 1 else (values[0], values[0])
    return f"{statistics.median(values):.3f} (IQR {q[0]:.3f}-{q[1]:.3f})"


def quiet_torch(threads: int) -> None:
    """Offline, quiet transformers; ``threads`` torch threads and a fixed seed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="photos (mixed aspect ratios) measured")
    parser.add_argument("--input", type=int, default=392, help="processor size (518 as the real model; 392: about half its pixels)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--prefetch", type=int, default=2, help="batches prepared ahead in the prefetch comparison")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs with and without prefetch")
    args = parser.parse_args()

    quiet_torch(args.threads)
    from spatialforge.processing.perception.depth_models import DepthModelStep

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "depth-anything-v2-small-random")
        build_model(model_dir, args.input)
        records = make_records(tmp, args.images)
        batched = DepthModelStep(model_dir, batch_size=args.batch_size, device="cpu", dtype="fp32")
        single = DepthModelStep(model_dir, batch_size=1, device="cpu", dtype="fp32")
        for step in (batched, single):
            step.setup()  # weights load once per worker: not part of the throughput
            step.process_batch([copy.copy(records[0])])  # warm-up: first calls allocate
        cap_b, cap_1 = Capture(batched.model), Capture(single.model)
        over_b, over_1, speedup, calls = [], [], [], []
        totals = {"pipeline_b": 0.0, "bare_b": 0.0, "pipeline_1": 0.0, "bare_1": 0.0}
        for k, i in enumerate(range(0, len(records), args.batch_size)):
            chunk = records[i : i + args.batch_size]
            # A/B per batch: pipeline, then bare on the very inputs it used; batched and one at a
            # time alternate which goes first.
            order = ("b", "1") if k % 2 == 0 else ("1", "b")
            seconds = {}
            for which in order:
                step, cap = (batched, cap_b) if which == "b" else (single, cap_1)
                # one image at a time: each image's pipeline run right next to its bare replay
                units = [chunk] if which == "b" else [[r] for r in chunk]
                p = f = 0.0
                for unit in units:
                    pu, inputs = timed_pipeline(step, cap, unit)
                    p, f = p + pu, f + timed_bare(step.model, inputs)
                    if which == "b":
                        calls.append(len(inputs))
                seconds[which] = (p, f)
            (pb, fb), (p1, f1) = seconds["b"], seconds["1"]
            over_b.append(pb / fb - 1)
            over_1.append(p1 / f1 - 1)
            speedup.append(p1 / pb)
            for key, v in (("pipeline_b", pb), ("bare_b", fb), ("pipeline_1", p1), ("bare_1", f1)):
                totals[key] += v
        runs = {0: None, args.prefetch: None}  # prefetch -> best (wall, wait, model)
        for k in range(args.rounds):
            for prefetch in ((0, args.prefetch) if k % 2 == 0 else (args.prefetch, 0)):
                result = timed_run(batched, records, prefetch)
                if runs[prefetch] is None or result[0] < runs[prefetch][0]:
                    runs[prefetch] = result
    n = len(records)
    print(f"Depth Anything V2 Small (random weights), {n} photos of mixed aspect ratios "
          f"({', '.join(f'{w}x{h}' for w, h in PHOTO_SIZES[: min(n, len(PHOTO_SIZES))])}), processor size "
          f"{args.input}, {args.threads} torch threads, CPU, {len(over_b)} batches of {args.batch_size}")
    print(f"forward passes per batch of {args.batch_size} (pipeline): {calls}")
    print(f"{'path':<10} {'batch':>5} {'images/s':>9} {'s/image':>8}")
    for key, label, bs in (("pipeline_b", "pipeline", args.batch_size), ("bare_b", "bare", args.batch_size),
                           ("pipeline_1", "pipeline", 1), ("bare_1", "bare", 1)):
        print(f"{label:<10} {bs:>5} {n / totals[key]:>9.2f} {totals[key] / n:>8.3f}")
    print(f"pipeline overhead over the bare forward on the same inputs, median of per-batch ratios (goal <= +10%):")
    print(f"  batch {args.batch_size}: {100 * statistics.median(over_b):+.1f}%  (per batch: "
          f"{', '.join(f'{100 * v:+.0f}%' for v in over_b)})")
    print(f"  batch 1: {100 * statistics.median(over_1):+.1f}%  (per batch: {', '.join(f'{100 * v:+.0f}%' for v in over_1)})")
    print(f"pipeline batch {args.batch_size} vs one at a time, images/s ratio, median per batch: {summary(speedup)}")
    print(f"input-wait share of the step run over all {n} photos (wait / (wait + model)), batch {args.batch_size}, "
          f"best of {args.rounds}:")
    for prefetch, (wall, wait, model) in sorted(runs.items()):
        label = "no prefetch" if prefetch == 0 else f"prefetch {prefetch}"
        print(f"  {label:<12} {100 * wait / (wait + model):5.1f}% waiting  ({wait:.2f} s of {wait + model:.2f} s), "
              f"{n / wall:.2f} images/s")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
