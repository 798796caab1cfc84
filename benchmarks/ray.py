"""Per-image overhead of the Ray Data executor against the local one, on this machine.

Both run ``generate`` (the public API behind ``spatialforge generate``) on the same synthetic
Objects365-style scenes (JPEGs, COCO JSON, metric depth files): reader -> depth from files ->
facing -> six tasks with verification -> Parquet. The local executor runs in this process
(``--workers 1``); the Ray executor on a local Ray instance started once (``ray.init(num_cpus=...)``,
not timed), with one actor per stage. ``--model`` adds a model step instead of the depth files: a
real-size Depth Anything V2 Small architecture with random weights (see ``benchmarks/models.py``),
so the Ray run has a decoding / preprocessing stage and a model actor stage.

The two alternate ``--rounds`` times; the best round of each counts (a shared machine only ever
slows a round down). Printed: seconds, images/s, seconds per image, the Ray executor's per-image
overhead (its seconds per image minus the local one's) and the ratio; the Parquet files of both
are checked to be the same bytes. On one small machine Ray only adds overhead (actor start-up,
serialization through the object store); its use is the cluster. Images per run amortize the
actors' start-up: ``--images`` shows how it shrinks.

    python benchmarks/ray.py                       # 400 scenes, 3 rounds (about a minute on 2 cores)
    python benchmarks/ray.py --images 2000 --rounds 2
    python benchmarks/ray.py --model --images 48   # with a depth model step (random weights, CPU)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named ray.py: without its folder on sys.path, `import ray` is Ray.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _benchmark(name: str):
    """A sibling benchmark module, by path (its folder is off sys.path, see above)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parquet_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="synthetic scenes per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating local / Ray runs; the best of each counts")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--model", action="store_true", help="a depth model step (random-weight Depth Anything V2 Small) instead of depth files")
    parser.add_argument("--input", type=int, default=252, help="--model: processor size (518 as the real model)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from spatialforge.processing.pipeline import GenerateConfig, generate
    from spatialforge.processing.synth.scenes import make_scenes, write_objects365_layout

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layout = write_objects365_layout(make_scenes(args.images, seed=0, width=320, height=240), tmp / "objects365")
        common = dict(source="objects365", annotations=str(layout.annotations), images=str(layout.images),
                      num_shards=args.num_shards, batch_size=args.batch_size, progress=False, overwrite=True)
        if args.model:
            models = _benchmark("models")
            models.quiet_torch(1)
            model_dir = tmp / "depth-anything-v2-small-random"
            models.build_model(str(model_dir), args.input)
            common.update(depth_model=str(model_dir), device="cpu", dtype="fp32")
        else:
            common.update(depth_dir=str(layout.depth))
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=512 * 2**20, log_to_driver=False,
                 logging_level="ERROR")
        ray_start = time.perf_counter() - started
        best = {"local": float("inf"), "ray": float("inf")}
        rows = {}
        try:
            for k in range(args.rounds):
                for which in (("local", "ray") if k % 2 == 0 else ("ray", "local")):
                    out = tmp / which
                    cfg = GenerateConfig(out=str(out), executor=which, **common)
                    start = time.perf_counter()
                    stats = generate(cfg)
                    best[which] = min(best[which], time.perf_counter() - start)
                    rows[which] = (stats["rows_total"], parquet_bytes(out))
            same = rows["local"][1] == rows["ray"][1]
        finally:
            ray.shutdown()
            shutil.rmtree(tmp / "local", ignore_errors=True)
    n = args.images
    what = f"depth model step (Depth Anything V2 Small, random weights, input {args.input}, CPU)" if args.model else "depth files"
    print(f"{n} synthetic scenes 320x240, {what}, {args.num_shards} shards, batch {args.batch_size}; "
          f"Ray: local instance of {args.cpus} CPUs (started in {ray_start:.1f} s, not counted); best of {args.rounds} rounds")
    print(f"{'executor':<9} {'seconds':>8} {'images/s':>9} {'ms/image':>9}")
    for which in ("local", "ray"):
        print(f"{which:<9} {best[which]:>8.2f} {n / best[which]:>9.1f} {1000 * best[which] / n:>9.2f}")
    print(f"Ray executor overhead per image: {1000 * (best['ray'] - best['local']) / n:+.2f} ms; "
          f"time ratio ray / local: {best['ray'] / best['local']:.2f}x")
    print(f"rows: {rows['local'][0]} (local), {rows['ray'][0]} (ray); same Parquet bytes: {same}")
    if not same:
        raise SystemExit("the two executors wrote different Parquet files")


if __name__ == "__main__":
    main()
