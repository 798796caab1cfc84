"""The blind baseline on scenes built to be answerable from the labels, and what rebalancing costs.

``synth.CORRELATED_CONFIG`` places people always in front (2-5 m), cars, traffic lights and
benches behind (10-30 m), walls behind everything and fire hydrants in the image's left third: a
text-only model reads "the person ... the car" and knows the nearer one. The truth of that
correlation is checked on the scenes' own 3D truth, not on the rows. After the rebalancing pass, a
text-only model must be within 3 points of the majority rate on every relation task, with the rows
it cost counted; the repeated cross-validation and its standard error are checked on rows whose
answer the words do or do not carry.
"""

from collections import Counter

import numpy as np
import pytest

from _relation_rows import by_task, relation_rows
from spatialforge.builders.schema import RELATION_TASKS
from spatialforge.processing.output.balance import balance_rows, blind_baseline
from spatialforge.processing.synth.scenes import CORRELATED_CONFIG, make_scenes

N_SCENES = 700


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(N_SCENES, seed=31, width=160, height=120, config=CORRELATED_CONFIG)


@pytest.fixture(scope="module")
def rows(scenes):
    # No per-image caps: every verified candidate, so that the baseline has rows enough to resolve 3 points.
    return relation_rows(scenes)


@pytest.mark.slow
def test_the_family_carries_the_correlation_in_its_truth(scenes):
    nearer, hydrant_u = Counter(), []
    for s in scenes:
        people = [o for o in s.objects if o.category == "Person"]
        behind = [o for o in s.objects if o.category in ("Car", "Traffic Light", "Bench")]
        nearer.update(p.depth < o.depth for p in people for o in behind)
        hydrant_u += [o.center_cam[0] / o.center_cam[2] * s.camera.fx + s.camera.cx for o in s.objects
                      if o.category == "Fire Hydrant"]
    assert nearer[True] > 500 and nearer[False] == 0
    assert len(hydrant_u) > 50 and max(hydrant_u) < 160 / 2


@pytest.mark.slow
def test_labels_answer_the_questions_before_rebalancing(rows):
    near_far = blind_baseline(by_task(rows, "near_far"))
    assert near_far["accuracy"] > near_far["majority"] + 0.15, near_far
    hydrant = [r for r in by_task(rows, "left_right") if "fire hydrant" in {o["label"].lower() for o in r["objects"]}]
    blind = blind_baseline(hydrant)
    assert blind["rows"] >= 100 and blind["accuracy"] > blind["majority"] + 0.15, blind


@pytest.mark.slow
@pytest.mark.parametrize("task", RELATION_TASKS)
def test_rebalanced_rows_leave_a_text_only_model_within_three_points(rows, task):
    task_rows = by_task(rows, task)
    kept, cost = balance_rows(task_rows, seed=0)
    before, after = blind_baseline(task_rows), blind_baseline(kept)
    print(f"\n{task}: {len(task_rows)} rows, {cost[task]} rebalanced away; before {before}; after {after}")
    assert cost[task] == len(task_rows) - len(kept) > 0
    assert after["rows"] >= 200
    assert after["accuracy"] <= after["majority"] + 0.03, after
    # The rows are enough to tell: the standard error is a few points at most.
    assert after["stderr"] <= 0.035 and after["spread"] < after["stderr"], after


def _rows(targets, words):
    return [{"id": f"r{k}", "task": "left_right", "question": f"Is the {w} cup left of the car?",
             "answer": "Yes.", "objects": [{"label": "cup"}, {"label": "car"}],
             "fact": {"subject": 0 if t else 1, "predicate": "left_of", "object": 1 if t else 0}}
            for k, (t, w) in enumerate(zip(targets, words))]


def test_the_baseline_reads_what_the_words_carry_and_nothing_else():
    rng = np.random.default_rng(0)
    targets = rng.random(600) < 0.5
    told = blind_baseline(_rows(targets, np.where(targets, "red", "blue")))
    assert told["accuracy"] == 1.0 and told["spread"] == 0.0 and told["stderr"] == 0.0
    # Words drawn regardless of the answer, from enough of them that most rows have no partner of
    # the same text with the other answer (partners score one right, one wrong, whatever the folds).
    words = [a + b for a in "bcdfg" for b in "aeiou"]
    noise = blind_baseline(_rows(targets, rng.choice(words, 600)))
    assert abs(noise["accuracy"] - 0.5) <= 3 * noise["stderr"], noise
    assert noise["stderr"] == pytest.approx(np.sqrt(noise["accuracy"] * (1 - noise["accuracy"]) / 600))
    assert noise["repeats"] == 5 and noise["spread"] > 0
    assert blind_baseline(_rows(targets, ["red"] * 600), repeats=1)["spread"] == 0.0
    with pytest.raises(ValueError, match="repeats"):
        blind_baseline(_rows(targets, ["red"] * 600), repeats=0)


@pytest.mark.slow
def test_the_correlated_demo_reports_baseline_and_cost_in_its_cards(tmp_path):
    from spatialforge.processing.synth.demo import run_demo

    result = run_demo(tmp_path / "d", scenes=120, seed=3, passes=("exact",), load=False, family="correlated")
    stats = result.stats["exact"]
    card = (tmp_path / "d" / "dataset-exact" / "README.md").read_text()
    assert "## Blind baseline" in card and "| standard error |" in card
    for task in ("near_far", "left_right"):
        b = stats["blind_baseline"][task]
        assert f"| {task} | {b['rows']:,} | {b['accuracy']:.3f} | {b['spread']:.3f} | {b['stderr']:.3f} |" in card
        cost = stats["candidate_drops"][f"{task}/rebalanced"]
        assert cost > 0 and f"{cost:,}" in card
    with pytest.raises(ValueError, match="family"):
        run_demo(tmp_path / "e", scenes=1, family="nope")


def test_the_column_pair_products_are_the_dense_ones():
    """On a vocabulary large against the features of a row, the Hessian comes from the column pairs
    each row has; it, ``X @ w`` and ``X.T @ r`` must be the dense matrix's own products."""
    from spatialforge.processing.output.balance import _Design

    rng = np.random.default_rng(3)
    width = 400
    columns = [np.array(sorted(rng.choice(width - 1, size=rng.integers(1, 12), replace=False).tolist() + [width - 1]))
               for _ in range(300)]
    design = _Design(columns, width)
    assert design.dense is None  # 400 features against at most 12 a row: the column-pair path
    dense = np.zeros((len(columns), width))
    for k, c in enumerate(columns):
        dense[k, c] = 1.0
    w, h = rng.normal(size=width), rng.random(len(columns))
    np.testing.assert_allclose(design.dot(w), dense @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(design.tdot(h), dense.T @ h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(design.gram(h), dense.T @ (dense * h[:, None]), rtol=1e-12, atol=1e-12)


def test_both_hessians_give_the_same_baseline(monkeypatch):
    from spatialforge.processing.output import balance

    rng = np.random.default_rng(1)
    targets = rng.random(300) < 0.5
    words = [a + b + c for a in "bcdfg" for b in "aeiou" for c in "lmnrst"]  # 150 words: a vocabulary larger than any row
    rows = _rows(targets, np.where(targets & (rng.random(300) < 0.7), "red", rng.choice(words, 300)))
    results = {}
    for name, factor in (("dense", float("inf")), ("pairs", 0.0)):
        monkeypatch.setattr(balance._Design, "DENSE_FACTOR", factor)
        results[name] = blind_baseline(rows)
    assert results["dense"] == results["pairs"]
    assert results["pairs"]["accuracy"] > results["pairs"]["majority"] + 0.15  # "red" tells most first-holds rows
