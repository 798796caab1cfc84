"""Counting from points: "how many X?" answered by Pixmo's point annotations.

Pixmo-points rows point at every instance of a label in an image (the annotation is an exhaustive
count by design), so the number of points of a label is its count even though there are no boxes.
:class:`PointCounting` reads ``record.meta["point_counts"]`` (``{label: number of points}``, set by
:class:`~.readers.PixmoReader`) and appends one counting row per label whose count is in
``[count_min, count_max]`` of the :class:`~.verify.VerifyConfig` (0 only with ``count_zero``),
phrased with the counting templates. ``objects`` is empty (points are not boxes) and ``count`` is
set; the row's verification has ``checks=["point_count"]`` and ``box_source="points"``.

Row ids and random choices follow the task step's scheme: ``make_id(source, image_id, "counting", k)``
(``k`` continues after counting rows the record already has) and :func:`~.tasks.task_rng` of
``(seed, source, image_id, "counting")``. Drops are counted in ``record.drops`` as
``counting/count_out_of_range`` and ``counting/over_cap`` (more labels than the per-image cap).

Example:
    >>> from spatialforge.processing.records import Record
    >>> rec = Record("pixmo", "abc", 64, 48, meta={"point_counts": {"apple": 3}})
    >>> PointCounting().process(rec).rows[0]["count"]
    3
"""

from __future__ import annotations

from ...builders.schema import VERIFICATION, make_id
from ..base import Step
from ..records import Record
from .step import DEFAULT_MAX_PER_TASK, task_rng
from .templates import TEMPLATES, display_label, plural, sentence
from .verify import VerifyConfig

TASK = "counting"
POINT_COUNTS = "point_counts"  # record.meta key


class PointCounting(Step):
    """Append counting rows from ``record.meta["point_counts"]`` (see the module docstring).

    Args:
        seed: with (source, image_id, "counting") it seeds the template and cap choices.
        config: ``count_min`` / ``count_max`` / ``count_zero`` of the verification config.
        max_per_image: counting rows per image (default: the task step's counting cap); None: no cap.
    """

    name = "point_counting"

    def __init__(self, seed: int = 0, config: VerifyConfig | None = None,
                 max_per_image: int | None = DEFAULT_MAX_PER_TASK[TASK]) -> None:
        super().__init__()
        if max_per_image is not None and max_per_image < 0:
            raise ValueError(f"max_per_image must be >= 0 or None, got {max_per_image!r}")
        self.seed = int(seed)
        self.config = config if config is not None else VerifyConfig()
        self.max_per_image = max_per_image
        self._templates = [t for t in TEMPLATES[TASK] if t.form == "plain"]

    def process(self, record: Record) -> Record:
        counts = record.meta.get(POINT_COUNTS)
        if not counts:
            return record
        cfg = self.config
        low = 0 if cfg.count_zero else cfg.count_min
        keep = [(label, n) for label, n in sorted(counts.items()) if low <= n <= cfg.count_max]
        if len(keep) < len(counts):
            record.drop(f"{TASK}/count_out_of_range", len(counts) - len(keep))
        rng = task_rng(self.seed, record.source, record.image_id, TASK)
        if self.max_per_image is not None and len(keep) > self.max_per_image:
            chosen = sorted(rng.choice(len(keep), size=self.max_per_image, replace=False).tolist())
            record.drop(f"{TASK}/over_cap", len(keep) - self.max_per_image)
            keep = [keep[k] for k in chosen]
        index = sum(1 for row in record.rows if row["task"] == TASK)
        for label, n in keep:
            template = self._templates[int(rng.integers(len(self._templates)))]
            shown = display_label(label)
            slots = {"label": shown, "labels": plural(shown), "count": str(n)}
            verification = dict.fromkeys(VERIFICATION, None)
            verification.update(checks=["point_count"], box_source="points")
            record.rows.append({
                "id": make_id(record.source, record.image_id, TASK, index),
                "source": record.source,
                "image_id": record.image_id,
                "width": int(record.width),
                "height": int(record.height),
                "task": TASK,
                "question": sentence(template.question.format(**slots)),
                "answer": sentence(template.answer.format(**slots)),
                "objects": [],
                "fact": None,
                "count": int(n),
                "verification": verification,
            })
            index += 1
        return record
