"""No answers without looking: relation rows a text-only model could answer from the question alone.

A relation question names two objects; which of them is the nearer (or the left) one is the
answer. Photos carry strong label priors (people nearer than buildings, cups nearer than cars), so
a model that reads only "the cup ... the car" could answer from the labels. Two dataset-level
passes, run when a dataset folder is finished (:func:`finalize`):

* :func:`rebalance` keeps, per relation task, question form (yes/no or naming) and unordered label
  pair, as many rows where the first label holds the relation (nearer, left of, on the person's
  left) as where the second does: a seeded selection of the larger side, the rest dropped and
  counted (``<task>/rebalanced``). Pairs of one label (two cups) carry no label prior; they are
  kept in an even number per task, form and label (one of an odd number is dropped and counted).
* :func:`twin_phrasings` then phrases the kept rows in twins: each row of one side of a group with
  one of the other side, both with the same template, the same label named first and the same
  mentions, so the two questions read alike once box coordinates are removed and have opposite
  answers (pairs of one label are twinned two by two, the order of naming chosen so the answers
  differ). No row more is dropped; a text-only model cannot tell twins apart, as in VQA v2's
  complementary pairs.
* :func:`blind_baseline` measures what is left: a logistic regression on the question's words,
  word pairs and labels in the order named (box coordinates removed), cross-validated with every
  text that has both answers equally often held out whole, predicting whether the first-named
  object holds the relation, against the majority rate of that target. The card reports both per
  task.

Example:
    >>> row = {"task": "near_far", "question": "Is the cup at [1, 2, 3, 4] nearer than the car?", "answer": "Yes.",
    ...        "objects": [{"label": "cup"}, {"label": "car"}], "fact": {"subject": 0, "predicate": "nearer_than", "object": 1}}
    >>> first_holds(row), question_words(row["question"])[:4]
    (True, ['is', 'the', 'cup', 'at'])
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...builders.schema import DATA_DIR, RELATION_TASKS

logger = logging.getLogger(__name__)

CANONICAL = {"near_far": "nearer_than", "left_right": "left_of", "perspective": "left_of"}
"""The predicate whose holder is "the first side" of a relation, per task."""
OPPOSITE = {"nearer_than": "farther_than", "farther_than": "nearer_than", "left_of": "right_of", "right_of": "left_of"}
BLIND_MAX_ROWS = 20000  # the blind baseline reads at most this many rows per task (a seeded sample)
BLIND_REPEATS = 5  # cross-validations with different fold assignments the blind baseline averages
_NUMBER = re.compile(r"\d+")
_WORD = re.compile(r"[a-z]+")


def holder(row: Mapping[str, Any]) -> int:
    """Index into ``objects`` of the object holding the task's canonical relation (the nearer /
    the left one; perspective: the object, when it is on the person's left, else the person)."""
    fact = row["fact"]
    canonical = CANONICAL[row["task"]]
    return fact["subject"] if fact["predicate"] == canonical else fact["object"]


def first_holds(row: Mapping[str, Any]) -> bool:
    """Whether the first-named object holds the relation (perspective: the object is on the
    person's left, whichever is named first)."""
    if row["task"] == "perspective":
        return row["fact"]["predicate"] == "left_of"
    return holder(row) == 0


def question_form(row: Mapping[str, Any]) -> str:
    """``yesno`` for yes/no answers, else ``naming`` (the answer names an object or a side)."""
    return "yesno" if row["answer"] in ("Yes.", "No.") else "naming"


def balance_key(row: Mapping[str, Any]) -> tuple[tuple, bool] | None:
    """``((task, form, label pair), side)``: the group a relation row is balanced in and which
    label of the (sorted) pair holds the relation; None for pairs of one label."""
    labels = [o["label"].lower() for o in row["objects"]]
    if row["task"] == "perspective":
        fact = row["fact"]
        person, obj = labels[fact["object"]], labels[fact["subject"]]
        return ((row["task"], question_form(row), person, obj), fact["predicate"] == "left_of")
    h = holder(row)
    a, b = labels[h], labels[1 - h]
    if a == b:
        return None
    pair = tuple(sorted((a, b)))
    return ((row["task"], question_form(row), *pair), a == pair[0])


