"""Reader benchmark: one worker's shard of a big COCO JSON, full parse per worker vs the annotation table.

Generates an Objects365-like COCO JSON (``--images`` images, ``--boxes`` boxes) in a temp folder and
measures, each in a fresh process (time, peak RSS, and peak RSS above the process's RSS after its
imports), the work of ONE worker that reads shard ``--shard`` of ``--shards``:

* ``json.load``: the bare stdlib parse of the whole file, which every worker did first before the
  annotation table existed (a lower bound of that cost);
* ``before``: a reader without a cache: the whole file parsed in the worker, then its shard read
  (``--before-module old_readers.py`` runs another readers.py for this row, e.g. an older version:
  ``git show <commit>:processing/readers.py > old_readers.py``);
* ``convert``: the one-time conversion into the cached Parquet table (done once per run, before the
  workers start);
* ``after``: a worker reading its shard from the cached table.

Records are built for real (image headers are read): the shard's images are hard links to one
small JPEG. Prints the rows side by side with the ratios before/after.

    python benchmarks/readers.py                                   # 50k images, 500k boxes, < 1 min
    python benchmarks/readers.py --images 400000 --boxes 6000000   # scale up
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LABELS = [f"class_{i:03d}" for i in range(365)]


def make_coco(root: Path, n_images: int, n_boxes: int, shard: int, shards: int, seed: int = 0) -> Path:
    """An Objects365-like COCO JSON; the images of ``shard`` exist (hard links to one 64x48 JPEG)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    W, H = 64, 48
    names = [f"objects365_v2_{k:08d}" for k in range(n_images)]
    images = [{"id": k + 1, "file_name": f"images/v2/patch{k % 16}/{name}.jpg", "width": W, "height": H}
              for k, name in enumerate(names)]
    img = rng.integers(1, n_images + 1, n_boxes)
    cat = rng.integers(1, len(LABELS) + 1, n_boxes)
    xy = rng.uniform(0, 40, (n_boxes, 2)).round(2)
    wh = rng.uniform(2, 20, (n_boxes, 2)).round(2)
    anns = [{"id": i + 1, "image_id": int(img[i]), "category_id": int(cat[i]), "iscrowd": 0, "isfake": 0,
             "bbox": [float(xy[i, 0]), float(xy[i, 1]), float(wh[i, 0]), float(wh[i, 1])],
             "area": float(wh[i, 0] * wh[i, 1])} for i in range(n_boxes)]
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(LABELS)]
    path = root / "annotations.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    # only the measured shard's images exist on disk: the others are never opened
    source = root / "one.jpg"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(source, quality=90)
    ordered = sorted(range(n_images), key=lambda k: names[k])
    lo, hi = shard * n_images // shards, (shard + 1) * n_images // shards
    for k in ordered[lo:hi]:
        target = root / "images" / f"patch{k % 16}" / f"{names[k]}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    return path


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak RSS) / ``VmRSS`` of this process, in MiB. Not ``ru_maxrss``: that one keeps
    the parent's RSS at fork time across exec, which would hide the child's own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: KiB on Linux-like systems


def _rss_mb() -> float:
    return _status_mb("VmHWM")


def _current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _load_readers(module_path: str | None):
    if module_path is None:
        from spatialforge.processing import readers

        return readers
    import importlib.util

    # loaded inside the package so its relative imports (.base, .records) resolve
    spec = importlib.util.spec_from_file_location("spatialforge.processing._bench_readers", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child(mode: str, ann: str, images: str, cache: str, shard: int, shards: int, module_path: str | None) -> dict:
    """One measurement in this (fresh) process."""
    import numpy  # noqa: F401  imports count in the baseline, not in the work
    import pyarrow  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import PIL.Image  # noqa: F401

    readers = _load_readers(module_path if mode == "before" else None)
    base = _current_rss_mb()
    start = time.perf_counter()
    records = boxes = 0
    if mode == "json.load":
        with open(ann, encoding="utf-8") as f:
            data = json.load(f)
        records, boxes = len(data["images"]), len(data["annotations"])
    elif mode == "convert":
        reader = readers.CocoReader(ann, images, cache_dir=cache)
        reader.prepare()
        records = reader.table().num_rows
    else:
        kwargs = {"cache_dir": cache} if mode == "after" else {}
        reader = readers.CocoReader(ann, images, **kwargs)
        for record in reader.read_shard(shard, shards):
            records += 1
            boxes += len(record.objects)
        assert reader.stats.dropped.get("missing_image", 0) == 0, reader.stats.dropped
    seconds = time.perf_counter() - start
    peak = _rss_mb()
    return {"mode": mode, "seconds": seconds, "peak_rss_mb": peak, "work_rss_mb": peak - base, "records": records, "boxes": boxes}


def _run_child(args: argparse.Namespace, mode: str, ann: Path, images: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--ann", str(ann), "--images-dir", str(images), "--cache", str(cache),
           "--shard", str(args.shard), "--shards", str(args.shards)]
    if args.before_module:
        cmd += ["--before-module", args.before_module]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--boxes", type=int, default=500_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard", type=int, default=3)
    parser.add_argument("--before-module", help="a readers.py to run for the 'before' row (default: this one without a cache)")
    parser.add_argument("--workdir", help="keep the generated data here (default: a temp folder, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ann", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.ann, args.images_dir, args.cache, args.shard, args.shards, args.before_module)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        ann = make_coco(root, args.images, args.boxes, args.shard, args.shards)
        print(f"generated {ann} ({ann.stat().st_size / 2**20:.0f} MB, {args.images} images, {args.boxes} boxes) "
              f"in {time.perf_counter() - start:.1f} s; one worker reads shard {args.shard} of {args.shards}")
        images, cache = root / "images", root / "cache"
        rows = {mode: _run_child(args, mode, ann, images, cache) for mode in ("json.load", "before", "convert", "after")}
        table = sorted(cache.glob("coco-*.parquet"))
        print(f"annotation table: {table[0].name} ({table[0].stat().st_size / 2**20:.1f} MB)" if table else "no table")
        print(f"{'':<34}{'seconds':>9}{'peak RSS MB':>13}{'work RSS MB':>13}{'records':>9}{'boxes':>9}")
        label = {"json.load": "json.load of the file (each worker)", "before": "before: full parse + shard",
                 "convert": "convert once (per run)", "after": "after: shard from the table"}
        for mode, r in rows.items():
            print(f"{label[mode]:<34}{r['seconds']:>9.2f}{r['peak_rss_mb']:>13.0f}{r['work_rss_mb']:>13.0f}{r['records']:>9}{r['boxes']:>9}")
        b, a = rows["before"], rows["after"]
        assert (b["records"], b["boxes"]) == (a["records"], a["boxes"]), "before and after read different shards"
        print(f"per worker, before/after: time x{b['seconds'] / a['seconds']:.1f}, peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}, "
              f"RSS above imports x{b['work_rss_mb'] / max(a['work_rss_mb'], 1):.1f}")
        print(f"{args.shards} workers, before/after (incl. one conversion): time "
              f"x{args.shards * b['seconds'] / (rows['convert']['seconds'] + args.shards * a['seconds']):.1f}")


if __name__ == "__main__":
    main()
