"""Throughput of relations + verification + writing on ONE core, beside a bare baseline.

Two benchmarks, each printing images/s of both paths and their ratio:

* ``--end-to-end`` (the path users run): ``spatialforge generate``'s :func:`generate` on an
  Objects365 layout of realistic scenes (people with keypoints, 4-10 objects, 640x480 exact depth
  as ``.npy``): reader (JSON parsing, image headers), depth files, facing, the six tasks with
  verification, Parquet writing, rebalancing and the card; against a bare pass over the same
  files: parse the annotation JSON, load each depth map, a median per box. Goal: ratio >= 0.5.
  Both paths run in this process on one core. The end-to-end ratio includes what a run pays once
  (converting the annotations, the run folder, the blind baseline and the card); the same pair is
  also timed on ``--marginal-factor`` times as many images, and the difference between the two
  sizes gives each path's marginal rate (cost per added image) and the generate path's fixed cost,
  printed beside it, with where generate's time goes per image (its steps' timings in the stats).
  Each is also given on this process's CPU time, which other load on a shared machine disturbs less.
* default (the inner loop): 518x518 depth maps with 10 boxes each, already parsed:

  * baseline: load depth, take the median depth of every box (what a pipeline without relations,
    verification or writing would do at least);
  * generate: load depth, facing from keypoints, the task step on near_far / left_right /
    perspective (candidates, verification checks, templates, rows), Parquet writing of the rows,
    run by the executor's shard loop as ``spatialforge generate`` runs it (``run_shard``: its
    garbage-collector tuning, :func:`spatialforge.processing.base.steady_gc`, included).

  Prints where the generate path spends its time per image. Goal: >= 1,000 images/s per core.

The paths run alternately ``--rounds`` times and the best round of each counts (a shared machine
only ever slows a round down).

    python benchmarks/generate.py --end-to-end     # 3 rounds of 300 (and of 1,200) images of 640x480
    python benchmarks/generate.py                  # 3 rounds of 2,000 images (well under a minute)
    python benchmarks/generate.py --images 20000   # steadier numbers
    python benchmarks/generate.py --profile        # cProfile of the generate path, top functions
"""

from __future__ import annotations

import os

# One core: keep numpy's and Arrow's thread pools to one thread before they load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ARROW_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from spatialforge.processing.base import Step  # noqa: E402
from spatialforge.processing.records import DepthMap, Record  # noqa: E402
from spatialforge.processing.synth.scenes import SceneConfig, make_scene, scene_record  # noqa: E402

SIZE = 518
OBJECTS = 10
RELATIONS = ("near_far", "left_right", "perspective")


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    try:
        import pyarrow as pa

        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
    except ImportError:
        pass


def build_inputs(folder: Path, distinct: int, seed: int) -> list[tuple[Record, Path]]:
    """``distinct`` synthetic scenes with exactly ``OBJECTS`` boxes each and their depth files."""
    config = SceneConfig(objects=(14, 16), people=(1, 3), min_visible_fraction=0.3, min_visible_pixels=100)
    out, index = [], 0
    while len(out) < distinct:
        scene = make_scene(seed, index, SIZE, SIZE, config)
        index += 1
        record = scene_record(scene)
        if len(record.objects) < OBJECTS:
            continue
        record.objects = record.objects[np.arange(OBJECTS)]
        path = folder / f"{scene.image_id}.npy"
        np.save(path, scene.depth)
        out.append((record, path))
    return out


def _records(inputs: list[tuple[Record, Path]], n: int):
    """``n`` fresh records cycling over the inputs (distinct image ids), depth read from file."""
    for i in range(n):
        proto, path = inputs[i % len(inputs)]
        values = np.load(path)
        yield Record(
            source=proto.source,
            image_id=f"{proto.image_id}-{i:07d}",
            width=proto.width,
            height=proto.height,
            objects=proto.objects,
            depth=DepthMap(values, kind="depth", valid=values > 0, source="file:depth", metric=True),
        )


def run_load_only(inputs, n: int) -> float:
    start = time.perf_counter()
    for _ in _records(inputs, n):
        pass
    return time.perf_counter() - start


def run_baseline(inputs, n: int) -> float:
    start = time.perf_counter()
    total = 0.0
    for record in _records(inputs, n):
        d = record.depth.values
        for x1, y1, x2, y2 in record.objects.xyxy.astype(int):
            total += float(np.median(d[y1:y2, x1:x2]))
    return time.perf_counter() - start


class _FileRecords(Step):
    """First step of the generate path: the records of :func:`_records` (as a reader would give them)."""

    name = "load"

    def __init__(self, inputs: list[tuple[Record, Path]], n: int) -> None:
        super().__init__()
        self.inputs, self.n = inputs, n

    def run(self, records, rank: int = 0, world_size: int = 1):
        yield from _records(self.inputs, self.n)