def _rank(seed: int, row_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x1f{row_id}".encode(), digest_size=8).digest()


def select_balanced(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> tuple[list[bool], Counter]:
    """Which rows to keep so that each group's two sides are equal (the larger side keeps a seeded
    choice of as many as the smaller) and pairs of one label come in an even number per task, form
    and label (one of an odd number is dropped: :func:`twin_phrasings` phrases them two by two),
    and how many rows each task loses."""
    keep = [True] * len(rows)
    groups, alike = _grouped(rows, keep)
    cost: Counter = Counter()
    for (task, *_), members in alike.items():
        if len(members) % 2:  # pairs of one label are phrased two by two (twin_phrasings): one is left over
            keep[max(members, key=lambda k: _rank(seed, rows[k]["id"]))] = False
            cost[task] += 1
    for (task, *_), sides in groups.items():
        n = min(len(sides[True]), len(sides[False]))
        for side in (True, False):
            members = sides[side]
            if len(members) > n:
                members = sorted(members, key=lambda k: _rank(seed, rows[k]["id"]))
                for k in members[n:]:
                    keep[k] = False
                cost[task] += len(members) - n
    return keep, cost


def balance_rows(rows: Sequence[Mapping[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], Counter]:
    """What :func:`rebalance` does to a dataset folder, on rows in memory: the rows
    :func:`select_balanced` keeps, phrased by :func:`twin_phrasings` (new dicts; the others as they
    were), and the rows each task lost."""
    keep, cost = select_balanced(rows, seed)
    twins = twin_phrasings(rows, keep, seed)
    out = []
    for k, row in enumerate(rows):
        if keep[k]:
            out.append(_apply(row, twins[k]) if k in twins else dict(row))
    return out, cost


_REPHRASED = ("question", "answer", "objects", "fact", "verification")
_READ = ("id", "task", "question", "answer", "objects", "fact")  # the columns rebalance selects rows by


def _rephrased(table, changed: Mapping[int, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]):
    """``table`` with the rows at the indices of ``changed`` rephrased (:func:`_apply`), each
    validated; only the columns a phrasing touches are rebuilt. ``rows``: the table's rows as
    :func:`rebalance` read them (the columns of :data:`_READ`), not converted again."""
    import pyarrow as pa

    from ...builders.schema import validate_row

    columns = {name: [r[name] for r in rows] if name in _READ else table.column(name).to_pylist()
               for name in table.column_names}
    for k, fields in changed.items():
        row = _apply({name: columns[name][k] for name in table.column_names}, fields)
        validate_row(row)
        for name in _REPHRASED:
            columns[name][k] = row[name]
    for name in _REPHRASED:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(columns[name], type=table.schema.field(i).type))
    return table


def _apply(row: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the fields of :func:`rephrase`; a near_far row's two depths follow its subject."""
    new = {**row, **{k: v for k, v in fields.items() if not k.startswith("_")}}
    if fields.get("_swap_depths") and new.get("verification") and row["task"] == "near_far":
        v = new["verification"] = dict(new["verification"])
        v["depth_subject"], v["depth_object"] = v["depth_object"], v["depth_subject"]
    return new


def twin_phrasings(rows: Sequence[Mapping[str, Any]], keep: Sequence[bool], seed: int = 0) -> dict[int, dict[str, Any]]:
    """New ``question``, ``answer``, ``objects`` and ``fact`` of the kept relation rows, by index:
    each group's rows (:func:`balance_key`, after :func:`select_balanced` its two sides are equal)
    are paired, the i-th of one side by seeded rank with the i-th of the other, and each pair is
    phrased alike: one template of the group's question form, the same label named first, each
    label mentioned with its box if either row mentioned it so. Pairs of one label (grouped by
    task, form and label) are paired two by two and phrased alike too, the first row naming the
    object that holds the relation first and the second the other one, so again the answers
    differ. The choices are seeded by the pair's ids; a row left over keeps its phrasing.
    ``_swap_depths`` (near_far): the new fact's subject is the old one's object.
    """
    groups, alike = _grouped(rows, keep)
    rank = lambda k: _rank(seed, rows[k]["id"])  # noqa: E731

    def draw(task: str, form: str, k1: int, k2: int):
        """The pair's seeded draw: its template and the number it came from."""
        pick = int.from_bytes(_rank(seed, f"twin\x1f{rows[k1]['id']}\x1f{rows[k2]['id']}"), "big")
        pool = _forms(task, form)
        return pool[pick % len(pool)], pick

    out: dict[int, dict[str, Any]] = {}
    for key, sides in groups.items():
        task, form, *pair = key
        for k1, k2 in zip(sorted(sides[True], key=rank), sorted(sides[False], key=rank)):
            template, pick = draw(task, form, k1, k2)
            first_label = pair[(pick >> 8) & 1] if task != "perspective" else None
            boxed = {label: _boxed(rows[k1], label) or _boxed(rows[k2], label) for label in pair}
            for k in (k1, k2):
                first = _index_of(rows[k], first_label)
                out[k] = rephrase(rows[k], template, first, [boxed[o["label"].lower()] for o in rows[k]["objects"]])
    for (task, form, _), members in alike.items():
        members = sorted(members, key=rank)
        for k1, k2 in zip(members[0::2], members[1::2]):
            template, _ = draw(task, form, k1, k2)
            out[k1] = rephrase(rows[k1], template, holder(rows[k1]), [True, True])
            out[k2] = rephrase(rows[k2], template, 1 - holder(rows[k2]), [True, True])
    return out


def _grouped(rows: Sequence[Mapping[str, Any]], keep: Sequence[bool]) -> tuple[dict, dict]:
    """The kept relation rows by group: ``{group: {side: [index, ...]}}`` (:func:`balance_key`)
    and, for pairs of one label, ``{(task, form, label): [index, ...]}`` (:func:`_alike_key`)."""
    groups: dict[tuple, dict[bool, list[int]]] = defaultdict(lambda: {True: [], False: []})
    alike: dict[tuple, list[int]] = defaultdict(list)
    for k, row in enumerate(rows):
        if not keep[k] or row["task"] not in CANONICAL:
            continue
        key = balance_key(row)
        if key is not None:
            groups[key[0]][key[1]].append(k)
        else:
            alike[_alike_key(row)].append(k)
    return groups, alike


def _alike_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """Task, question form and label of a pair of one label: what :func:`twin_phrasings` pairs in."""
    return row["task"], question_form(row), row["objects"][0]["label"].lower()


def _forms(task: str, form: str) -> list:
    """A task's templates of question form ``form`` (:func:`question_form`), in declaration order."""
    from ..tasks.templates import TEMPLATES

    return [t for t in TEMPLATES[task] if (t.form == "yesno") == (form == "yesno")]


def _boxed(row: Mapping[str, Any], label: str) -> bool:
    """Whether the question mentions the object of ``label`` (lower case) with its box."""
    from ..tasks.verify import box_text

    return any(o["label"].lower() == label and box_text(o["bbox"]) in row["question"] for o in row["objects"])


def _index_of(row: Mapping[str, Any], label: str | None) -> int | None:
    if label is None:
        return None
    return next(k for k, o in enumerate(row["objects"]) if o["label"].lower() == label)


def rephrase(row: Mapping[str, Any], template, first: int | None, boxed: Sequence[bool]) -> dict[str, Any]:
    """A relation row's fact phrased with ``template``: ``first`` is the object (index into
    ``objects``) in the ``{a}`` slot (perspective: None, the object is ``{a}`` and the person
    ``{b}``); ``boxed[k]``: object ``k`` is mentioned with its box. Returns the new ``question``,
    ``answer``, ``objects`` (in mention order) and ``fact``, and ``_swap_depths`` when the fact's
    subject changed.

    >>> from spatialforge.processing.tasks.templates import TEMPLATES
    >>> row = {"task": "near_far", "question": "", "objects": [{"label": "Cup", "bbox": [1, 2, 3, 4]}, {"label": "Car", "bbox": [5, 6, 7, 8]}],
    ...        "fact": {"subject": 0, "predicate": "nearer_than", "object": 1, "frame": "camera"}}
    >>> new = rephrase(row, TEMPLATES["near_far"][5], 1, [True, False])
    >>> new["question"], new["answer"], new["fact"]
    ('Is the car farther from the camera than the cup at [1, 2, 3, 4]?', 'Yes.', {'subject': 0, 'predicate': 'farther_than', 'object': 1, 'frame': 'camera'})
    """
    from ..tasks.templates import OPPOSITE as FLIP
    from ..tasks.templates import display_label, relation_fact, sentence
    from ..tasks.verify import box_text

    objects, fact = row["objects"], row["fact"]
    if first is None:
        a, b, pred_a = fact["subject"], fact["object"], fact["predicate"]
    else:
        h = holder(row)
        a, b = first, 1 - first
        pred_a = CANONICAL[row["task"]] if a == h else FLIP[CANONICAL[row["task"]]]

    def mention(k: int) -> str:
        text = f"the {display_label(objects[k]['label'])}"
        return f"{text} at {box_text(objects[k]['bbox'])}" if boxed[k] else text

    triple, answer = relation_fact(template, a, b, pred_a)
    slots = {k: mention(v) if k == "answer" else v for k, v in answer.items()}
    slots["a"], slots["b"] = mention(a), mention(b)
    role = {"a": a, "b": b}
    order = [role[r] for r in template.roles]
    return {
        "question": sentence(template.question.format(**slots)),
        "answer": sentence(template.answer.format(**slots)),
        "objects": [objects[k] for k in order],
        "fact": {"subject": order.index(triple[0]), "predicate": triple[1], "object": order.index(triple[2]),
                 "frame": fact["frame"]},
        "_swap_depths": triple[0] != fact["subject"],
    }


def _read(path: Path, columns: Sequence[str] | None = None):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=list(columns) if columns else None)


REBALANCED = b"spatialforge_rebalanced"
"""Parquet schema-metadata key of a shard this pass wrote (a fresh shard of the writer lacks it)."""


def rebalance(out_dir: str | os.PathLike, seed: int = 0, tasks: Sequence[str] = RELATION_TASKS) -> Counter:
    """Rewrite the relation shards of a dataset folder balanced (:func:`select_balanced` over every
    shard of a task at once); returns the rows dropped per task.

    The writer's shards are kept under ``.spatialforge/unbalanced/`` and the selection is always made
    from them, so running it again (a resumed run that redid a shard) gives the same files.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cost: Counter = Counter()
    for task in tasks:
        paths = sorted(Path(out_dir, DATA_DIR, task).glob("*.parquet"))
        if not paths:
            continue
        store = Path(out_dir, ".spatialforge", "unbalanced", task)
        store.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if REBALANCED not in (pq.read_schema(path).metadata or {}):  # fresh from the writer
                tmp = store / f"{path.name}.tmp-{os.getpid()}"
                tmp.write_bytes(path.read_bytes())
                os.replace(tmp, store / path.name)
        tables = [_read(store / p.name) for p in paths]
        rows = [r for t in tables for r in t.select(list(_READ)).to_pylist()]
        keep, lost = select_balanced(rows, seed)
        cost.update(lost)
        twins = twin_phrasings(rows, keep, seed)
        start = 0
        for path, table in zip(paths, tables):
            mask = keep[start:start + table.num_rows]
            changed = {k - start: v for k, v in twins.items() if start <= k < start + table.num_rows}
            if changed:
                table = _rephrased(table, changed, rows[start:start + table.num_rows])
            start += table.num_rows
            kept = table.filter(pa.array(mask, type=pa.bool_()))
            kept = kept.replace_schema_metadata({**(table.schema.metadata or {}), REBALANCED: b"1"})
            tmp = path.with_name(f"{path.name}.rebalance-{os.getpid()}")
            if not kept.num_rows:  # no row group at all, as the writer does
                pq.ParquetWriter(tmp, kept.schema).close()
            else:
                pq.write_table(kept, tmp)
            os.replace(tmp, path)
    return cost


def question_words(question: str) -> list[str]:
    """Lower-case words of a question with box coordinates (every number) removed."""
    return _WORD.findall(_NUMBER.sub(" ", question.lower()))


@functools.lru_cache(maxsize=1)
def _template_words() -> frozenset[str]:
    """Words of the relation templates' own text (slots left out), with the mentions' "the" and "at"."""
    from ..tasks.templates import TEMPLATES

    words = {"the", "at"}
    for task in CANONICAL:
        for t in TEMPLATES[task]:
            words.update(question_words(re.sub(r"\{[a-z_]+\}", " ", t.question)))
    return frozenset(words)


def _features(questions: Sequence[Sequence[str]]) -> _Design:
    """Of each question's words (:func:`question_words`): bag of words and word pairs (binary),
    the other words numbered by the run of them they are in (``1:cup``, ``2:car``: which object is
    named first, as a reader of the sentence sees it; "the cup at [..] ... the car at [..]" and the
    other order have the same words and word pairs), plus a bias column (the last)."""
    template = _template_words()
    docs = []
    for w in questions:
        doc = set(w) | {f"{a} {b}" for a, b in zip(w, w[1:])}
        run, inside = 0, False
        for word in w:
            if word in template:
                inside = False
                continue
            if not inside:
                run, inside = run + 1, True
            doc.add(f"{run}:{word}")
        docs.append(doc)
    vocab = {t: i for i, t in enumerate(sorted(set().union(*docs)))} if docs else {}
    bias = len(vocab)
    return _Design([np.array(sorted([vocab[t] for t in d]) + [bias], dtype=np.intp) for d in docs], bias + 1)


class _Design:
    """A binary feature matrix, by row as its columns: a question has a few dozen features of a
    vocabulary that grows to thousands once hundreds of labels show up.

    ``gram(h)`` is ``X.T @ diag(h) @ X``. For a small vocabulary, one dense product costs least
    (rows x vocabulary squared). For a large one, the sum over the column pairs each row has costs
    rows x features-per-row squared instead: at 20,000 rows of 365 labels' questions (2,107
    features), 1.8 s a fit against 14 s on one core (``benchmarks/blind_baseline.py``). Both give
    the same weights to rounding.
    """

    DENSE_FACTOR = 400  # dense while vocabulary squared <= this x the mean pairs per row (BLAS against bincount)

    def __init__(self, columns: Sequence[np.ndarray], width: int) -> None:
        self.width = width
        counts = np.array([len(c) for c in columns], dtype=np.intp)
        self.starts = np.cumsum(counts) - counts
        self.indices = np.concatenate(columns) if len(columns) else np.zeros(0, np.intp)
        self.row_of = np.repeat(np.arange(len(columns), dtype=np.int32), counts)
        self.dense: np.ndarray | None = None
        if width * width <= self.DENSE_FACTOR * max(float(np.mean(counts * counts)) if len(counts) else 0.0, 1.0):
            self.dense = np.zeros((len(columns), width))
            self.dense[self.row_of, self.indices] = 1.0
            return
        wide = np.int64 if width * width >= 2**31 else np.int32
        self.pairs = np.concatenate([(c[:, None] * width + c[None, :]).ravel() for c in columns]).astype(wide)
        self.pair_row = np.repeat(np.arange(len(columns), dtype=np.int32), counts * counts)

    def dot(self, w: np.ndarray) -> np.ndarray:
        """``X @ w`` (every row has its bias column, so none is empty)."""
        if self.dense is not None:
            return self.dense @ w
        return np.add.reduceat(w[self.indices], self.starts)

    def tdot(self, r: np.ndarray) -> np.ndarray:
        """``X.T @ r``."""
        if self.dense is not None:
            return self.dense.T @ r
        return np.bincount(self.indices, weights=r[self.row_of], minlength=self.width)

    def gram(self, h: np.ndarray) -> np.ndarray:
        """``X.T @ diag(h) @ X`` (features x features)."""
        if self.dense is not None:
            return (self.dense * h[:, None]).T @ self.dense
        return np.bincount(self.pairs, weights=h[self.pair_row], minlength=self.width * self.width).reshape(
            self.width, self.width)


def _fit_logistic(x: _Design, y: np.ndarray, weight: np.ndarray, l2: float = 1.0, iterations: int = 25) -> np.ndarray:
    """L2-regularized logistic regression by Newton's method (numpy only), each row's loss times
    its ``weight`` (0: a held-out row)."""
    w = np.zeros(x.width)
    reg = np.full(x.width, l2)
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x.dot(w), -30, 30)))
        grad = x.tdot(weight * (p - y)) + reg * w
        hess = x.gram(weight * p * (1 - p)) + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def blind_baseline(rows: Sequence[Mapping[str, Any]], folds: int = 5, seed: int = 0,
                   repeats: int = BLIND_REPEATS) -> dict[str, Any] | None:
    """Cross-validated accuracy of a text-only model predicting :func:`first_holds` from the
    question's words, beside the majority rate; None with fewer than ``2 * folds`` rows.

    The cross-validation is repeated ``repeats`` times with a different seeded assignment of rows
    to folds: ``accuracy`` is the mean, ``spread`` the standard deviation over the repeats (what
    the choice of folds alone moves it by). ``stderr`` is the binomial standard error of an
    accuracy measured on ``rows`` rows: the repeats cannot remove what the rows themselves leave
    open, so a gap to the majority smaller than about two ``stderr`` is not resolved (a few dozen
    rows leave about ten points open either way).
    """
    if len(rows) < 2 * folds:
        return None
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    order = sorted(range(len(rows)), key=lambda k: _rank(seed, rows[k]["id"]))
    if len(order) > BLIND_MAX_ROWS:
        order = order[:BLIND_MAX_ROWS]
    y = np.array([first_holds(rows[k]) for k in order], float)
    words = [question_words(rows[k]["question"]) for k in order]
    texts = [" ".join(w) for w in words]
    x = _features(words)
    accuracies = []
    for r in range(repeats):
        # Repeat 0 keeps the sample's own order; later repeats deal the rows to folds afresh.
        draw = np.arange(len(order)) if r == 0 else np.argsort([_rank(seed, f"{r}\x1f{rows[k]['id']}") for k in order])
        fold = text_folds(draw, texts, y, folds)
        correct = 0
        for f in range(folds):
            test = fold == f
            w = _fit_logistic(x, y, (~test).astype(float))
            correct += int(((x.dot(w)[test] > 0) == (y[test] > 0.5)).sum())
        accuracies.append(correct / len(order))
    accuracy = float(np.mean(accuracies))
    majority = float(max(y.mean(), 1 - y.mean()))
    return {"rows": len(order), "accuracy": accuracy, "majority": majority, "repeats": repeats,
            "spread": float(np.std(accuracies)), "stderr": float(np.sqrt(accuracy * (1 - accuracy) / len(order)))}


def text_folds(draw: np.ndarray, texts: Sequence[str], targets: np.ndarray, folds: int) -> np.ndarray:
    """Fold of each row: every row of a text (its words, box coordinates removed) that has as many
    rows with one answer as with the other goes to one fold; every other row goes on its own;
    units are dealt round robin in the order their first row is drawn.

    A text with both answers equally often (what :func:`twin_phrasings` makes) scores half right
    under any text-only model when held out whole. Split over folds it misleads: each held-out row
    is scored by what its copies in training say, the other answer more often than not, and an
    exactly balanced set scores below the majority rate. The rest is dealt as plain folds deal it.

    >>> text_folds(np.arange(5), ["a", "a", "b", "b", "b"], np.array([1, 0, 1, 1, 0]), 2).tolist()
    [0, 0, 1, 0, 1]
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t, y in zip(texts, targets):
        counts[t][int(bool(y))] += 1
    units: dict[Any, int] = {}
    unit = np.empty(len(texts), int)
    for k in draw.tolist():
        c = counts[texts[k]]
        name = texts[k] if c[0] == c[1] else k
        unit[k] = units.setdefault(name, len(units))
    return unit % folds


def blind_baselines(out_dir: str | os.PathLike, seed: int = 0, tasks: Sequence[str] = RELATION_TASKS) -> dict[str, Any]:
    """:func:`blind_baseline` of each relation task of a dataset folder (tasks with rows)."""
    out = {}
    for task in tasks:
        paths = sorted(Path(out_dir, DATA_DIR, task).glob("*.parquet"))
        rows = [r for p in paths for r in _read(p, ["id", "task", "question", "answer", "objects", "fact"]).to_pylist()]
        result = blind_baseline(rows, seed=seed)
        if result is not None:
            out[task] = result
    return out


def finalize(out_dir: str | os.PathLike, stats: dict[str, Any], seed: int = 0, balance: bool = True,
             synthetic: bool = False) -> None:
    """The executor's last step: rebalance the relation rows (counted in ``stats``), measure the
    blind baseline, then write the card."""
    from ...builders.card import write_card

    if balance:
        cost = rebalance(out_dir, seed)
        drops = stats.setdefault("candidate_drops", {})
        rows = stats.setdefault("rows_per_task", {})
        for task, n in sorted(cost.items()):
            if n:
                drops[f"{task}/rebalanced"] = drops.get(f"{task}/rebalanced", 0) + n
                rows[task] = rows.get(task, 0) - n
        stats["candidate_drops"] = dict(sorted(drops.items()))
        stats["rows_total"] = sum(rows.values())
    stats["blind_baseline"] = blind_baselines(out_dir, seed)
    write_card(out_dir, stats, synthetic=synthetic)
