"""The dataset card (``README.md`` with Hub YAML) and ``stats.json`` of a generated dataset folder.

The YAML follows what ``datasets.Dataset.push_to_hub`` writes, built with ``datasets``' own helpers
(``DatasetInfo._to_yaml_dict`` -> ``Features._to_yaml_list``, ``DatasetInfosDict`` and
``MetadataConfigs``), so plain ``datasets.load_dataset(folder, "near_far")`` works without project
code:

* ``configs:`` one per task with rows (``data/<task>/*.parquet``) plus ``all``
  (``data/*/*.parquet``, ``default: true``). A requested task without rows
  (``stats["config"]["tasks"]``) keeps its empty shards (the builder loads them as an empty
  dataset) but gets no config, and the card says so: ``datasets`` plans no read for a split of 0
  rows and raises ``Instruction 'train' corresponds to no data`` in memory
  (huggingface/datasets#8401), so every declared config stays loadable with plain
  ``load_dataset``, in memory and streaming. A folder without any row declares no config.
* ``dataset_info:`` the features of :data:`~spatialforge.builders.schema.FEATURES` and the row
  count of each config.

The body gives rows per task, acceptance rates, every reason an image or object was dropped
before questions were asked (reading, perception) and the most frequent candidate drop reasons of
each task. It holds no timings or dates, so the same rows always give the same card. Preview images
in the folder (``previews/previews.json``, written by ``spatialforge preview``) are embedded, the first
:data:`CARD_PREVIEWS` of them.

``stats.json`` is published with the dataset, so it carries no local paths (:func:`public_stats`):
the run's input paths are reduced to their file names and the local identity of the inputs
(sizes, modification times) is left out; the full description of the run stays in
``.spatialforge/run.json``, which is never published.

Example:
    >>> write_card("out/", stats)    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import schema

LICENSE = "cc-by-nc-4.0"
TASK_CATEGORIES = ["visual-question-answering", "question-answering"]
TAGS = ["spatial-reasoning", "grounding", "depth", "vlm"]
SYNTHETIC_TAG = "synthetic"  # only for datasets built from synthetic images (e.g. the demo)
CITATION = """@article{liu2026spatialforge,
  title   = {SpatialForge: Bootstrapping 3D-Aware Spatial Reasoning from Open-World 2D Images},
  author  = {Liu and Zang and Zhang and Liu and Zhang and Yao and Zheng and Liu},
  journal = {arXiv preprint arXiv:2605.11462},
  year    = {2026}
}"""
TOP_REASONS = 5  # candidate drop reasons shown per task (every reason is in stats.json)
NO_OBJECTS = "no_objects"  # images that reached the end of the pipeline without a single box
NOT_REJECTED = frozenset({"over_cap", "rebalanced"})  # passed verification, then capped per image or rebalanced
PREVIEWS_DIR = "previews"  # preview images in a dataset folder (``spatialforge preview``), uploaded with it
PREVIEW_MANIFEST = "previews.json"  # in PREVIEWS_DIR: file, id, task, question, answer of each preview, in order
CARD_PREVIEWS = 4  # previews the card embeds (the first of the manifest)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    buckets = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
               (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for limit, name in buckets:
        if n < limit:
            return name
    return "100M<n<1B"


def task_of_reason(reason: str) -> str | None:
    """The task a candidate-drop reason belongs to (``near_far:margin_small`` -> ``near_far``)."""
    for task in schema.TASKS:
        if re.match(rf"^{task}[:/._]", reason):
            return task
    return None


def acceptance(stats: Mapping[str, Any]) -> dict[str, float | None]:
    """Per task: share of candidates that passed verification.

    ``(rows + capped) / (rows + capped + rejected)``, where ``capped`` are candidates dropped only
    by the per-image cap (``<task>/over_cap``) and ``rejected`` every other candidate drop of the task.
    """
    rows = Counter(stats.get("rows_per_task", {}))
    capped: Counter = Counter()
    rejected: Counter = Counter()
    for reason, n in stats.get("candidate_drops", {}).items():
        task = task_of_reason(reason)
        if task:
            (capped if reason[len(task) + 1:] in NOT_REJECTED else rejected)[task] += n
    out = {}
    for task in schema.TASKS:
        total = rows[task] + capped[task] + rejected[task]
        out[task] = (rows[task] + capped[task]) / total if total else None
    return out


def requested_tasks(stats: Mapping[str, Any]) -> list[str]:
    """Tasks that get a config, in schema order: the run's requested tasks (``stats["config"]["tasks"]``)
    and any task with rows."""
    rows = stats.get("rows_per_task", {})
    wanted = set((stats.get("config") or {}).get("tasks") or ()) | {t for t, n in rows.items() if n}
    return [t for t in schema.TASKS if t in wanted]


def input_drops(stats: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """Every image / object / row a step dropped, as ``(where, reason, count)``: steps in pipeline
    order (reader first), then most frequent first. These are data losses, so none is left out."""
    out: list[tuple[str, str, int]] = []
    for step in stats.get("steps", []):
        unit = "rows" if step["name"] == "writer" else "images"
        part = [(f"{step['name']} ({unit})", r, n) for r, n in step.get("dropped", {}).items() if n]
        part += [(f"{step['name']} (objects)", r, n) for r, n in step.get("objects_dropped", {}).items() if n]
        out += sorted(part, key=lambda t: (-t[2], t[0], t[1]))
    return out


def candidate_drops_by_task(stats: Mapping[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """Candidate drop reasons per task (``other`` for per-image reasons of no task), most frequent first."""
    out: dict[str, list[tuple[str, int]]] = {}
    for reason, n in stats.get("candidate_drops", {}).items():
        task = task_of_reason(reason)
        out.setdefault(task or "other", []).append((reason[len(task) + 1:] if task else reason, n))
    order = [*schema.TASKS, "other"]
    return {t: sorted(out[t], key=lambda r: (-r[1], r[0])) for t in order if t in out}


def input_entries(stats: Mapping[str, Any]) -> tuple[int, int]:
    """``(entries in the input, entries dropped while parsing)``: images read plus what the reader
    dropped before reading any image (duplicate ids, malformed entries)."""
    records_in = int(stats.get("records_in", 0))
    reader = next((s for s in stats.get("steps", []) if s.get("name") == "reader"), None)
    if reader is None:
        return records_in, 0
    read_drops = reader.get("records_in", 0) - reader.get("records_out", 0)
    parsed = max(0, sum(reader.get("dropped", {}).values()) - read_drops)
    return records_in + parsed, parsed


def drop_reasons(stats: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """Every drop, as ``(where, reason, count)``, most frequent first (ties by name)."""
    out: list[tuple[str, str, int]] = [("candidates", reason, n) for reason, n in stats.get("candidate_drops", {}).items()]
    out += input_drops(stats)
    if stats.get(NO_OBJECTS):
        out.append(("images", NO_OBJECTS, int(stats[NO_OBJECTS])))
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


def card_yaml(stats: Mapping[str, Any], pretty_name: str = "SpatialForge", synthetic: bool = False) -> str:
    """The YAML header of the card (without the ``---`` fences); ``synthetic`` adds the ``synthetic`` tag."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    rows = {t: int(n) for t, n in stats.get("rows_per_task", {}).items() if n}
    total = sum(rows.values())
    card = DatasetCardData(
        license=LICENSE,
        language=["en"],
        task_categories=TASK_CATEGORIES,
        tags=[*TAGS, SYNTHETIC_TAG] if synthetic else list(TAGS),
        pretty_name=pretty_name,
        size_categories=[size_category(total)],
    )
    configs: dict[str, dict[str, Any]] = {}
    infos = {}

    def add(name: str, pattern: str, n: int, default: bool = False) -> None:
        cfg: dict[str, Any] = {"data_files": [{"split": "train", "path": pattern}]}
        if default:
            cfg["default"] = True
        configs[name] = cfg
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_examples=n))
        infos[name] = DatasetInfo(features=schema.FEATURES, splits=splits)

    tasks = [t for t in requested_tasks(stats) if rows.get(t)]  # an empty config fails (datasets#8401)
    if tasks:
        add(schema.ALL_CONFIG, f"{schema.DATA_DIR}/*/*.parquet", total, default=True)
        for task in tasks:
            add(task, f"{schema.DATA_DIR}/{task}/*.parquet", rows.get(task, 0))
    MetadataConfigs(configs).to_dataset_card_data(card)
    DatasetInfosDict(infos).to_dataset_card_data(card)
    return card.to_yaml()


