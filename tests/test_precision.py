"""Precision of the generated QA against scenes whose truth is known.

Records are built in memory from synthetic scenes (no files), run through the facing step and the
task step with the default ``VerifyConfig``, and every row is judged from its structured answer
(see ``processing/evaluate.py`` for the truth definitions). Tables print with ``pytest -s``.

Two gaps the verification may or may not close yet are tested only when ``VerifyConfig`` has the
setting that closes them (otherwise they xfail, naming the gap):

* near/far on objects that cover little of their own box (an umbrella: a thin pole under a
  canopy): a box depth that ignores this measures the ground seen through the object
  (``max_near_share``);
* perspective for people turned 10-25 degrees from the camera, about objects at a very different
  depth: mirroring the image's left/right is then wrong in the person's own frame unless the
  offset across the camera-person ray outweighs the offset along it (``perspective_max_yaw_deg``).

Without those, precision is still asserted where the geometry makes box depth and image mirroring
exact: objects filling at least ``MIN_FILL`` of their box, people facing the camera exactly.
"""

import dataclasses
from collections import Counter

import pytest

from spatialforge.builders.schema import TASKS, validate_row
from spatialforge.processing.synth.evaluate import evaluate, format_report
from spatialforge.processing.perception.facing import FacingFromKeypoints
from spatialforge.processing.synth.scenes import SceneConfig, corrupt_depth, make_scenes, scene_record, scene_rng, truth_of

pytestmark = pytest.mark.slow  # about 15 s: 440 scenes through the task step (exact and monocular-like depth)

tasks_mod = pytest.importorskip("spatialforge.processing.tasks.step")
verify_mod = pytest.importorskip("spatialforge.processing.tasks.verify")

N_SCENES = 240
MIN_FILL = 0.3  # objects covering less of their box than this are outside what box depth can measure


def _run(records, tasks=TASKS):
    steps = [FacingFromKeypoints(), tasks_mod.TaskStep(tasks=tasks, seed=0, config=verify_mod.VerifyConfig())]
    rows, drops = [], Counter()
    stream = records
    for step in steps:
        stream = step.run(stream)
    for record in stream:
        rows.extend(record.rows)
        drops.update(record.drops)
    return rows, drops


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(N_SCENES, seed=11)


@pytest.fixture(scope="module")
def exact(scenes):
    rows, drops = _run(scene_record(s) for s in scenes)
    return rows, drops, truth_of(scenes)


@pytest.fixture(scope="module")
def monocular(scenes):
    def records():
        for s in scenes:
            inv = corrupt_depth(s.depth, s.instances, scene_rng(s.seed, s.index, "corrupt"))
            yield scene_record(s, depth=inv, depth_kind="inverse_depth")

    rows, drops = _run(records(), tasks=("near_far", "perspective"))
    return rows, drops, truth_of(scenes)


def test_rows_follow_the_schema(exact):
    rows, _, _ = exact
    for row in rows:
        validate_row(row)


@pytest.mark.parametrize("task", ["grounding", "referring", "counting", "left_right"])
def test_exact_on_exact_depth(exact, task):
    rows, drops, truth = exact
    report = evaluate(rows, truth, drops)
    print("\n" + format_report(report, f"exact depth, {N_SCENES} scenes"))
    rep = report[task]
    assert rep.rows >= 100, f"too few {task} rows to measure: {rep.rows} ({dict(rep.drop_reasons)})"
    assert rep.precision == 1.0, f"{task}: {rep.wrong} wrong of {rep.rows}: {rep.failures[:3]}"


def test_near_far_exact_on_objects_that_fill_their_box(exact):
    rows, drops, truth = exact
    rep = evaluate(rows, truth, drops, min_fill=MIN_FILL)["near_far"]
    print(f"\nnear_far, exact depth: {rep.rows} rows judged, {rep.excluded} excluded (fill < {MIN_FILL}), "
          f"yield {rep.yield_:.3f}, precision {rep.precision:.4f}")  # fmt: skip
    assert rep.rows >= 300 and rep.excluded < 0.2 * rep.accepted
    assert rep.precision == 1.0, rep.failures[:3]


