"""The six task generators behind one pipeline step, and how their candidates become rows.

A task is a small module ``tasks/<name>.py`` with one function,
``generate(record, rng, config) -> Generated``: the candidates that passed every check of
:mod:`.verify` plus a ``Counter`` of dropped candidates by reason. Everything shared lives here:
phrasing (:mod:`.templates`), answer balancing, object order, the verification struct, ids.

:class:`TaskStep` runs the generators on each record and appends schema rows to ``record.rows``.
Accounting, per record and task (so acceptance rates need no second pass):

* ``record.drops[f"{task}/{reason}"]``: dropped candidates, including ``over_cap`` (passed every
  check but the per-image cap was reached);
* ``record.meta["considered"][task]`` and ``record.meta["accepted"][task]``: candidates looked at
  and rows written, with ``accepted + sum(drops of task) == considered``; the step sums both over
  all records in :attr:`TaskStep.considered` / :attr:`TaskStep.accepted`.

Rows are checked against ``validate_row`` here, once (``on_invalid_row``); relation rows are checked
on the parts they are built from (the scene's boxes and labels, the fact), and ``validate_row``
itself names the problem when those do not vouch for a row. ``record.meta`` notes how many rows are
validated so the Parquet writer does not check them again.

Ambiguity policy: a question names objects by label ("the cup") only when the label has a single
box and its annotation is exhaustive; otherwise it adds the box ("the cup at [x1, y1, x2, y2]",
ints in 0..1000). Nothing is dropped for sharing a label. ``objects`` lists the objects in the
order the question mentions them; grounding and counting list their answer boxes left to right.

Balance: relation rows pick a template form at random; yes/no answers are "Yes" half the time and
the object named by a choice answer comes first half the time (the pair is swapped, or for the
person frame the asked side is chosen). Every random choice draws from :func:`task_rng`.

Example:
    >>> import numpy as np
    >>> from spatialforge.processing.records import Detections, Record
    >>> rec = Record("demo", "1", 100, 100, objects=Detections(np.array([[10, 10, 40, 60]]), ["cup"]))
    >>> rec = TaskStep(tasks=["grounding"]).process(rec)
    >>> rec.rows[0]["answer"]
    '[{"bbox_2d": [100, 100, 400, 600], "label": "cup"}]'
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ...builders.schema import RELATION_TASKS, TASKS, VERIFICATION, fact_error, make_id, size_ok, validate_row
from ..base import Step
from ..records import Record
from .templates import OPPOSITE, TEMPLATES, Template, display_label, plural, relation_fact, sentence
from .verify import Scene, Sieve, VerifyConfig, box_text, scene_for
from ..output.parquet import VALIDATED_ROWS

logger = logging.getLogger(__name__)

DEFAULT_MAX_PER_TASK: dict[str, int | None] = {
    "grounding": 2,
    "referring": 2,
    "counting": 1,
    "near_far": 2,
    "left_right": 2,
    "perspective": 2,
}
"""Rows per image and task when ``TaskStep(max_per_task=None)``; None means no cap."""

SWAPPABLE = {"near_far": True, "left_right": True, "perspective": False}
"""Relation tasks whose two objects may trade places in a question (the person frame may not)."""


@dataclass(slots=True)
class Candidate:
    """A question that passed its checks, before phrasing.

    Relation tasks: ``objects == (i, j)`` (indices into ``record.objects``) with
    ``"i <predicate> j"`` holding (for ``perspective`` j is the person). Grounding / counting:
    the answer boxes; referring: the region's box. The passed check names are ``checks``, or are
    read from ``sieve`` (at ``index``) only when the candidate becomes a row (most never do: caps).
    ``evidence``: extra numbers for the verification struct (``box_gap``, ``depth_margin``).
    """

    objects: tuple[int, ...]
    form: str | None = None
    predicate: str | None = None
    label: str | None = None
    count: int | None = None
    checks: list[str] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    sieve: Sieve | None = None
    index: int = -1

    def evidence_of(self, key: str) -> float | None:
        if key in self.evidence:
            return float(self.evidence[key])
        if self.sieve is not None and key in self.sieve.evidence:
            return float(self.sieve.evidence[key][self.index])
        return None

    def passed(self) -> list[str]:
        if self.checks is not None:
            return list(self.checks)
        return self.sieve.passed(self.index) if self.sieve is not None else []


class Candidates(Sequence):
    """Accepted candidates of a relation task, built on demand from columns.

    Most candidates never become rows (the per-image cap keeps a few), so a generator hands over
    the surviving pairs as columns and a :class:`Candidate` is only made for the ones asked for.
    ``predicate`` is one predicate for all, or one per candidate.
    """

    def __init__(self, sieve: Sieve, first: np.ndarray, second: np.ndarray, predicate: str | np.ndarray) -> None:
        self.sieve = sieve
        self.index = sieve.survivors()
        self.first = first[self.index].tolist()
        self.second = second[self.index].tolist()
        self.predicate = predicate if isinstance(predicate, str) else predicate[self.index].tolist()
        self.index = self.index.tolist()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        p = self.predicate if isinstance(self.predicate, str) else self.predicate[k]
        return Candidate(objects=(self.first[k], self.second[k]), predicate=p, sieve=self.sieve, index=self.index[k])


class Generated(NamedTuple):
    """What a generator returns: accepted candidates and dropped ones counted by reason."""

    candidates: Sequence[Candidate]
    drops: Counter


Generator = Callable[[Record, np.random.Generator, VerifyConfig], Generated]
_GENERATORS: dict[str, Generator] = {}


def generator(task: str) -> Generator:
    """The ``generate`` function of ``task`` (module ``tasks/<task>.py``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task not in _GENERATORS:
        _GENERATORS[task] = importlib.import_module(f"{__package__}.{task}").generate
    return _GENERATORS[task]


def task_rng(
    seed: int, source: str, image_id: str, task: str, out: np.random.Generator | None = None
) -> np.random.Generator:
    """The random generator of one (seed, image, task): stable across runs, processes and machines.

    A blake2b hash of the four values is the PCG64 state (seeding through ``default_rng`` costs
    ~10x more, which shows at thousands of images per second). ``out``: a PCG64 generator to
    reseed in place instead of building a new one.
    """
    digest = hashlib.blake2b(f"{seed}\x1f{source}\x1f{image_id}\x1f{task}".encode(), digest_size=32).digest()
    gen = out if out is not None else np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(digest[:16], "little"), "inc": int.from_bytes(digest[16:], "little") | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return gen


def _pools() -> dict[tuple, list[Template]]:
    """Templates by (task, form) and (task, form, asks), in declaration order."""
    pools: dict[tuple, list[Template]] = {}
    for task, templates in TEMPLATES.items():
        for t in templates:
            pools.setdefault((task, t.form), []).append(t)
            pools.setdefault((task, t.form, t.asks), []).append(t)
        pools[(task,)] = sorted({t.form for t in templates})  # forms, in a fixed order
    return pools


_POOLS = _pools()


def _pick(pool: list[Template], rng: np.random.Generator) -> Template:
    return pool[int(rng.integers(len(pool)))]


def _relation(task: str, cand: Candidate, scene: Scene, rng: np.random.Generator):
    """Phrase a relation candidate: ``(template, slots, objects in mention order, fact)``."""
    i, j = cand.objects
    holds = cand.predicate
    swappable = SWAPPABLE[task]
    forms = _POOLS[(task,)]
    form = forms[int(rng.integers(len(forms)))]
    pool = _POOLS[(task, form)]
    if form == "yesno":
        yes = bool(rng.random() < 0.5)
        if not swappable:  # balance by asking about the side that gives the wanted answer
            pool = _POOLS[(task, form, holds if yes else OPPOSITE[holds])]
        t = _pick(pool, rng)
        holder, other = (i, j) if t.asks == holds else (j, i)  # "holder <asks> other" is true
        a, b = ((holder, other) if yes else (other, holder)) if swappable else (i, j)
    elif form == "choice":
        if not swappable:
            raise ValueError(f"task {task!r} cannot use 'choice' templates")
        t = _pick(pool, rng)
        holder, other = (i, j) if t.asks == holds else (j, i)
        a, b = (holder, other) if rng.random() < 0.5 else (other, holder)
    else:  # side: the answer is the side word of what holds for a relative to b
        t = _pick(pool, rng)
        a, b = (j, i) if swappable and rng.random() < 0.5 else (i, j)
    fact, answer = relation_fact(t, a, b, holds if a == i else OPPOSITE[holds])
    slots: dict[str, str] = {k: scene.mention(v) if k == "answer" else v for k, v in answer.items()}
    slots["a"], slots["b"] = scene.mention(a), scene.mention(b)
    role = {"a": a, "b": b}
    objects = [role[r] for r in t.roles]
    fact_row = {
        "subject": objects.index(fact[0]),
        "predicate": fact[1],
        "object": objects.index(fact[2]),
        "frame": "person" if task == "perspective" else "camera",
    }
    return t, slots, objects, fact_row


_VERIFICATION_ORDER = ("checks", "depth_margin", "depth_subject", "depth_object", "box_gap", "overlap_iou",
                       "min_box_area", "facing", "facing_confidence", "facing_max_turn_deg", "focal_source",
                       "depth_source", "box_source")
if tuple(VERIFICATION) != _VERIFICATION_ORDER:  # relation rows spell the struct out in this order
    raise ImportError(f"verification fields changed: {tuple(VERIFICATION)} (update _render_relation)")


def render(task: str, cand: Candidate, scene: Scene, rng: np.random.Generator, index: int) -> dict[str, Any]:
    """One schema row from an accepted candidate (``index``: its number within the image and task)."""
    if task in RELATION_TASKS:
        return _render_relation(task, cand, scene, rng, index)[0]
    rec = scene.record
    t = _pick(_POOLS[(task, cand.form)], rng)
    objects = list(cand.objects)
    label = display_label(cand.label) if cand.label is not None else display_label(scene.labels[objects[0]])
    slots = {"label": label, "labels": plural(label)}
    if task == "grounding":
        slots["json"] = json.dumps([{"bbox_2d": scene.boxes[k], "label": scene.labels[k]} for k in objects])
    elif task == "referring":
        slots["box"] = box_text(scene.boxes[objects[0]])
    elif task == "counting":
        slots["count"] = str(cand.count)
    verification = dict.fromkeys(VERIFICATION, None)
    checks = cand.passed()
    verification["checks"] = checks
    verification["box_source"] = rec.box_source
    if objects:
        verification["min_box_area"] = min(scene.area_list[k] for k in objects)
    verification["box_gap"] = cand.evidence_of("box_gap")
    if "lateral_dominance" in checks:
        verification["depth_source"] = rec.depth.source
    return {
        "id": make_id(rec.source, rec.image_id, task, index),
        "source": rec.source,
        "image_id": rec.image_id,
        "width": int(rec.width),
        "height": int(rec.height),
        "task": task,
        "question": sentence(t.question.format(**slots)),
        "answer": sentence(t.answer.format(**slots)),
        "objects": [{"label": scene.labels[k], "bbox": list(scene.boxes[k])} for k in objects],
        "fact": None,
        "count": cand.count if task == "counting" else None,
        "verification": verification,
    }


def _render_relation(task: str, cand: Candidate, scene: Scene, rng: np.random.Generator,
                     index: int) -> tuple[dict[str, Any], bool]:
    """:func:`render` of a relation candidate, and whether the row passes every check of
    ``validate_row`` (checked here on the parts it was built from, in a few comparisons; False
    means: ask ``validate_row``, which names the problem)."""
    rec = scene.record
    t, slots, objects, fact = _relation(task, cand, scene, rng)
    s, o = objects[fact["subject"]], objects[fact["object"]]
    checks = cand.passed()
    area, labels, boxes = scene.area_list, scene.labels, scene.boxes
    near_far = task == "near_far"
    lateral = "lateral_dominance" in checks
    if task == "perspective":
        det = rec.objects
        facing, facing_confidence = det.facing[o], float(det.facing_confidence[o])
        max_turn = cand.evidence_of("max_turn")
        focal_source = scene.focal_lengths[1] if lateral else None
    else:
        facing = facing_confidence = max_turn = focal_source = None
    width, height = int(rec.width), int(rec.height)
    row = {
        "id": make_id(rec.source, rec.image_id, task, index),
        "source": rec.source,
        "image_id": rec.image_id,
        "width": width,
        "height": height,
        "task": task,
        "question": sentence(t.question.format(**slots)),
        "answer": sentence(t.answer.format(**slots)),
        "objects": [{"label": labels[k], "bbox": list(boxes[k])} for k in objects],
        "fact": fact,
        "count": None,
        "verification": {  # the fields of VERIFICATION, in their order
            "checks": checks,
            "depth_margin": cand.evidence_of("depth_margin") if near_far else None,
            "depth_subject": float(scene.depth[s]) if near_far else None,
            "depth_object": float(scene.depth[o]) if near_far else None,
            "box_gap": cand.evidence_of("box_gap"),
            "overlap_iou": float(scene.iou[s, o]),
            "min_box_area": min(area[k] for k in objects),
            "facing": facing,
            "facing_confidence": facing_confidence,
            "facing_max_turn_deg": max_turn,
            "focal_source": focal_source,
            "depth_source": rec.depth.source if near_far or lateral else None,
            "box_source": rec.box_source,
        },
    }
    box_ok = scene.row_box_ok
    ok = size_ok(width, height) and all(box_ok[k] for k in objects) and fact_error(task, fact, len(objects)) is None
    return row, ok


def _plain_row_ok(task: str, row: dict[str, Any], cand: Candidate, scene: Scene) -> bool:
    """Whether a :func:`render` row of a grounding / referring / counting candidate passes every
    check of ``validate_row``, from the parts it was built from (False: ask ``validate_row``)."""
    objects = cand.objects
    box_ok = scene.row_box_ok
    if not size_ok(row["width"], row["height"]) or not all(box_ok[k] for k in objects):
        return False
    if task == "counting":
        return row["count"] is not None and row["count"] >= 0
    return row["count"] is None and (task not in ("grounding", "referring") or len(objects) > 0)


class TaskStep(Step):
    """Generate, verify and phrase QA rows for every record (appended to ``record.rows``).

    Args:
        tasks: which of the six tasks to run, in this order.
        seed: with (source, image_id, task) it seeds every random choice (:func:`task_rng`).
        config: verification thresholds (:class:`~.verify.VerifyConfig`).
        max_per_task: rows per image and task. None: :data:`DEFAULT_MAX_PER_TASK`; an int: that cap
            for every task; a dict: overrides of the defaults (a value of None lifts the cap).
            Which candidates survive the cap is a seeded random choice.
        on_invalid_row: a row that breaks the schema (a bug) is ``error`` raised, or ``warn`` logged
            and dropped, or ``skip`` dropped silently; drops count as ``<task>/invalid_row``.

    >>> TaskStep(tasks=["near_far"], max_per_task={"near_far": 5}).max_per_task["near_far"]
    5
    """

    name = "tasks"

    def __init__(
        self,
        tasks: Iterable[str] = TASKS,
        seed: int = 0,
        config: VerifyConfig | None = None,
        max_per_task: int | Mapping[str, int | None] | None = None,
        on_invalid_row: str = "warn",
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks must be among {TASKS}, got {unknown!r}")
        self.seed = int(seed)
        self.config = config if config is not None else VerifyConfig()
        if on_invalid_row not in ("error", "warn", "skip"):
            raise ValueError(f"on_invalid_row must be 'error', 'warn' or 'skip', got {on_invalid_row!r}")
        self.on_invalid_row = on_invalid_row
        caps: dict[str, int | None] = dict(DEFAULT_MAX_PER_TASK)
        if isinstance(max_per_task, int):
            caps = dict.fromkeys(TASKS, max_per_task)
        elif max_per_task is not None:
            bad = [t for t in max_per_task if t not in TASKS]
            if bad:
                raise ValueError(f"max_per_task keys must be tasks {TASKS}, got {bad!r}")
            caps.update(max_per_task)
        for task, cap in caps.items():
            if cap is not None and cap < 0:
                raise ValueError(f"max_per_task[{task!r}] must be >= 0 or None, got {cap!r}")
        self.max_per_task = caps
        self.considered: Counter = Counter()
        self.accepted: Counter = Counter()
        self._rng = np.random.Generator(np.random.PCG64(0))  # reseeded per (image, task)

    def setup(self) -> None:
        for task in self.tasks:
            generator(task)

    def process(self, record: Record) -> Record:
        scene = scene_for(record, self.config)
        # Rows are validated here, once; the writer skips the ones this marker vouches for.
        all_validated = record.meta.get(VALIDATED_ROWS, 0) == len(record.rows)
        considered = record.meta.setdefault("considered", {})
        accepted = record.meta.setdefault("accepted", {})
        for task in self.tasks:
            rng = task_rng(self.seed, record.source, record.image_id, task, out=self._rng)
            candidates, drops = generator(task)(record, rng, self.config)
            n_considered = len(candidates) + sum(drops.values())
            cap = self.max_per_task.get(task)
            if cap is not None and len(candidates) > cap:
                keep = np.sort(rng.choice(len(candidates), size=cap, replace=False)).tolist()
                over = len(candidates) - cap
                if "over_cap" in drops:
                    drops = drops + Counter({"over_cap": over})
                else:  # the same Counter without Counter.__add__'s cost: positive counts, then over_cap
                    drops = Counter({reason: n for reason, n in drops.items() if n > 0})
                    drops["over_cap"] = over
                candidates = [candidates[k] for k in keep]
            relation = task in RELATION_TASKS
            n_rows = 0
            for cand in candidates:
                if relation:
                    row, ok = _render_relation(task, cand, scene, rng, n_rows)
                else:
                    row = render(task, cand, scene, rng, n_rows)
                    ok = _plain_row_ok(task, row, cand, scene)
                try:
                    if not ok:
                        validate_row(row)
                except ValueError as err:
                    if self.on_invalid_row == "error":
                        raise
                    if self.on_invalid_row == "warn":
                        logger.warning("%s: dropped an invalid %s row: %s", record.key, task, err)
                    drops["invalid_row"] += 1
                    continue
                record.rows.append(row)
                n_rows += 1
            for reason in sorted(drops):
                record.drop(f"{task}/{reason}", drops[reason])
            considered[task] = considered.get(task, 0) + n_considered
            accepted[task] = accepted.get(task, 0) + n_rows
            self.considered[task] += n_considered
            self.accepted[task] += n_rows
        if all_validated:
            record.meta[VALIDATED_ROWS] = len(record.rows)
        return record