def previews_of(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The first :data:`CARD_PREVIEWS` entries of ``<out_dir>/previews/previews.json`` whose file exists."""
    manifest = Path(out_dir) / PREVIEWS_DIR / PREVIEW_MANIFEST
    if not manifest.is_file():
        return []
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    return [e for e in entries if (manifest.parent / e["file"]).is_file()][:CARD_PREVIEWS]


def card_body(stats: Mapping[str, Any], pretty_name: str = "SpatialForge",
              previews: list[dict[str, Any]] | None = None) -> str:
    rows = Counter({t: int(n) for t, n in stats.get("rows_per_task", {}).items()})
    total = sum(rows.values())
    acc = acceptance(stats)
    example = next((t for t in schema.TASKS if rows[t]), schema.ALL_CONFIG)
    lines = [
        f"# {pretty_name}",
        "",
        "Spatial-reasoning question-answer pairs generated from 2D images with the SpatialForge pipeline",
        "(perception -> relations -> six tasks -> automatic verification). One row is one QA pair; boxes",
        "are `[x1, y1, x2, y2]` integers in 0..1000 on the EXIF-transposed image. The folder holds",
        "annotations only: images stay with their source datasets.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("path/or/repo_id", "{example}", split="train")',
        "```",
        "",
        "## Rows per task",
        "",
        "| task | rows | share | acceptance |",
        "|---|---:|---:|---:|",
    ]
    for task in schema.TASKS:
        share = f"{rows[task] / total:.1%}" if total else "-"
        rate = f"{acc[task]:.1%}" if acc[task] is not None else "-"
        lines.append(f"| {task} | {rows[task]:,} | {share} | {rate} |")
    lines.append(f"| **total** | {total:,} | | |")
    empty = [t for t in requested_tasks(stats) if not rows[t]]
    if empty:
        lines += ["", f"Tasks without rows ({', '.join(empty)}) have no config: `datasets` cannot load a split",
                  "without rows in memory. Their empty files stay under `data/<task>/`, where the SpatialForge",
                  "builder reads them as empty datasets."]
    records_out = stats.get("records_out", 0)
    entries, parsed = input_entries(stats)
    blind = stats.get("blind_baseline") or {}
    lines += [
        "",
        "Acceptance is the share of a task's candidates that passed verification (candidates dropped",
        "only by the per-image cap, or by rebalancing, count as passed).",
        "",
    ]
    if blind:
        lines += [
            "## Blind baseline",
            "",
            "A text-only model (logistic regression on the question's words and word pairs, box",
            "coordinates removed, with the labels numbered in the order the question names them;",
            "5-fold cross-validated) predicting whether the first-named object holds the relation (is the",
            "nearer / the left one; perspective: the object is on the person's left). Relation rows are",
            "rebalanced so that, per label pair and question form, both sides are equally frequent",
            "(dropped rows: `<task>/rebalanced`), and phrased in twins: each row of one side with one",
            "of the other, same template, same label named first, same mentions, so every question",
            "text comes with both answers equally often. A text with both answers equally often is",
            "held out whole. The accuracy is the mean over repeated",
            "cross-validations with different folds (spread: their standard deviation); the standard",
            "error is what the number of rows leaves open, whatever the folds: a gap to the majority",
            "smaller than about twice it is not resolved.",
            "",
            "| task | rows | blind accuracy | spread over folds | standard error | majority rate |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for task, b in blind.items():
            spread, stderr = b.get("spread"), b.get("stderr")
            lines.append(f"| {task} | {b['rows']:,} | {b['accuracy']:.3f} | "
                         f"{'-' if spread is None else f'{spread:.3f}'} | {'-' if stderr is None else f'{stderr:.3f}'} | "
                         f"{b['majority']:.3f} |")
        lines.append("")
    lines += [
        "## Images",
        "",
        f"- images read: {entries:,} entries in the input, {parsed:,} of them dropped while parsing"
        " (duplicate ids, malformed entries)",
        f"- images that reached the writer: {records_out:,}"
        + (f" ({records_out / entries:.1%} of the entries)" if entries else ""),
    ]
    if stats.get(NO_OBJECTS):
        lines.append(f"- images without any box (`{NO_OBJECTS}`: no question about objects can be asked): "
                     f"{int(stats[NO_OBJECTS]):,}")
    lines += [
        f"- shards: {stats.get('num_shards', '-')}",
        "",
        "## Images and objects dropped",
        "",
        "Every reason an image, an object or a row was dropped while reading and perceiving (data losses:",
        "all reasons are listed).",
        "",
    ]
    dropped = input_drops(stats)
    if dropped:
        lines += ["| where | reason | count |", "|---|---|---:|"]
        lines += [f"| {where} | `{reason}` | {n:,} |" for where, reason, n in dropped]
    else:
        lines.append("Nothing was dropped.")
    lines += [
        "",
        "## Candidate drops per task",
        "",
        f"Questions considered but not asked, by verification check (the {TOP_REASONS} most frequent reasons",
        "of each task; every reason is in `stats.json`). `over_cap` candidates passed verification but",
        "exceeded the per-image cap.",
        "",
    ]
    by_task = candidate_drops_by_task(stats)
    if by_task:
        lines += ["| task | reason | count |", "|---|---|---:|"]
        more = 0
        for task, reasons in by_task.items():
            lines += [f"| {task} | `{reason}` | {n:,} |" for reason, n in reasons[:TOP_REASONS]]
            more += max(0, len(reasons) - TOP_REASONS)
        if more:
            lines.append(f"\n{more} more reasons in `stats.json`.")
    else:
        lines.append("No candidate was dropped.")
    if previews:
        lines += ["", "## Previews", "",
                  "QA pairs drawn on their images (`spatialforge preview`); boxes are numbered in the order the",
                  "question mentions the objects.", ""]
        for e in previews:
            alt = re.sub(r"[\[\]\n]", " ", e["question"])
            lines += [f"![{alt}]({PREVIEWS_DIR}/{e['file']})", "",
                      f"*{e['task']}*: {e['question']} **{e['answer']}**", ""]
    lines += [
        "",
        "## License",
        "",
        f"The annotations are released under {LICENSE.upper()}. Images remain under the licenses of",
        "their source datasets.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def public_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``stats`` as published: absolute paths in ``stats["config"]`` become their base names (a local
    model folder ``/home/me/models/dav2`` -> ``dav2``; Hub ids and relative names stay), and
    ``config.inputs`` (sizes and modification times of local files) is dropped."""
    out = dict(stats)
    config = out.get("config")
    if isinstance(config, Mapping):
        out["config"] = {key: _path_free(value) for key, value in config.items() if key != "inputs"}
    return out


def _path_free(value: Any) -> Any:
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    if isinstance(value, (list, tuple)):
        return [_path_free(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _path_free(v) for k, v in value.items()}
    return value


def write_card(out_dir: str | os.PathLike, stats: Mapping[str, Any], pretty_name: str = "SpatialForge",
               synthetic: bool = False) -> Path:
    """Write ``README.md`` (YAML + body) and ``stats.json`` (path-free) into ``out_dir``; returns the card path.

    ``synthetic``: the images are synthetic (adds the ``synthetic`` tag).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = card_body(stats, pretty_name, previews_of(out))
    text = f"---\n{card_yaml(stats, pretty_name, synthetic)}\n---\n\n{body}"
    _atomic_write(out / "README.md", text)
    _atomic_write(out / "stats.json", stats_json(stats))
    return out / "README.md"


def refresh_card(out_dir: str | os.PathLike) -> Path | None:
    """Rewrite the card of a dataset folder from its ``stats.json`` (e.g. after previews were added);
    ``None`` when the folder has no ``stats.json``."""
    stats_path = Path(out_dir) / "stats.json"
    if not stats_path.is_file():
        return None
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    return write_card(out_dir, stats, synthetic=bool((stats.get("config") or {}).get("synthetic")))
def stats_json(stats: Mapping[str, Any]) -> str:
    """The text of ``stats.json``: :func:`public_stats`, sorted keys, indented."""
    return json.dumps(public_stats(stats), indent=2, sort_keys=True) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
