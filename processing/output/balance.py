"""No answers without looking: relation rows a text-only model could answer from the question alone.

A relation question names two objects; which of them is the nearer (or the left) one is the
answer. Photos carry strong label priors (people nearer than buildings, cups nearer than cars), so
a model that reads only "the cup ... the car" could answer from the labels. Two dataset-level
passes, run when a dataset folder is finished (:func:`finalize`):

* :func:`rebalance` keeps, per relation task, question form (yes/no or naming) and unordered label
  pair, as many rows where the first label holds the relation (nearer, left of, on the person's
  left) as where the second does: a seeded selection of the larger side, the rest dropped and
  counted (``<task>/rebalanced``). Pairs of one label (two cups) tell a text-only model nothing and
  are kept whole.
* :func:`blind_baseline` measures what is left: a logistic regression on the question's words
  (box coordinates removed), cross-validated, predicting whether the first-named object holds the
  relation, against the majority rate of that target. The card reports both per task.

Example:
    >>> row = {"task": "near_far", "question": "Is the cup at [1, 2, 3, 4] nearer than the car?", "answer": "Yes.",
    ...        "objects": [{"label": "cup"}, {"label": "car"}], "fact": {"subject": 0, "predicate": "nearer_than", "object": 1}}
    >>> first_holds(row), question_words(row["question"])[:4]
    (True, ['is', 'the', 'cup', 'at'])
"""

from __future__ import annotations

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
    choice of as many as the smaller), and how many rows each task loses."""
    groups: dict[tuple, dict[bool, list[int]]] = defaultdict(lambda: {True: [], False: []})
    keep = [True] * len(rows)
    for k, row in enumerate(rows):
        key = balance_key(row)
        if key is not None:
            groups[key[0]][key[1]].append(k)
    cost: Counter = Counter()
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
        rows = [r for t in tables for r in t.select(["id", "task", "answer", "objects", "fact"]).to_pylist()]
        keep, lost = select_balanced(rows, seed)
        cost.update(lost)
        start = 0
        for path, table in zip(paths, tables):
            mask = keep[start:start + table.num_rows]
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


def _features(questions: Sequence[str]) -> np.ndarray:
    """Bag of words and word pairs (binary), plus a bias column."""
    docs = []
    for q in questions:
        w = question_words(q)
        docs.append(set(w) | {f"{a} {b}" for a, b in zip(w, w[1:])})
    vocab = {t: i for i, t in enumerate(sorted(set().union(*docs)))} if docs else {}
    x = np.zeros((len(docs), len(vocab) + 1))
    for i, d in enumerate(docs):
        x[i, [vocab[t] for t in d]] = 1.0
    x[:, -1] = 1.0
    return x


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 25) -> np.ndarray:
    """L2-regularized logistic regression by Newton's method (numpy only)."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-9)
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
    x = _features([rows[k]["question"] for k in order])
    accuracies = []
    for r in range(repeats):
        # Repeat 0 keeps the sample's own order; later repeats deal the rows to folds afresh.
        draw = np.arange(len(order)) if r == 0 else np.argsort([_rank(seed, f"{r}\x1f{rows[k]['id']}") for k in order])
        fold = np.empty(len(order), int)
        fold[draw] = np.arange(len(order)) % folds
        correct = 0
        for f in range(folds):
            train, test = fold != f, fold == f
            w = _fit_logistic(x[train], y[train])
            correct += int(((x[test] @ w > 0) == (y[test] > 0.5)).sum())
        accuracies.append(correct / len(order))
    accuracy = float(np.mean(accuracies))
    majority = float(max(y.mean(), 1 - y.mean()))
    return {"rows": len(order), "accuracy": accuracy, "majority": majority, "repeats": repeats,
            "spread": float(np.std(accuracies)), "stderr": float(np.sqrt(accuracy * (1 - accuracy) / len(order)))}


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
