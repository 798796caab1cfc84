"""The end-to-end demo: synthetic scenes with known truth -> pipeline -> builder -> precision table.

What it does, all offline and in a few tens of seconds on 2 cores:

1. renders ``scenes`` synthetic scenes (:mod:`.scenes`: people turned anywhere and leaning, fields of view of
   30-100 degrees, varied camera pitch and height, objects cut by the frame, walls instead of sky)
   and writes them as an Objects365 v2 download (JPEGs in ``images/train/patchN/``, every other
   one with an EXIF focal length, a COCO-style JSON with person keypoints), with the exact metric
   depth of every image as ``depth/<stem>.npy`` and the truth as ``truth.json``;
2. writes what the variants of :data:`.scenes.VARIANTS` observe instead: a second JSON with
   detector-like boxes and noisy, partly missing keypoints, and depth folders that err the way
   monocular models do (15 % per-object bias, blurred edges, noise): relative inverse depth with
   a global scale and shifts of either sign, and a metric model's meters with a scale off by up to
   35 %;
3. writes what a detector run beside the annotations finds, as COCO detection-results files
   (:func:`.scenes.detection_results`): on the exact variants every instance the image shows with
   its exact box, on the detector variants a detector-like one (misses and low scores for small and
   occluded instances, jittered boxes, boxes of a wrong label);
4. runs ``generate --detections`` (reader -> detections file -> depth from files -> facing from
   keypoints -> six tasks with verification -> Parquet + dataset card) once per variant, and once
   more on the annotations alone (``annotations-only/``), so the table shows what the detector buys;
5. judges every written row against the truth (:mod:`.evaluate`) and loads the exact dataset
   back through the ``SpatialForge10M`` builder with the images joined.

Layout of ``out``::

    out/objects365/images/train/patch0/objects365_v2_00000001.jpg
    out/objects365/annotations/zhiyuan_objv2_train.json           exact boxes and keypoints
    out/objects365/annotations/zhiyuan_objv2_train_detector.json  detector-like boxes, noisy keypoints
    out/objects365/depth/<stem>.npy          exact depth (meters, 0 = sky)
    out/objects365/depth_mono/<stem>.npy     monocular-like relative inverse depth
    out/objects365/depth_metric/<stem>.npy   a metric depth model's meters (per-object bias, scale error)
    out/objects365/depth_sensor/<stem>.png   an RGB-D sensor's millimeters (16-bit, 0 = no measurement)
    out/objects365/truth.json
    out/objects365/detections/<detector>.json  COCO detection results (exact.json, detector-like.json)
    out/dataset-<variant>/                   Hub-ready dataset folders (README.md, data/<task>/)
    out/annotations-only/dataset-<variant>/  the same without the detections file
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
from PIL import Image

from .evaluate import TaskReport, evaluate, format_report
from .scenes import (
    EXACT_DETECTOR,
    FAMILIES,
    VARIANTS,
    DepthNoise,
    SensorNoise,
    detection_results,
    load_truth,
    make_scenes,
    observed_depth,
    variant_detector,
    write_objects365_layout,
)

logger = logging.getLogger(__name__)

PASSES = tuple(VARIANTS)
"""Pipeline passes: one per variant of :data:`.synth.VARIANTS`."""
MIN_FILL = 0.3  # near_far is also reported on objects covering at least this share of their box
PASS_TITLES = {name: v.title for name, v in VARIANTS.items()}
DETECTOR_ANNOTATIONS = "zhiyuan_objv2_train_detector.json"
ALONE = "annotations-only"  # folder of the datasets made from the annotations alone (no detections file)
DETECTOR_DROPS = ("detector_extra_instance",)  # candidate drop reasons of the detector beside the annotations


def detections_name(variant: str) -> str:
    """File name of the detections a variant runs with (one per kind of detector)."""
    return "exact.json" if variant_detector(VARIANTS[variant]) == EXACT_DETECTOR else "detector-like.json"


@dataclass
class DemoResult:
    """What the demo measured. ``reports[pass][task]`` are the per-task precision reports."""

    out: Path
    scenes: int
    reports: dict[str, dict[str, TaskReport]] = field(default_factory=dict)
    filled: dict[str, TaskReport] = field(default_factory=dict)  # near_far on objects filling their box
    alone: dict[str, dict[str, TaskReport]] = field(default_factory=dict)  # the same on the annotations alone
    left_out_found: dict[str, tuple[int, int]] = field(default_factory=dict)  # detections file: (found, left out)
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
            parts += self.detector_lines(name)
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

    def detector_lines(self, name: str) -> list[str]:
        """What the detections file bought on one variant: precision on the annotations alone, the
        candidates it dropped by reason, and the entries of the file left out by reason."""
        lines = []
        alone = self.alone.get(name)
        if alone:
            cells = ", ".join(f"{t} {'-' if r.precision is None else f'{r.precision:.4f}'} ({r.wrong} wrong)"
                              for t, r in alone.items())
            lines.append(f"  annotations alone, no detector: precision {cells}")
        drops = self.stats.get(name, {}).get("candidate_drops", {})
        dropped = [f"{t} {n}" for reason, n in sorted(drops.items()) for t, _, why in [reason.partition("/")]
                   if why in DETECTOR_DROPS]
        file_counts = self.stats.get(name, {}).get("detections_file")
        if file_counts is not None:
            left = ", ".join(f"{n} {r}" for r, n in file_counts["dropped"].items()) or "none"
            lines.append(f"  detections file {detections_name(name)}: {file_counts['entries']} boxes (left out: {left}); "
                         f"questions it contradicts, dropped ({', '.join(DETECTOR_DROPS)}): {', '.join(dropped) or 'none'}")
        if name in self.left_out_found:
            found, total = self.left_out_found[name]
            lines.append(f"  of the {total} visible instances the annotations leave out, the detections file finds {found} "
                         "(each one it misses can make a count or a \"the cup\" wrong)")
        return lines

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
        if self.alone:
            lines.append("precision on the annotations alone (no detector beside them)")
            for task in TASKS:
                cells = [self.alone.get(name, {}).get(task) for name in names]
                lines.append(f"{task:<12} " + " ".join(
                    f"{'-' if rep is None or rep.precision is None else f'{rep.precision:.4f}':>{width}}" for rep in cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "scenes": self.scenes,
            "reports": {p: {t: r.to_dict() for t, r in reps.items()} for p, reps in self.reports.items()},
            "near_far_min_fill": {p: r.to_dict() for p, r in self.filled.items()},
            "annotations_alone": {p: {t: r.to_dict() for t, r in reps.items()} for p, reps in self.alone.items()},
            "detections_file": {p: s.get("detections_file") for p, s in self.stats.items()},
            "left_out_found": {p: list(v) for p, v in self.left_out_found.items()},
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


def write_observed_depth(scenes, root: Path, noise: DepthNoise | SensorNoise, seed: int) -> Path:
    """The depth every scene is observed with under ``noise`` (monocular-like relative inverse depth,
    a metric model's meters, or a sensor's), ``<stem>.npy`` (a sensor's: 16-bit ``<stem>.png``) under
    ``root / noise.folder``; returns that folder."""
    depth_dir = root / noise.folder
    depth_dir.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        values = observed_depth(s, noise, seed)
        if isinstance(noise, SensorNoise):  # 16-bit millimeters, 0 = no measurement: as NYU and RealSense write them
            Image.fromarray(np.round(values * 1000.0).astype(np.uint16)).save(depth_dir / f"{s.image_id}.png")
        else:
            np.save(depth_dir / f"{s.image_id}.npy", values)
    return depth_dir


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
    alone: bool = True,
    family: str = "default",
) -> DemoResult:
    """Run the demo into ``out`` (overwriting a previous demo there) and return what it measured.

    ``alone``: also run every variant on the annotations alone (no detections file beside them).
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
    for noise in dict.fromkeys(VARIANTS[p].depth for p in passes if VARIANTS[p].depth is not None):
        write_observed_depth(rendered, layout.root, noise, seed)
    if any(not VARIANTS[p].annotations.exact for p in passes):
        noisy = {VARIANTS[p].annotations for p in passes} - {VARIANTS["exact"].annotations}
        if len(noisy) != 1:
            raise ValueError(f"passes {passes} observe annotations {len(noisy)} ways; the layout holds one noisy JSON")
        write_objects365_layout(rendered, out / "objects365", noise=noisy.pop(), annotations_name=DETECTOR_ANNOTATIONS,
                                write_files=False)
    detections = write_detections(rendered, layout.root / "detections", passes)
    result.seconds["scenes"] = time.perf_counter() - start
    logger.info("wrote %d scenes to %s", scenes, layout.root)
    truth = load_truth(layout.truth)

    for name in passes:
        variant = VARIANTS[name]
        if variant.measured:  # rendered exactly, or a sensor's 16-bit millimeters
            folder, kind, measured = "depth" if variant.depth is None else variant.depth.folder, "depth", True
        else:  # a model's: relative inverse depth, or meters
            folder, kind, measured = variant.depth.folder, "depth" if variant.depth.metric else "inverse_depth", False
        annotations = layout.annotations if variant.annotations.exact else layout.annotations.with_name(DETECTOR_ANNOTATIONS)
        start = time.perf_counter()
        common = dict(
            source="objects365",
            annotations=str(annotations),
            images=str(layout.images),
            depth_dir=str(layout.root / folder),
            depth_kind=kind,
            depth_measured=measured,
            seed=seed,
            workers=workers,
            num_shards=max(2, workers),
            overwrite=True,
            progress=progress,
            synthetic=True,
        )
        cfg = GenerateConfig(out=str(out / f"dataset-{name}"), detections=str(detections[name]), **common)
        stats = generate(cfg)
        rows = read_rows(cfg.out)
        result.stats[name] = stats
        result.reports[name] = evaluate(rows, truth, stats.get("candidate_drops", {}))
        result.filled[name] = evaluate(rows, truth, stats.get("candidate_drops", {}), min_fill=MIN_FILL)["near_far"]
        result.seconds[f"generate[{name}]"] = time.perf_counter() - start
        result.left_out_found[name] = left_out_found(json.loads(detections[name].read_text()), truth)
        if alone:
            bare = GenerateConfig(out=str(out / ALONE / f"dataset-{name}"), **common)
            bare_stats = generate(bare)
            result.alone[name] = evaluate(read_rows(bare.out), truth, bare_stats.get("candidate_drops", {}))
        if name == "exact":
            result.written_rows = len(rows)

    if load and "exact" in passes:
        start = time.perf_counter()
        result.loaded_rows, result.missing_images = load_through_builder(out / "dataset-exact", layout.images, out / ".cache")
        result.seconds["load"] = time.perf_counter() - start

    (out / "report.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return result


def write_detections(scenes, folder: Path, passes: tuple[str, ...]) -> dict[str, Path]:
    """The COCO detection-results file of each pass's detector (one file per kind), ``pass -> path``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in passes:
        path = folder / detections_name(name)
        if path not in paths.values():
            path.write_text(json.dumps(detection_results(scenes, variant_detector(VARIANTS[name]))))
        paths[name] = path
    return paths


def left_out_found(results: list[dict[str, Any]], truth: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """``(found, left out)``: the visible instances (:data:`.evaluate.MIN_VISIBLE_PIXELS` or more)
    the annotations leave out, and how many of them a detection-results file boxes (same label,
    IoU >= :data:`.evaluate.MIN_IOU`). Image ids are the layout's (``index + 1``)."""
    missed, total = left_out_missed(results, truth)
    return total - len(missed), total


def left_out_missed(results: list[dict[str, Any]], truth: Mapping[str, Mapping[str, Any]]) -> tuple[list[tuple[str, str]], int]:
    """The ``(image id, label)`` of each left-out visible instance the file misses (see
    :func:`left_out_found`), and how many instances are left out."""
    from ..perception.objects365_labels import OBJECTS365_CATEGORIES
    from ..records import box_iou
    from .evaluate import MIN_IOU, MIN_VISIBLE_PIXELS

    by_image: dict[int, list[tuple[str, list[float]]]] = {}
    for e in results:
        x, y, w, h = e["bbox"]
        by_image.setdefault(int(e["image_id"]), []).append((OBJECTS365_CATEGORIES[e["category_id"] - 1].lower(), [x, y, x + w, y + h]))
    missed: list[tuple[str, str]] = []
    total = 0
    for stem, t in truth.items():
        boxes = by_image.get(int(stem.rsplit("_", 1)[-1]), [])
        for o in t["objects"]:
            if o["annotated"] or o["box"] is None or o["visible_pixels"] < MIN_VISIBLE_PIXELS:
                continue
            total += 1
            same = [b for label, b in boxes if label == o["label"]]
            if not same or float(box_iou(np.array([o["box"]]), np.array(same)).max()) < MIN_IOU:
                missed.append((stem, o["label"]))
    return missed, total


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
