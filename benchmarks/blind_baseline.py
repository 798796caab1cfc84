"""The blind baseline on questions about hundreds of labels: the column-pair Hessian beside the dense one.

``blind_baseline`` (what ``spatialforge generate`` runs on every relation task when a dataset is
finished, on up to ``BLIND_MAX_ROWS`` rows) fits an L2 logistic regression by Newton's method. With a
few labels the vocabulary is small and one dense product per Newton step costs least; with the 365
Objects365 labels (or OpenImages' 600) it grows to thousands of features, and the Hessian is built
from the column pairs each question has instead (:class:`spatialforge.processing.output.balance._Design`).

Inputs: the relation rows of rendered scenes (every verified candidate), each row's labels redrawn
from the Objects365 categories (the same label of a row gets the same new one; questions and
``objects`` rewritten alike), dealt out to ``--rows`` rows. Both paths run ``blind_baseline`` on the
same rows in this process, alternately, ``--rounds`` times on one core (the best round counts); the
dense path is forced by raising ``_Design.DENSE_FACTOR``. Prints the features, both times, their
ratio and whether the two results are equal.

    python benchmarks/blind_baseline.py                 # 20,000 near_far rows (BLIND_MAX_ROWS), 1 round
    python benchmarks/blind_baseline.py --rows 5000 --rounds 3
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: BLAS threads would favour the dense path

import argparse  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from spatialforge.processing.output import balance  # noqa: E402
from spatialforge.processing.perception.facing import FacingFromKeypoints  # noqa: E402
from spatialforge.processing.perception.objects365_labels import OBJECTS365_CATEGORIES  # noqa: E402
from spatialforge.processing.synth.scenes import VARIANTS, make_scenes, variant_record  # noqa: E402
from spatialforge.processing.tasks.step import TaskStep  # noqa: E402


def relation_rows(task: str, scenes: int, seed: int) -> list[dict]:
    """Every verified ``task`` candidate of ``scenes`` rendered scenes, as rows."""
    step = TaskStep(tasks=(task,), seed=seed, max_per_task={task: None}, on_invalid_row="error")
    facing = FacingFromKeypoints()
    out = []
    for s in make_scenes(scenes, seed=seed, width=320, height=240):
        out += step.process(facing.process(variant_record(s, VARIANTS["exact"]))).rows
    return out


def relabeled(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows dealt from ``rows``, each with its labels redrawn from the Objects365 categories."""
    rng = random.Random(seed)
    names = [c.lower() for c in OBJECTS365_CATEGORIES]
    out = []
    for k in range(n):
        row = rows[k % len(rows)]
        labels = sorted({o["label"].lower() for o in row["objects"]}, key=len, reverse=True)
        new = {label: rng.choice(names) for label in labels}
        pattern = re.compile("|".join(r"\b" + re.escape(label) + r"\b" for label in labels))
        swap = lambda text: pattern.sub(lambda m: new[m.group(0)], text)  # noqa: E731
        out.append({**row, "id": f"{row['id']}-{k}", "question": swap(row["question"]), "answer": swap(row["answer"]),
                    "objects": [{**o, "label": new[o["label"].lower()]} for o in row["objects"]]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="near_far", choices=("near_far", "left_right", "perspective"))
    parser.add_argument("--rows", type=int, default=balance.BLIND_MAX_ROWS)
    parser.add_argument("--scenes", type=int, default=300, help="rendered scenes the rows are drawn from")
    parser.add_argument("--repeats", type=int, default=1, help="cross-validations per blind_baseline call")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    t0 = time.perf_counter()
    base = relation_rows(args.task, args.scenes, args.seed)
    rows = relabeled(base, args.rows, args.seed)
    design = balance._features([balance.question_words(r["question"]) for r in rows])
    print(f"inputs: {len(rows)} {args.task} rows dealt from {len(base)} of {args.scenes} scenes, labels redrawn from "
          f"{len(OBJECTS365_CATEGORIES)} categories; {design.width} features, "
          f"{'dense' if design.dense is not None else 'column-pair'} Hessian chosen ({time.perf_counter() - t0:.1f}s to build)")
    factor = balance._Design.DENSE_FACTOR
    best = {"dense": float("inf"), "pairs": float("inf")}
    results = {}
    for _ in range(max(1, args.rounds)):
        for name, f in (("dense", float("inf")), ("pairs", 0.0)):
            balance._Design.DENSE_FACTOR = f
            try:
                start = time.perf_counter()
                results[name] = balance.blind_baseline(rows, repeats=args.repeats)
                best[name] = min(best[name], time.perf_counter() - start)
            finally:
                balance._Design.DENSE_FACTOR = factor
    fits = 5 * args.repeats
    print(f"dense Hessian:       {best['dense']:7.2f} s  ({best['dense'] / fits:.2f} s a fit)")
    print(f"column-pair Hessian: {best['pairs']:7.2f} s  ({best['pairs'] / fits:.2f} s a fit)")
    print(f"ratio dense / column-pair: {best['dense'] / best['pairs']:.2f} (best of {max(1, args.rounds)} rounds, "
          f"{args.repeats} cross-validation(s) of 5 folds each)")
    same = results["dense"] == results["pairs"]
    print(f"results equal: {same}  {results['pairs']}")


if __name__ == "__main__":
    main()
