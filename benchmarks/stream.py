"""Training-stream benchmark: the data side of a training loop against the loader's raw stream.

Prints, in one run, on the demo's rows and images (``spatialforge demo --no-mono``, made in a temp
folder unless ``--demo`` names one, at ``--width`` x ``--height``: 1024 x 768 by default, the
size of the Objects365 / OpenImages photos the rows are made from, not the demo's 320 x 240):

1. raw: ``spatialforge_10m.load_dataset(..., streaming=True)`` (images decoded by ``datasets``)
   through a ``DataLoader`` with ``--workers`` workers: rows/s;
2. train: ``TrainingStream`` (shuffle buffer, one row per sample, ``decode_size=processor``) +
   ``ChatCollator`` (chat messages, chat template, a LLaVA-shaped processor: CLIP crop of each
   ``--image-size`` px, 224 and LLaVA-1.5's 336 by default, patch 14, the real
   ``CLIPImageProcessor`` on every sample) through the same ``DataLoader`` over the same images:
   rows/s, and its ratio to raw (goal >= 0.8);
   (and the stream alone, without the collator, and the training path with images decoded in full
   (``decode_size=None``), to show where the time goes);
3. grouped: the same with ``group_by_image=True`` (all adjacent QA pairs of one image in one
   multi-turn sample: one decode and one image preprocessing for them): QA pairs/s, and its ratio
   to one row per sample (goal >= 2).

    python benchmarks/stream.py --scenes 150                  # ~5 min on 2 cores
    python benchmarks/stream.py --scenes 600 --batch-size 16 --workers 2 --image-size 336
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter


def _setup_env(tmp: str) -> None:
    os.environ.setdefault("SPATIALFORGE_CACHE", os.path.join(tmp, "sfcache"))
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tmp, "hf"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _example():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "train_tiny.py")
    spec = importlib.util.spec_from_file_location("train_tiny", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(batch) -> int:
    if isinstance(batch, list):  # raw rows
        return len(batch)
    if "n_rows" not in batch:  # one row, not batched
        return 1
    return int(batch["n_rows"])


def _image_sizes(image_dirs: dict[str, str]) -> Counter:
    """(width, height) of the image files of ``image_dirs``."""
    from PIL import Image

    files = [os.path.join(d, f) for root in image_dirs.values() for d, _, names in os.walk(root) for f in names]
    return Counter(Image.open(f).size for f in files)


class _Collate:
    """ChatCollator plus the number of QA rows in the batch (samples hold 1 or more)."""

    def __init__(self, processor) -> None:
        from spatialforge.processing.training.collate import ChatCollator

        self.collator = ChatCollator(processor)

    def __call__(self, samples):
        batch = self.collator(samples)
        batch["n_rows"] = sum(len(s["rows"]) for s in samples)
        return batch


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(loader) -> tuple[int, float, float]:
    """Rows, wall seconds and CPU seconds (main process + workers) of one pass over ``loader``."""
    c0, t0 = _cpu(), time.perf_counter()
    n = sum(_rows(b) for b in loader)  # the DataLoader joins its workers when the pass ends
    return n, time.perf_counter() - t0, _cpu() - c0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", help="existing `spatialforge demo --out` folder (default: make one)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes of the demo made when --demo is not given")
    parser.add_argument("--width", type=int, default=1024, help="image width of the demo made when --demo is not given")
    parser.add_argument("--height", type=int, default=768, help="image height of the demo made when --demo is not given")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 336],
                        help="the processor's shortest edge and crop, one training run each (CLIP ViT-B: 224; LLaVA-1.5: 336)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--task", default="all", help="task (config) to stream")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each measurement (best is kept)")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="sf-bench-stream-")
    _setup_env(tmp)
    import torch
    from transformers import AutoProcessor

    import spatialforge_10m
    from spatialforge.processing.training.stream import TrainingStream

    demo = args.demo
    if demo is None:
        demo = os.path.join(tmp, "demo")
        cli = os.path.join(os.path.dirname(sys.executable), "spatialforge")
        done = subprocess.run([cli, "demo", "--scenes", str(args.scenes), "--width", str(args.width), "--height",
                               str(args.height), "--out", demo, "--no-mono", "--no-load"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"spatialforge demo failed: {done.stderr.strip().splitlines()[-1:]}")
    data = os.path.join(demo, "dataset-exact")
    image_dirs = {"objects365": os.path.join(demo, "objects365", "images")}
    ex = _example()
    text = ex.rows_text(data, args.task)
    sizes = _image_sizes(image_dirs)

    def loader(ds, fn):
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=fn)

    def stream(**kw):
        return TrainingStream(data, args.task, image_dirs, seed=0, shuffle_buffer=256, index_dir=os.path.join(tmp, "index"), **kw)

    processors = {size: AutoProcessor.from_pretrained(ex.build_tiny_llava(os.path.join(tmp, f"llava-{size}"), text,
                                                                          image_size=size, patch=14))
                  for size in args.image_size}
    first = processors[args.image_size[0]]
    runs = {
        "raw": (spatialforge_10m.load_dataset(data, args.task, "train", image_dirs=image_dirs, streaming=True), list),
        "stream": (stream(decode_size=first), list),
    }
    for size, processor in processors.items():
        runs[f"train-{size}"] = (stream(decode_size=processor), _Collate(processor))
        runs[f"full-{size}"] = (stream(), _Collate(processor))
    grouped = stream(group_by_image=True, decode_size=first)
    runs["grouped"] = (grouped, _Collate(first))
    # Interleaved repeats, best of each: the load of a shared machine drifts between runs.
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU ms per row, least of the repeats: what the load of others changes least
    rows: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, (ds, fn) in runs.items():
            n, t, c = _timed(loader(ds, fn))
            rows[name], best[name] = n, max(best.get(name, 0.0), n / t)
            cpu[name] = min(cpu.get(name, float("inf")), 1000 * c / n)
    samples = sum(1 for _ in grouped)
    # For reference: the raw stream read in this process (no DataLoader, so no image crosses processes).
    n, t, _ = _timed(runs["raw"][0])
    in_process = n / t

    print(f"stream benchmark: {rows['raw']} rows of {data} (task {args.task}), batch {args.batch_size}, "
          f"{args.workers} DataLoader workers, best of {args.repeats}, torch {torch.__version__}")
    print(f"  images: {sum(sizes.values())} JPEG files of {', '.join(f'{w}x{h} ({n})' for (w, h), n in sizes.most_common())}, "
          f"the same for every line; processor {type(first).__name__} + {type(first.image_processor).__name__}")

    def line(label: str, name: str, unit: str = "rows/s", tail: str = "") -> None:
        print(f"  {label:<62}{best[name]:8.1f} {unit:<11}{cpu[name]:6.2f} CPU ms/row  {tail}")

    def ratio(name: str, to: str = "raw") -> str:
        """Rate ratio, and the same from CPU time (less sensitive to a loaded machine)."""
        return f"{best[name] / best[to]:.2f} (CPU {cpu[to] / cpu[name]:.2f})"

    line("raw loader stream (images decoded by datasets)", "raw",
         tail=f"(read in one process, no DataLoader: {in_process:.1f} rows/s)")
    line(f"TrainingStream alone (shuffle buffer, decode_size {runs['stream'][0].decode_size})", "stream",
         tail=f"ratio to raw {ratio('stream')}")
    for size in processors:
        print(f"  TrainingStream + ChatCollator (template, processor), CLIP {size} px crop, {(size // 14) ** 2} image tokens:")
        line(f"  decode_size=processor {runs[f'train-{size}'][0].decode_size}", f"train-{size}",
             tail=f"ratio to raw {ratio(f'train-{size}')} (goal >= 0.8)")
        line("  images decoded in full (decode_size=None)", f"full-{size}",
             tail=f"ratio to raw {ratio(f'full-{size}')}; decode_size gains {ratio(f'train-{size}', f'full-{size}')}")
    size = args.image_size[0]
    line(f"grouped by image ({rows['grouped'] / max(samples, 1):.2f} QA pairs per sample, {size} px)", "grouped",
         "QA pairs/s", f"ratio to one row per sample {ratio('grouped', f'train-{size}')} (goal >= 2), "
         f"to raw rows/s {ratio('grouped')}")

if __name__ == "__main__":
    main()
