"""What checking inputs by content costs: recording them in a run, and checking them on a resume.

Synthetic Objects365 scenes (JPEG images and float32 .npy depth maps at ``--size``) go through
``generate`` (``--source objects365 --depth-dir``, one worker) as users run it. Measured side by side
in one process, best of ``--rounds``:

* run: a fresh ``generate`` (every shard runs and records the files it read);
* record: :func:`record_inputs` over the same files, what the run spent on recording them;
* resume: ``generate`` again with every shard done (size, mtime and ctime of every file checked);
* resume after a touch: every image and depth file touched first, so each one's hash is read again.

Prints seconds and ratios to the run.

    python benchmarks/resume_check.py                 # 200 scenes, 320x240 (about a minute)
    python benchmarks/resume_check.py --scenes 1000 --size 640x480
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from spatialforge.processing.output.run_folder import record_inputs
from spatialforge.processing.pipeline import GenerateConfig, generate
from spatialforge.processing.synth.scenes import make_scenes, write_objects365_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the scenes")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="sf-resume-"))
    try:
        layout = write_objects365_layout(make_scenes(args.scenes, width=width, height=height), tmp / "in")
        files = sorted(str(p) for d in (layout.images, layout.depth) for p in d.rglob("*") if p.is_file())
        mib = sum(os.path.getsize(f) for f in files) / 2**20

        def cfg(out: Path) -> GenerateConfig:
            return GenerateConfig(source="objects365", annotations=str(layout.annotations), images=str(layout.images),
                                  depth_dir=str(layout.depth), out=str(out), num_shards=4, progress=False)

        best: dict[str, float] = {}

        def timed(name: str, fn) -> None:
            start = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

        for r in range(args.rounds):
            out = tmp / f"out{r}"
            timed("run", lambda: generate(cfg(out)))
            timed("record", lambda: record_inputs(files, time.time_ns()))
            timed("resume", lambda: generate(cfg(out)))
            for f in files:
                os.utime(f)
            timed("resume after a touch", lambda: generate(cfg(out)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.scenes} scenes {width}x{height}: {len(files)} input files ({mib:.1f} MiB), best of {args.rounds} rounds")
    for name, seconds in best.items():
        ratio = "" if name == "run" else f"  = {seconds / best['run']:.3f} x run"
        print(f"  {name:<22} {seconds:8.3f} s{ratio}")


if __name__ == "__main__":
    main()
