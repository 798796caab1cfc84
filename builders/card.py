"""The dataset card (``README.md`` with Hub YAML) and ``stats.json`` of a generated dataset folder.

The YAML follows what ``datasets.Dataset.push_to_hub`` writes, built with ``datasets``' own helpers
(``DatasetInfo._to_yaml_dict`` -> ``Features._to_yaml_list``, ``DatasetInfosDict`` and
``MetadataConfigs``), so plain ``datasets.load_dataset(folder, "near_far")`` works without project
code:

* ``configs:`` one per task that has rows (``data/<task>/*.parquet``) plus ``all``
  (``data/*/*.parquet``, ``default: true``). Tasks without rows get no config: a config whose files
  match nothing would make ``load_dataset`` fail.
* ``dataset_info:`` the features of :data:`~spatialforge.builders.schema.FEATURES` and the row
  count of each config.

The body gives rows per task, acceptance rates and the most frequent drop reasons. It holds no
timings or dates, so the same rows always give the same card.

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
TAGS = ["spatial-reasoning", "grounding", "depth", "vlm", "synthetic"]
CITATION = """@article{liu2026spatialforge,
  title   = {SpatialForge: Bootstrapping 3D-Aware Spatial Reasoning from Open-World 2D Images},
  author  = {Liu and Zang and Zhang and Liu and Zhang and Yao and Zheng and Liu},
  journal = {arXiv preprint arXiv:2605.11462},
  year    = {2026}
}"""
TOP_REASONS = 15
NOT_REJECTED = frozenset({"over_cap"})  # candidates that passed verification but exceeded the per-image cap


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


def drop_reasons(stats: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """Every drop, as ``(where, reason, count)``, most frequent first (ties by name)."""
    out: list[tuple[str, str, int]] = []
    for reason, n in stats.get("candidate_drops", {}).items():
        out.append(("candidates", reason, n))
    for step in stats.get("steps", []):
        for reason, n in step.get("dropped", {}).items():
            out.append((f"{step['name']} (images)", reason, n))
        for reason, n in step.get("objects_dropped", {}).items():
            out.append((f"{step['name']} (objects)", reason, n))
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


def card_yaml(stats: Mapping[str, Any], pretty_name: str = "SpatialForge") -> str:
    """The YAML header of the card (without the ``---`` fences)."""
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
        tags=TAGS,
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

    if total:
        add(schema.ALL_CONFIG, f"{schema.DATA_DIR}/*/*.parquet", total, default=True)
        for task in schema.TASKS:
            if rows.get(task):
                add(task, f"{schema.DATA_DIR}/{task}/*.parquet", rows[task])
    MetadataConfigs(configs).to_dataset_card_data(card)
    DatasetInfosDict(infos).to_dataset_card_data(card)
    return card.to_yaml()


def card_body(stats: Mapping[str, Any], pretty_name: str = "SpatialForge") -> str:
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
    records_in, records_out = stats.get("records_in", 0), stats.get("records_out", 0)
    lines += [
        "",
        "Acceptance is the share of a task's candidates that passed verification (candidates dropped",
        "only by the per-image cap count as passed).",
        "",
        "## Images",
        "",
        f"- images read: {records_in:,}",
        f"- images that reached the writer: {records_out:,}"
        + (f" ({records_out / records_in:.1%})" if records_in else ""),
        f"- shards: {stats.get('num_shards', '-')}",
        "",
        "## Drop reasons",
        "",
    ]
    reasons = drop_reasons(stats)
    if reasons:
        lines += ["| where | reason | count |", "|---|---|---:|"]
        lines += [f"| {where} | `{reason}` | {n:,} |" for where, reason, n in reasons[:TOP_REASONS]]
        if len(reasons) > TOP_REASONS:
            lines.append(f"\n{len(reasons) - TOP_REASONS} more reasons in `stats.json`.")
    else:
        lines.append("Nothing was dropped.")
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


def write_card(out_dir: str | os.PathLike, stats: Mapping[str, Any], pretty_name: str = "SpatialForge") -> Path:
    """Write ``README.md`` (YAML + body) and ``stats.json`` into ``out_dir``; returns the card path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"---\n{card_yaml(stats, pretty_name)}\n---\n\n{card_body(stats, pretty_name)}"
    _atomic_write(out / "README.md", text)
    _atomic_write(out / "stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return out / "README.md"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