def _handles(field: str, gap: str) -> None:
    """xfail (naming the gap) unless the verification has the setting that closes it."""
    if field not in {f.name for f in dataclasses.fields(verify_mod.VerifyConfig)}:
        pytest.xfail(f"verification without VerifyConfig.{field}: {gap}")


def test_near_far_exact_on_every_object(exact):
    _handles("max_near_share", "box depth of open shapes (umbrella) measures the background behind them")
    rows, drops, truth = exact
    rep = evaluate(rows, truth, drops)["near_far"]
    print(f"\nnear_far, exact depth, every object: {rep.rows} rows, yield {rep.yield_:.3f}, precision {rep.precision:.4f}")
    assert rep.precision == 1.0, [(f["id"], f["depth_subject"], f["depth_object"], f["fills"]) for f in rep.failures]


def test_near_far_survives_monocular_like_depth(monocular):
    rows, drops, truth = monocular
    everything = evaluate(rows, truth, drops)["near_far"]
    rep = evaluate(rows, truth, drops, min_fill=MIN_FILL)["near_far"]
    print(f"\nnear_far, monocular-like depth: {rep.rows} rows judged ({rep.excluded} excluded, fill < {MIN_FILL}), "
          f"yield {rep.yield_:.3f}, precision {rep.precision:.4f}; every object: precision {everything.precision:.4f}")  # fmt: skip
    assert rep.rows >= 300, f"too few near_far rows to measure: {rep.rows} ({dict(rep.drop_reasons)})"
    assert rep.precision >= 0.99, rep.failures[:3]
    # Every object, open shapes (umbrellas) included: relative depth is trusted for order only.
    assert everything.rows >= 300
    assert everything.precision >= 0.99, [(f["id"], f["depth_subject"], f["depth_object"], f["fills"]) for f in everything.failures]


def test_perspective_survives_monocular_like_depth(monocular):
    # Relative inverse depth (unknown scale and shift, per-object bias) is not a distance: the
    # lateral check of turned people must not read it as one.
    rows, drops, truth = monocular
    rep = evaluate(rows, truth, drops)["perspective"]
    print(f"\nperspective, monocular-like depth: {rep.rows} rows, yield {rep.yield_:.3f}, precision {rep.precision:.4f}")
    assert rep.rows >= 150, f"too few perspective rows to measure: {rep.rows} ({dict(rep.drop_reasons)})"
    assert rep.precision >= 0.99, [(f["id"], f["lateral_m"], f["ahead_m"], f["yaw_to_camera_deg"]) for f in rep.failures]


def test_perspective_exact_when_people_face_the_camera_exactly():
    # People facing the camera (or directly away from it): mirroring the image is the person's frame.
    scenes = make_scenes(200, seed=12, config=SceneConfig(facing_jitter_deg=0.0))
    rows, drops = _run((scene_record(s) for s in scenes), tasks=("perspective",))
    rep = evaluate(rows, truth_of(scenes), drops)["perspective"]
    print(f"\nperspective, facing exactly: {rep.rows} rows, yield {rep.yield_:.3f}, precision {rep.precision:.4f}")
    assert rep.rows >= 150
    assert rep.precision == 1.0, rep.failures[:3]


def test_perspective_exact_with_people_turned_up_to_25_degrees(exact):
    _handles("perspective_max_yaw_deg", "people turned 10-25 deg: image mirroring is wrong for objects at other depths")
    rows, drops, truth = exact
    rep = evaluate(rows, truth, drops)["perspective"]
    print(f"\nperspective, facing within 25 deg: {rep.rows} rows, yield {rep.yield_:.3f}, precision {rep.precision:.4f}")
    assert rep.rows >= 150
    assert rep.precision == 1.0, [(f["id"], f["lateral_m"], f["ahead_m"], f["yaw_to_camera_deg"]) for f in rep.failures]