def run_generate(inputs, n: int, out_dir: Path) -> tuple[float, int, dict[str, float]]:
    """The shard loop of ``spatialforge generate`` (:func:`~spatialforge.processing.executors.local.run_shard`)."""
    from spatialforge.processing.executors.local import run_shard
    from spatialforge.processing.perception.facing import FacingFromKeypoints
    from spatialforge.processing.tasks.step import TaskStep
    from spatialforge.processing.tasks.verify import VerifyConfig
    from spatialforge.processing.output.parquet import ParquetWriter

    steps = [_FileRecords(inputs, n), FacingFromKeypoints(), TaskStep(tasks=RELATIONS, seed=0, config=VerifyConfig()),
             ParquetWriter(out_dir)]
    start = time.perf_counter()
    stats = run_shard(steps, out_dir, shard=0, num_shards=1)
    seconds = time.perf_counter() - start
    rows = sum(stats["rows_per_task"].values())
    per_step = {step.name: step.stats.seconds for step in steps[1:]}
    per_step["load"] = seconds - sum(per_step.values())  # np.load + Record, the generators' glue, the shard marker
    return seconds, rows, per_step


def render_scenes(distinct: int, seed: int) -> list:
    """``distinct`` rendered 640x480 scenes (4-10 objects, 1-3 people with keypoints)."""
    config = SceneConfig(objects=(4, 10), people=(1, 3))
    return [make_scene(seed, i, 640, 480, config) for i in range(distinct)]


def build_layout(folder: Path, images: int, rendered: list):
    """An Objects365 layout of ``images`` scenes cycling over the ``rendered`` ones."""
    import dataclasses

    from spatialforge.processing.synth.scenes import write_objects365_layout

    copies = [dataclasses.replace(rendered[i % len(rendered)], index=i) for i in range(images)]
    return write_objects365_layout(copies, folder)


