"""CLI verbs of the pipeline: ``generate``."""

from __future__ import annotations

from typing import Optional

import typer

from .common import deprecated, field_flag, split_list, usage


def summary_lines(stats: dict) -> list[str]:
    """A plain-text summary: rows and acceptance per task, images, every reading / perception drop,
    then the most frequent candidate drop reasons."""
    from ...builders import schema
    from ...builders.card import NO_OBJECTS, acceptance, input_drops, input_entries

    rows = stats.get("rows_per_task", {})
    acc = acceptance(stats)
    lines = [f"{'task':<12} {'rows':>10} {'acceptance':>11}"]
    for task in schema.TASKS:
        rate = f"{acc[task]:.1%}" if acc[task] is not None else "-"
        lines.append(f"{task:<12} {rows.get(task, 0):>10,} {rate:>11}")
    lines.append(f"{'total':<12} {sum(rows.values()):>10,}")
    entries, parsed = input_entries(stats)
    lines.append(f"images: {entries:,} entries in the input ({parsed:,} dropped while parsing), "
                 f"{stats.get('records_out', 0):,} reached the writer")
    if stats.get(NO_OBJECTS):
        lines.append(f"images without any box ({NO_OBJECTS}): {stats[NO_OBJECTS]:,}")
    dropped = input_drops(stats)
    if dropped:
        lines.append("dropped while reading and perceiving:")
        lines += [f"  {n:>10,}  {reason}  ({where})" for where, reason, n in dropped]
    candidates = sorted(stats.get("candidate_drops", {}).items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    if candidates:
        lines.append("top candidate drop reasons:")
        lines += [f"  {n:>10,}  {reason}" for reason, n in candidates]
    return lines


def register(app: typer.Typer) -> None:
    @app.command("generate", short_help="Generate verified spatial QA from images.")
    def generate_cmd(
        source: str = typer.Option(..., "--source", help="Input kind: objects365 | openimages | pixmo | folder | hf | fiftyone."),
        out: str = typer.Option(..., "--out", help="Dataset folder to write (data/<task>/*.parquet, README.md, stats.json): empty, new, or a run's folder (one run at a time). A killed run resumes when rerun with the same options."),
        annotations: Optional[str] = typer.Option(None, "--annotations", help="COCO-style JSON (objects365), box CSV (openimages), JSONL/Parquet rows or a folder of them (pixmo), or a saved / local Hugging Face dataset folder (hf)."),
        image_dir: Optional[str] = typer.Option(None, "--image-dir", "-i", help="Root folder of the image files (found by relative path or by file stem); not used by --source hf."),
        images: Optional[str] = typer.Option(None, "--images", hidden=True, help="Deprecated spelling of --image-dir."),
        source_name: Optional[str] = typer.Option(None, "--source-name", help="Name written in the rows' `source` column (default: the --source value); name your own images here."),
        class_descriptions: Optional[str] = typer.Option(None, "--class-descriptions", help="OpenImages: class descriptions CSV (MID,name)."),
        image_labels: Optional[str] = typer.Option(None, "--image-labels", help="OpenImages: human-verified image-level labels CSV; without it no counting questions are asked (boxes are not exhaustive)."),
        hf_split: str = typer.Option("train", "--hf-split", help="source=hf: the split to read."),
        fiftyone_dataset: Optional[str] = typer.Option(None, "--fiftyone-dataset", help="source=fiftyone: name of the FiftyOne dataset to read images and boxes from (e.g. one the FiftyOne zoo made)."),
        fiftyone_label_field: Optional[str] = typer.Option(None, "--fiftyone-label-field", help="source=fiftyone: its Detections field (default: ground_truth, or the only Detections field)."),
        depth_dir: Optional[str] = typer.Option(None, "--depth-dir", help="Folder of depth files <image stem>.npy (float) or .png (16-bit millimeters, 0 = hole)."),
        depth_kind: str = typer.Option("depth", "--depth-kind", help="What depth files hold: depth (larger = farther) or inverse_depth (larger = nearer)."),
        depth_measured: Optional[bool] = typer.Option(None, "--depth-measured/--depth-estimated", help="Depth files are measurements (an RGB-D sensor, LiDAR, a renderer), trusted per object, or a depth model's predictions, each object possibly off by a factor of its own. Default: by format (16-bit PNG millimeters measured, float .npy estimated)."),
        depth_model: Optional[str] = typer.Option(None, "--depth-model", help="Hugging Face depth model id or local folder (instead of --depth-dir)."),
        detector: Optional[str] = typer.Option(None, "--detector", help="Hugging Face detection model id or local folder: adds boxes."),
        detections: Optional[str] = typer.Option(None, "--detections", help="Precomputed detections instead of --detector: a COCO detection-results JSON list of {image_id, category_id (or category_name), bbox [x, y, w, h], score}, ids and categories of the --annotations JSON; used as a detector's boxes (beside annotations they drop the questions they contradict)."),
        detector_labels: Optional[str] = typer.Option(None, "--detector-labels", help="Zero-shot detectors: comma-separated labels to look for."),
        pose_model: Optional[str] = typer.Option(None, "--pose-model", help="Hugging Face pose model id or local folder: person keypoints, for the perspective task."),
        detector_threshold: float = typer.Option(0.3, "--detector-threshold", min=0.0, max=1.0, help="--detector or --detections: minimum score of a kept box."),
        depth_flip_tta: bool = typer.Option(False, "--depth-flip-tta", help="--depth-model: also predict the mirrored image; near/far pairs must be ordered the same way by both."),
        second_depth_model: Optional[str] = typer.Option(None, "--second-depth-model", help="A second Hugging Face depth model id or local folder: near/far pairs must be ordered the same way by it."),
        ground_contact: bool = typer.Option(False, "--ground-contact", help="near_far: also require the object whose box bottom is lower in the image to be the nearer one."),
        label_alone_mentions: bool = typer.Option(False, "--label-alone-mentions/--boxed-mentions", help="Relation questions: name the only boxed object of a label by its label alone (\"the cup\"), or always with its box (\"the cup at [x1, y1, x2, y2]\", the default: an instance neither annotations nor detector box makes a name alone ambiguous)."),
        dtype: str = typer.Option("auto", "--dtype", help="Model dtype: auto (half precision on GPUs, fp32 on CPU) | fp32 | fp16 | bf16."),
        tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks, each once: grounding, referring, counting, near_far, left_right, perspective (default: all six)."),
        rebalance: bool = typer.Option(True, "--rebalance/--no-rebalance", help="Relation rows: keep both sides of each label pair and question form equally often, so the question alone does not give the answer away (dropped rows counted as <task>/rebalanced; the card reports the blind baseline)."),
        max_per_task: Optional[str] = typer.Option(None, "--max-per-task", help="Rows per image and task, e.g. grounding=2,near_far=1,perspective=none (none: no cap); tasks left out keep the defaults grounding=2,referring=2,counting=1,near_far=2,left_right=2,perspective=2."),
        workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (1 runs in this process). Does not change the output."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random choice (with image id and task)."),
        num_shards: int = typer.Option(8, "--num-shards", min=1, help="Input shards = Parquet files per task; fixed for a dataset, independent of --workers."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per model forward pass."),
        device: str = typer.Option("auto", "--device", help="Model device: auto | cpu | cuda | cuda:N | mps; checked before the run starts."),
        on_bad_input: str = typer.Option("skip", "--on-bad-input", help="Malformed annotations, missing files: skip (counted) | warn (counted and logged) | error."),
        on_size_mismatch: str = typer.Option("rescale", "--on-size-mismatch", help="Annotation size differs from the image: rescale (same aspect ratio) | drop."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete a previous run's files in --out (only those its manifest lists) instead of resuming it."),
        allow_existing: bool = typer.Option(False, "--allow-existing", help="Write into a non-empty --out that holds no run; its files are never replaced (README.md, stats.json or data/ there are refused)."),
        keep_drops: bool = typer.Option(False, "--keep-drops", help="Also write each image's candidate drop reasons to drops/<shard>.parquet (shown as tags by `spatialforge fiftyone`)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
        prefetch: int = typer.Option(2, "--prefetch", min=0, help="Batches a model step decodes and preprocesses ahead while one runs (0: none). Does not change the output."),
        executor: str = typer.Option("local", "--executor", help="local (processes on this machine) | ray (Ray Data, e.g. on a cluster: pip install 'spatialforge[ray]'). Same output."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="--executor ray: the cluster to join (auto, ray://HOST:10001, HOST:6379); default: start a local Ray instance."),
        ray_concurrency: int = typer.Option(1, "--ray-concurrency", min=1, help="--executor ray: actors per model step; each loads the weights once."),
        ray_num_gpus: float = typer.Option(0.0, "--ray-num-gpus", min=0.0, help="--executor ray: GPUs per model actor (1: one per GPU; 0.5: two share a GPU; 0: CPUs only)."),
        ray_cpu_concurrency: int = typer.Option(1, "--ray-cpu-concurrency", min=1, help="--executor ray: actors per CPU stage (reading, decoding and preprocessing, tasks and verification)."),
        verbose: bool = typer.Option(False, "--verbose", help="Show the traceback of an error (also `spatialforge -v generate`)."),
    ) -> None:
        """Generate spatial QA (six tasks, verified) from images and annotations into a Hub-ready dataset folder.

        Models given as Hub ids are resolved once, before the run folder is created (offline:
        from the Hugging Face cache, or a one-line error). Exit status: 0 on success; 2 on bad
        input (options, annotations, missing images when bad input is an error, models, an
        output folder that cannot be written). The verbose flag shows the traceback of an error.
        """
        from dataclasses import fields

        from ..pipeline import GenerateConfig, generate

        del verbose  # read from the command line by the root command (cli.common.SpatialForgeGroup)

        images = deprecated(image_dir, images, "--images", "--image-dir")
        try:
            cfg = GenerateConfig(
                source=source, out=out, annotations=annotations, images=images, source_name=source_name,
                class_descriptions=class_descriptions, image_labels=image_labels, hf_split=hf_split,
                fiftyone_dataset=fiftyone_dataset, fiftyone_label_field=fiftyone_label_field, keep_drops=keep_drops,
                depth_dir=depth_dir, depth_kind=depth_kind, depth_measured=depth_measured, depth_model=depth_model, detector=detector, detections=detections,
                detector_labels=split_list(detector_labels, "--detector-labels"), pose_model=pose_model,
                detector_threshold=detector_threshold, depth_flip_tta=depth_flip_tta,
                second_depth_model=second_depth_model, ground_contact=ground_contact, label_alone_mentions=label_alone_mentions, dtype=dtype,
                tasks=split_list(tasks, "--tasks") or GenerateConfig.__dataclass_fields__["tasks"].default, max_per_task=max_per_task, rebalance=rebalance,
                workers=workers, seed=seed, num_shards=num_shards, batch_size=batch_size, device=device,
                on_bad_input=on_bad_input, on_size_mismatch=on_size_mismatch, overwrite=overwrite, progress=progress,
                allow_existing=allow_existing,
                prefetch=prefetch, executor=executor, ray_address=ray_address, ray_concurrency=ray_concurrency,
                ray_num_gpus=ray_num_gpus, ray_cpu_concurrency=ray_cpu_concurrency,
            )
        except ValueError as err:
            flag = field_flag(str(err), [f.name for f in fields(GenerateConfig)])
            usage("--image-dir" if flag == "--images" else flag or "generate", str(err))
        stats = generate(cfg)  # errors of the input: one line and exit 2 (cli.common)
        for line in summary_lines(stats):
            typer.echo(line)
        typer.echo(f"wrote {out} (README.md, stats.json, data/<task>/*.parquet)")
