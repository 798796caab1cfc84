"""No answers without looking: after rebalancing, a text-only model is no better than the majority.

Scene categories stand at category-typical distances (cups 1-3 m, cars 6-25 m, see
``synth.CATEGORIES``): a deliberate label-depth correlation, so that "the cup or the car?" is
answerable from the labels alone before rebalancing.
"""

from collections import Counter

import pytest

from _relation_rows import by_task, relation_rows
from spatialforge.processing.output.balance import (
    balance_key,
    blind_baseline,
    first_holds,
    question_words,
    select_balanced,
)
from spatialforge.processing.synth.scenes import make_scenes

pytestmark = pytest.mark.slow  # about 20 s: 300 scenes through the relation tasks


@pytest.fixture(scope="module")
def rows():
    return relation_rows(make_scenes(300, seed=21, width=160, height=120))


def test_question_words_drop_box_coordinates():
    assert question_words("Is the cup at [12, 400, 250, 999] left of the dog?") == ["is", "the", "cup", "at", "left", "of", "the", "dog"]


def test_label_priors_are_learnable_before_rebalancing(rows):
    blind = blind_baseline(by_task(rows, "near_far"))
    assert blind["rows"] >= 500
    assert blind["accuracy"] > blind["majority"] + 0.03, blind  # the test below could fail


@pytest.mark.parametrize("task", ["near_far", "left_right"])
def test_blind_baseline_is_within_three_points_of_the_majority_after_rebalancing(rows, task):
    task_rows = by_task(rows, task)
    keep, cost = select_balanced(task_rows, seed=0)
    kept = [r for r, k in zip(task_rows, keep) if k]
    blind = blind_baseline(kept)
    print(f"\n{task}: {len(task_rows)} rows, {cost[task]} dropped by rebalancing, blind {blind}")
    assert cost[task] == len(task_rows) - len(kept) > 0
    assert blind["rows"] >= 200
    assert blind["accuracy"] <= blind["majority"] + 0.03, blind
    # Every group is exactly balanced: as many rows with each side of the pair holding the relation.
    sides = Counter(balance_key(r) for r in kept if balance_key(r) is not None)
    for (group, side), n in sides.items():
        assert sides.get((group, not side), 0) == n, group


def test_rebalancing_twice_keeps_everything(rows):
    task_rows = by_task(rows, "near_far")
    keep, _ = select_balanced(task_rows, seed=0)
    kept = [r for r, k in zip(task_rows, keep) if k]
    again, cost = select_balanced(kept, seed=0)
    assert all(again) and not cost


def test_first_holds_reads_the_fact():
    row = {"task": "near_far", "objects": [{"label": "cup"}, {"label": "car"}],
           "fact": {"subject": 1, "predicate": "farther_than", "object": 0}}
    assert first_holds(row)  # the car is farther than the cup: the cup, named first, is nearer
    row["fact"]["predicate"] = "nearer_than"
    assert not first_holds(row)