def run_bare(layout) -> float:
    """Parse the annotations, load each depth map, a median per box."""
    import json

    start = time.perf_counter()
    coco = json.loads(Path(layout.annotations).read_text())
    boxes: dict[int, list] = {}
    for ann in coco["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    total = 0.0
    for image in coco["images"]:
        d = np.load(layout.depth / f"{Path(image['file_name']).stem}.npy")
        for x, y, w, h in boxes.get(image["id"], ()):
            total += float(np.median(d[int(y):int(y + h) + 1, int(x):int(x + w) + 1]))
    return time.perf_counter() - start


def run_end_to_end(layout, out: Path) -> tuple[float, dict]:
    """:func:`spatialforge.processing.pipeline.generate` as ``spatialforge generate`` calls it."""
    from spatialforge.processing.pipeline import GenerateConfig, generate

    cfg = GenerateConfig(source="objects365", out=str(out), annotations=str(layout.annotations), images=str(layout.images),
                         depth_dir=str(layout.depth), depth_measured=True,  # rendered: exact
                         num_shards=1, workers=1, overwrite=True, progress=False)
    start = time.perf_counter()
    stats = generate(cfg)
    return time.perf_counter() - start, stats


def _best_pair(layout, out: Path, rounds: int) -> tuple[float, float, dict, float, float]:
    """Best bare and best generate seconds over ``rounds`` alternate rounds, with that generate run's
    stats, and the best CPU seconds of each (this process: steadier than wall time on a shared machine)."""
    bare = gen = bare_cpu = gen_cpu = float("inf")
    best_stats: dict = {}
    for r in range(max(1, rounds)):
        cpu = time.process_time()
        bare = min(bare, run_bare(layout))
        bare_cpu = min(bare_cpu, time.process_time() - cpu)
        cpu = time.process_time()
        seconds, stats = run_end_to_end(layout, out / f"out{r}")
        gen_cpu = min(gen_cpu, time.process_time() - cpu)
        if seconds < gen:
            gen, best_stats = seconds, stats
    return bare, gen, best_stats, bare_cpu, gen_cpu


def main_end_to_end(args) -> None:
    n, rounds = args.images, max(1, args.rounds)
    big = n * args.marginal_factor if args.marginal_factor > 1 else 0
    with tempfile.TemporaryDirectory(prefix="spatialforge-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        distinct = min(args.distinct, n)
        rendered = render_scenes(distinct, args.seed)
        layout = build_layout(tmp / "o365", n, rendered)
        large = build_layout(tmp / "o365-large", big, rendered) if big else None
        print(f"inputs: {n} images of 640x480 ({distinct} distinct scenes, 4-10 objects, people with "
              f"keypoints), exact depth .npy{f', and a layout of {big} images' if big else ''} "
              f"({time.perf_counter() - t0:.1f}s to render and write); one core, one worker")
        run_end_to_end(layout, tmp / "warmup")  # imports, caches; the OS has the files cached
        bare, gen, stats, bare_cpu, gen_cpu = _best_pair(layout, tmp / "small", rounds)
        rows = stats["rows_total"]
        print(f"bare pass (parse JSON, load depth, box medians):  {n / bare:8.0f} images/s")
        print(f"spatialforge generate (end to end, card included): {n / gen:8.0f} images/s  ({rows / n:.2f} rows/image)")
        print(f"ratio generate / bare: {bare / gen:.3f}   goal: >= 0.5 (best of {rounds} rounds of {n} images)")
        print(f"  on CPU time (this process): bare {bare_cpu * 1e3:.0f} ms, generate {gen_cpu * 1e3:.0f} ms, "
              f"ratio {bare_cpu / gen_cpu:.3f}")
        steps = ", ".join(f"{s['name']} {s['seconds'] / n * 1e6:.0f} us" for s in stats["steps"])
        rest = gen - stats["seconds"]
        print(f"  generate per image: {steps}; outside the shard loop (run folder, annotation table, input file "
              f"hashes, rebalancing, blind baseline, card): {rest * 1e3:.0f} ms in all ({rest / n * 1e6:.0f} us/image)")
        if big:
            bare_big, gen_big, _, bare_big_cpu, gen_big_cpu = _best_pair(large, tmp / "large", rounds)
            added = big - n
            m_bare, m_gen = (bare_big - bare) / added, (gen_big - gen) / added
            fixed = gen - n * m_gen
            print(f"marginal (the {added} images {big} have more than {n}; best of {rounds} rounds each):")
            print(f"  bare pass {1 / m_bare:8.0f} images/s, generate {1 / m_gen:8.0f} images/s, ratio "
                  f"{m_bare / m_gen:.3f};  generate's fixed cost {fixed * 1e3:.0f} ms per run")
            c_bare, c_gen = (bare_big_cpu - bare_cpu) / added, (gen_big_cpu - gen_cpu) / added
            print(f"  on CPU time: bare {c_bare * 1e6:.0f} us, generate {c_gen * 1e6:.0f} us per added image, ratio "
                  f"{c_bare / c_gen:.3f};  generate's fixed cost {(gen_cpu - n * c_gen) * 1e3:.0f} ms per run")
            print(f"  end to end on {big} images: bare {big / bare_big:.0f}, generate {big / gen_big:.0f} images/s, "
                  f"ratio {bare_big / gen_big:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--end-to-end", action="store_true", help="time `spatialforge generate` end to end on a 640x480 layout")
    parser.add_argument("--images", type=int, default=2000, help="images per path")
    parser.add_argument("--distinct", type=int, default=48, help="distinct scenes the images cycle over")
    parser.add_argument("--rounds", type=int, default=3, help="alternate rounds of every path; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print the cProfile top functions of the generate path")
    parser.add_argument("--marginal-factor", type=int, default=4,
                        help="--end-to-end: also time a layout this many times larger, for marginal rates (<= 1: off)")
    args = parser.parse_args()
    _pin_one_core()
    if args.end_to_end:
        if args.images == parser.get_default("images"):
            args.images = 300
        return main_end_to_end(args)
    with tempfile.TemporaryDirectory(prefix="spatialforge-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "depth").mkdir()
        t0 = time.perf_counter()
        inputs = build_inputs(tmp / "depth", args.distinct, args.seed)
        print(f"inputs: {len(inputs)} distinct {SIZE}x{SIZE} scenes, {OBJECTS} boxes each ({time.perf_counter() - t0:.1f}s to render)")
        run_generate(inputs, min(50, args.images), tmp / "warmup")  # imports, template caches
        n = args.images
        load = base = gen = float("inf")
        for r in range(max(1, args.rounds)):
            load = min(load, run_load_only(inputs, n))
            base = min(base, run_baseline(inputs, n))
            if args.profile and r == 0:
                prof = cProfile.Profile()
                prof.enable()
            seconds, rows, per_step = run_generate(inputs, n, tmp / f"out{r}")
            if args.profile and r == 0:
                prof.disable()
            elif seconds < gen:
                gen, steps = seconds, per_step
        if args.profile and args.rounds <= 1:
            gen, steps = seconds, per_step
        print(f"load only (np.load of the depth map + Record):          {n / load:9.0f} images/s  (ceiling of both paths)")
        print(f"baseline  (load depth + box medians):                   {n / base:9.0f} images/s")
        print(f"generate  (load + facing + relations/verify + parquet): {n / gen:9.0f} images/s  ({rows / n:.2f} rows/image)")
        print("          per image: " + ", ".join(f"{name} {s / n * 1e6:.0f} us" for name, s in steps.items()))
        print(f"ratio generate / baseline: {base / gen:.3f}   goal: >= 1000 images/s per core for generate "
              f"(best of {max(1, args.rounds)} rounds of {n} images)")
        if args.profile:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            print(buf.getvalue())


if __name__ == "__main__":
    main()
