"""The end-to-end demo: synthetic scenes with known truth -> pipeline -> builder -> precision table.

What it does, all offline and in a few tens of seconds on 2 cores:

1. renders ``scenes`` synthetic scenes (:mod:`.scenes`: people turned anywhere, fields of view of
   30-100 degrees, varied camera pitch and height, objects cut by the frame, walls instead of sky)
   and writes them as an Objects365 v2 download (JPEGs in ``images/train/patchN/``, every other
   one with an EXIF focal length, a COCO-style JSON with person keypoints), with the exact metric
   depth of every image as ``depth/<stem>.npy`` and the truth as ``truth.json``;
2. writes what the variants of :data:`.scenes.VARIANTS` observe instead: a second JSON with
   detector-like boxes and noisy, partly missing keypoints, and a depth folder that errs the way
   monocular models do (global scale, shifts of either sign, 15 % per-object bias, blurred
   edges, noise), as relative inverse depth;
3. runs ``generate`` (reader -> depth from files -> facing from keypoints -> six tasks with
   verification -> Parquet + dataset card) once per variant;
4. judges every written row against the truth (:mod:`.evaluate`) and loads the exact dataset
   back through the ``SpatialForge10M`` builder with the images joined.

Layout of ``out``::

    out/objects365/images/train/patch0/objects365_v2_00000001.jpg
    out/objects365/annotations/zhiyuan_objv2_train.json           exact boxes and keypoints
    out/objects365/annotations/zhiyuan_objv2_train_detector.json  detector-like boxes, noisy keypoints
    out/objects365/depth/<stem>.npy          exact depth (meters, 0 = sky)
    out/objects365/depth_mono/<stem>.npy     monocular-like relative inverse depth
    out/objects365/truth.json
    out/dataset-<variant>/                   Hub-ready dataset folders (README.md, data/<task>/)
    out/report.json

Example:
    >>> result = run_demo("demo-out", scenes=30)          # doctest: +SKIP
    >>> print(result.table())                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import TaskReport, evaluate, format_report
from .scenes import FAMILIES, VARIANTS, load_truth, make_scenes, observed_depth, write_objects365_layout

logger = logging.getLogger(__name__)

PASSES = tuple(VARIANTS)
"""Pipeline passes: one per variant of :data:`.synth.VARIANTS`."""
MIN_FILL = 0.3  # near_far is also reported on objects covering at least this share of their box
PASS_TITLES = {name: v.title for name, v in VARIANTS.items()}
DETECTOR_ANNOTATIONS = "zhiyuan_objv2_train_detector.json"


@dataclass
class DemoResult:
    """What the demo measured. ``reports[pass][task]`` are the per-task precision reports."""

    out: Path
    scenes: int
    reports: dict[str, dict[str, TaskReport]] = field(default_factory=dict)
    filled: dict[str, TaskReport] = field(default_factory=dict)  # near_far on objects filling their box
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # generate() stats per pass
    loaded_rows: int | None = None  # rows the builder yielded with their image (exact pass)
    written_rows: int | None = None
    missing_images: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        parts = [f"SpatialForge demo: {self.scenes} synthetic scenes with known truth -> {self.out}"]
        for name, reports in self.reports.items():
            parts.append("")
            parts.append(format_report(reports, f"{PASS_TITLES.get(name, name)}  [{self.out / f'dataset-{name}'}]"))
            nf = self.filled.get(name)
            if nf is not None and nf.precision is not None:
                parts.append(
                    f"  near_far on objects covering >= {MIN_FILL:.0%} of their box: precision {nf.precision:.4f} "
                    f"({nf.rows} rows; {nf.excluded} rows about open shapes such as umbrellas left out)"
                )
        if len(self.reports) > 1:
            parts.append("")
            parts.append(self.summary())
        if self.loaded_rows is not None:
            parts.append("")
            parts.append(
                f"loaded {self.loaded_rows} rows through the builder (of {self.written_rows} written), "
                f"{self.missing_images} images missing"
            )
        parts.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(parts)

    def summary(self) -> str:
        """One line per task, one column per variant: precision, pass rate before caps and rows."""
        from ...builders.schema import TASKS

        names = list(self.reports)
        width = 26
        lines = ["precision / pass rate before caps / rows, per task and variant",
                 f"{'task':<12} " + " ".join(f"{n:>{width}}" for n in names)]
        for task in TASKS:
            cells = []
            for name in names:
                rep = self.reports[name].get(task)
                if rep is None:
                    cells.append(f"{'-':>{width}}")
                    continue
                prec = "-" if rep.precision is None else f"{rep.precision:.4f}"
                rate = "-" if rep.pass_rate is None else f"{rep.pass_rate:.3f}"
                cells.append(f"{f'{prec} / {rate} / {rep.rows}':>{width}}")
            lines.append(f"{task:<12} " + " ".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "scenes": self.scenes,
            "reports": {p: {t: r.to_dict() for t, r in reps.items()} for p, reps in self.reports.items()},
            "near_far_min_fill": {p: r.to_dict() for p, r in self.filled.items()},
            "loaded_rows": self.loaded_rows,
            "written_rows": self.written_rows,
            "missing_images": self.missing_images,
            "seconds": self.seconds,
        }


def read_rows(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of a dataset folder's ``data/<task>/*.parquet`` shards (sorted by path)."""
    import pyarrow.parquet as pq

    from ...builders.schema import DATA_DIR

    rows: list[dict[str, Any]] = []
    for path in sorted(Path(dataset_dir, DATA_DIR).glob("*/*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def write_mono_depth(scenes, depth_dir: Path, seed: int) -> None:
    """Monocular-like relative inverse depth of every scene, ``<stem>.npy`` under ``depth_dir``."""
    depth_dir.mkdir(parents=True, exist_ok=True)
    noise = VARIANTS["mono"].depth
    for s in scenes:
        np.save(depth_dir / f"{s.image_id}.npy", observed_depth(s, noise, seed))


def run_demo(
    out: str | Path = "demo-out",
    scenes: int = 300,
    seed: int = 0,
    workers: int = 1,
    width: int = 320,
    height: int = 240,
    passes: tuple[str, ...] = PASSES,
    load: bool = True,
    progress: bool = False,
    family: str = "default",
) -> DemoResult:
    """Run the demo into ``out`` (overwriting a previous demo there) and return what it measured.

    ``family`` names the scene family (:data:`.scenes.FAMILIES`): ``correlated`` places labels at
    systematic distances and sides, so the cards' blind baselines show what rebalancing removes.
    """
    from ..pipeline import GenerateConfig, generate

    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise ValueError(f"passes must be among {tuple(PASSES)}, got {unknown}")
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {family!r}")
    out = Path(out)
    result = DemoResult(out=out, scenes=scenes)

    start = time.perf_counter()
    rendered = make_scenes(scenes, seed=seed, width=width, height=height, config=FAMILIES[family])
    layout = write_objects365_layout(rendered, out / "objects365")
    if any(VARIANTS[p].depth is not None for p in passes):
        write_mono_depth(rendered, layout.root / "depth_mono", seed)
    if any(not VARIANTS[p].annotations.exact for p in passes):
        noisy = {VARIANTS[p].annotations for p in passes} - {VARIANTS["exact"].annotations}
        if len(noisy) != 1:
            raise ValueError(f"passes {passes} observe annotations {len(noisy)} ways; the layout holds one noisy JSON")
        write_objects365_layout(rendered, out / "objects365", noise=noisy.pop(), annotations_name=DETECTOR_ANNOTATIONS,
                                write_files=False)
    result.seconds["scenes"] = time.perf_counter() - start
    logger.info("wrote %d scenes to %s", scenes, layout.root)
    truth = load_truth(layout.truth)

    for name in passes:
        variant = VARIANTS[name]
        folder, kind = ("depth", "depth") if variant.depth is None else ("depth_mono", "inverse_depth")
        annotations = layout.annotations if variant.annotations.exact else layout.annotations.with_name(DETECTOR_ANNOTATIONS)
        start = time.perf_counter()
        cfg = GenerateConfig(
            source="objects365",
            out=str(out / f"dataset-{name}"),
            annotations=str(annotations),
            images=str(layout.images),
            depth_dir=str(layout.root / folder),
            depth_kind=kind,
            seed=seed,
            workers=workers,
            num_shards=max(2, workers),
            overwrite=True,
            progress=progress,
            synthetic=True,
        )
        stats = generate(cfg)
        rows = read_rows(cfg.out)
        result.stats[name] = stats
        result.reports[name] = evaluate(rows, truth, stats.get("candidate_drops", {}))
        result.filled[name] = evaluate(rows, truth, stats.get("candidate_drops", {}), min_fill=MIN_FILL)["near_far"]
        result.seconds[f"generate[{name}]"] = time.perf_counter() - start
        if name == "exact":
            result.written_rows = len(rows)

    if load and "exact" in passes:
        start = time.perf_counter()
        result.loaded_rows, result.missing_images = load_through_builder(out / "dataset-exact", layout.images, out / ".cache")
        result.seconds["load"] = time.perf_counter() - start

    (out / "report.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return result


def load_through_builder(dataset_dir: Path, images: Path, cache_dir: Path) -> tuple[int, int]:
    """Rows the builder yields with images joined, and how many referenced images are missing."""
    from spatialforge_10m import SpatialForge10M

    builder = SpatialForge10M(
        config_name="all",
        annotations=str(dataset_dir),
        image_dirs={"objects365": str(images)},
        on_missing_image="skip",
        cache_dir=str(cache_dir),
    )
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    first = ds[0] if len(ds) else None
    if first is not None and first["image"].size != (first["width"], first["height"]):
        raise RuntimeError(f"image of row {first['id']!r} is {first['image'].size}, rows say {first['width']}x{first['height']}")
    sources: Mapping[str, Any] = builder.image_stats.get("sources", {})
    missing = sum(int(s.get("missing", 0)) for s in sources.values())
    return len(ds), missing
