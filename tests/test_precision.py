"""Precision of the generated QA against scenes whose truth is known, on every variant.

Records are built in memory from synthetic scenes (no files) of several seed families, as each
variant of ``synth.VARIANTS`` observes them (exact or detector-like boxes and keypoints; exact depth,
monocular-like depth with a 15 % per-object bias and shifts of either sign, or an RGB-D sensor's
with its flying pixels, shadows and noise growing with distance), run through the facing
step and the task step with the default ``VerifyConfig`` and ``on_invalid_row="error"``, and every
row is judged from its structured answer (``processing/evaluate.py`` has the truth definitions).
The scenes turn people anywhere, use 30-100 degree views, cut objects by the frame and close some
views with a wall, so no threshold sits at the edge of what they contain. Tables print with
``pytest -s``.

Every task is judged against every instance the scene shows (also those the annotations leave
out because they are small or occluded), with a detector run beside the annotations
(``synth.detector_objects``: on exact boxes one that finds every instance the image shows; on
detector-like boxes one that misses small and occluded instances more often and scores them lower,
jitters boxes and boxes some objects as another category): the questions it contradicts are dropped. Judged against the annotated boxes the rows were made from,
perception rows are a consistency check (true by construction), reported as such.
"""

from collections import Counter

import pytest

from spatialforge.builders.schema import RELATION_TASKS, TASKS, validate_row
from spatialforge.processing.synth.evaluate import evaluate, format_report
from spatialforge.processing.perception.facing import FacingFromKeypoints
from spatialforge.processing.synth.scenes import CORRELATED_CONFIG, NARROW_CONFIG, VARIANTS, SceneConfig, make_scenes, truth_of, variant_record
from spatialforge.processing.tasks.step import TaskStep
from spatialforge.processing.tasks.verify import VerifyConfig

pytestmark = pytest.mark.slow  # a few minutes: 360 scenes and more, six variants

SEEDS = (11, 12, 13)
N_SCENES = 120  # per seed family
MIN_PRECISION = 0.995
MIN_ROWS = {"grounding": 300, "referring": 300, "counting": 150, "near_far": 300, "left_right": 300, "perspective": 10}


def run(records, tasks=TASKS):
    steps = [FacingFromKeypoints(), TaskStep(tasks=tasks, seed=0, config=VerifyConfig(), on_invalid_row="error")]
    stream = records
    for step in steps:
        stream = step.run(stream)
    rows, drops = [], Counter()
    for record in stream:
        rows.extend(record.rows)
        drops.update(record.drops)
    return rows, drops


@pytest.fixture(scope="module")
def families():
    return {seed: make_scenes(N_SCENES, seed=seed) for seed in SEEDS}


def judge(families, variant, detector=True, tasks=TASKS):
    """Rows of ``tasks`` of every family through ``variant``, judged; image ids are prefixed by the seed."""
    rows, drops, truth = [], Counter(), {}
    for seed, scenes in families.items():
        got, d = run((variant_record(s, variant, detector=detector) for s in scenes), tasks=tasks)
        for row in got:
            validate_row(row)
            row["image_id"] = f"{seed}/{row['image_id']}"
        rows += got
        drops.update(d)
        truth.update({f"{seed}/{k}": t for k, t in truth_of(scenes).items()})
    return evaluate(rows, truth, drops)


# Relative depth cannot tell a deep view from a wall just behind the objects, so near_far there
# passes only what survives the flattest view assumed or the ground confirms: fewer rows.
# Perspective must hold for every shift and per-object bias: a few rows per hundred scenes, enough
# to catch a systematic error, not to measure 0.995 (that takes tens of thousands of scenes).
MIN_ROWS_RELATIVE = {"near_far": 200, "perspective": 5}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_precision_on_every_variant(families, name):
    variant = VARIANTS[name]
    report = judge(families, variant)
    print("\n" + format_report(report, f"{name}: {variant.title} ({len(SEEDS)} x {N_SCENES} scenes)"))
    exact = variant.depth is None and variant.annotations.exact
    for task, rep in report.items():
        least = MIN_ROWS_RELATIVE.get(task, MIN_ROWS[task]) if variant.depth is not None else MIN_ROWS[task]
        assert rep.rows >= least, f"{name}/{task}: too few rows to measure: {rep.rows} ({dict(rep.drop_reasons)})"
        # Exact depth and boxes make the geometry exact, and the exact variants' detector finds every
        # instance the annotations leave out; the detector-like one misses some small, hidden ones.
        want = 1.0 if exact else MIN_PRECISION
        assert rep.precision >= want, f"{name}/{task}: {rep.wrong} wrong of {rep.rows}: {rep.failures[:3]}"
        assert rep.pass_rate is not None and 0 < rep.pass_rate <= 1


def test_annotations_alone_are_consistent_but_cannot_vouch_for_what_they_leave_out(families):
    alone = judge({11: families[11]}, VARIANTS["exact"], detector=False)
    checked = judge({11: families[11]}, VARIANTS["exact"])
    print("\n" + format_report(alone, "exact, annotations alone (no detector beside them)"))
    for task in ("grounding", "referring", "counting"):
        assert alone[task].consistency == 1.0, task
    # Occluded instances the annotations leave out make some counts and "the cup" wrong ...
    assert alone["counting"].precision < 1.0 and alone["grounding"].precision < 1.0
    # ... which the detector beside them catches, counted by reason.
    assert checked["counting"].drop_reasons["detector_extra_instance"] > 0
    assert checked["counting"].precision == checked["grounding"].precision == 1.0


def test_near_far_pass_rate_is_reported_before_caps(families):
    report = judge({11: families[11]}, VARIANTS["exact"])["near_far"]
    # Caps drop candidates that passed every check: the pass rate counts them, the yield does not.
    assert report.over_cap > 0 and report.pass_rate > report.yield_


def test_narrow_scenes_of_earlier_releases_stay_exact():
    # The geometry is exact there; perception rows are consistent with their annotations (their
    # precision against every visible instance is the detector's recall, measured above).
    scenes = make_scenes(80, seed=14, config=NARROW_CONFIG)
    rows, drops = run(variant_record(s, VARIANTS["exact"], detector=True) for s in scenes)
    report = evaluate(rows, truth_of(scenes), drops)
    for task, rep in report.items():
        assert rep.rows > 0, task
        if task in RELATION_TASKS:
            assert rep.precision == 1.0, (task, rep.failures[:3])
        else:
            assert rep.consistency == 1.0, (task, rep.failures[:3])


def test_counts_hold_in_crowds_a_detector_misses_on_measured_depth():
    # Two to five people 2-5 m in front of the camera stand behind one another; the annotations
    # leave out those more than half hidden and the detector-like detector misses about one in
    # ten of them. On measured depth the second layer in the front person's box drops the image's
    # counting and grounding questions (unboxed_instance). Without that check these scenes give
    # grounding 0.978 (11 wrong of 509) and counting 0.968 (9 of 282).
    fams = {seed: make_scenes(150, seed=seed, config=CORRELATED_CONFIG) for seed in (13, 14)}
    report = judge(fams, VARIANTS["detector"], tasks=("grounding", "counting"))
    for task in ("grounding", "counting"):
        rep = report[task]
        assert rep.rows > 200 and rep.precision >= MIN_PRECISION, (task, rep.precision, rep.failures[:3])
        assert rep.drop_reasons["unboxed_instance"] > 0, task


# Farther from the families above: scenes that repeat one label many times (umbrellas and people
# inside each other's boxes), and people placed 12-30 m away behind near cars and benches (images
# whose instances are all too small to annotate, where the detections become the boxes).
CROWDS = SceneConfig(duplicate_prob=0.9, objects=(6, 12))
FAR_PEOPLE = SceneConfig(people=(1, 4), distances=(("Person", 12.0, 30.0), ("Car", 4.0, 9.0), ("Bench", 3.0, 6.0)))
WIDER = {"crowds-15": (15, CROWDS), "far-15": (15, FAR_PEOPLE), "far-18": (18, FAR_PEOPLE), "far-19": (19, FAR_PEOPLE)}


@pytest.fixture(scope="module")
def wider_families():
    return {family: make_scenes(N_SCENES, seed=seed, config=config) for family, (seed, config) in WIDER.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_relations_and_referring_hold_on_one_label_crowds_and_far_people(wider_families, name):
    variant = VARIANTS[name]
    report = judge(wider_families, variant)
    print("\n" + format_report(report, f"{name}: {variant.title} (one-label crowds, far people)"))
    exact = variant.depth is None and variant.annotations.exact
    # Grounding and counting with detector-like boxes are bounded by the detector's recall on the
    # instances the annotations leave out (the families above measure them); every other task is not.
    tasks = TASKS if exact else ("referring", *RELATION_TASKS)
    for task in tasks:
        rep = report[task]
        assert rep.rows > 0, task
        want = 1.0 if exact else MIN_PRECISION
        assert rep.precision >= want, f"{name}/{task}: {rep.wrong} wrong of {rep.rows}: {rep.failures[:3]}"


# People leaning (sitting at a table, bending over): their upper body tilts up to 60 degrees toward
# where they face and 15 degrees sideways, in crowds of 2-5 people. A torso leaning toward the camera
# looks short, so its shoulders look frontal: a turn bound that takes every body as upright came out
# too small there and mirrored perspective rows: on these seeds mono 1 of 80, detector 2 of 182,
# detector-mono 1 of 58.
LEANING = SceneConfig(people=(2, 5), objects=(6, 12), torso_lean_deg=(0.0, 60.0), side_lean_deg=15.0)


@pytest.fixture(scope="module")
def leaning_families():
    return {seed: make_scenes(N_SCENES, seed=seed, config=LEANING) for seed in (16, 17)}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_relations_hold_on_people_leaning_toward_where_they_face(leaning_families, name):
    assert_relations_hold(leaning_families, name, "people leaning")


def assert_relations_hold(families, name, what):
    """The relation rows of ``families`` through variant ``name``: some of each task, and precise
    (1.000 with exact depth and boxes, else MIN_PRECISION)."""
    variant = VARIANTS[name]
    report = judge(families, variant, tasks=RELATION_TASKS)
    print("\n" + format_report(report, f"{name}: {variant.title} ({what})"))
    want = 1.0 if variant.depth is None and variant.annotations.exact else MIN_PRECISION
    for task in RELATION_TASKS:
        rep = report[task]
        assert rep.rows > 0, task
        assert rep.precision >= want, f"{name}/{task}: {rep.wrong} wrong of {rep.rows}: {rep.failures[:3]}"


# Views unlike the default ones: cameras 0.3-4 m high pitched from 15 degrees up to 40 down, walls
# from 4 m away, at 640x480. From above, a camera sees a standing person's back and shoulders 0.1-0.2
# m before where they stand; in a view that ends in a close wall, a model's per-object error of
# 1.4-1.5x (the scenes draw it log-normal) moves an object behind the wall it stands in front of.
STEEP = SceneConfig(pitch_deg=(-15.0, 40.0), camera_height=(0.3, 4.0), wall_prob=0.7, wall_distance=(4.0, 30.0))


@pytest.fixture(scope="module")
def steep_families():
    return {seed: make_scenes(60, seed=seed, width=640, height=480, config=STEEP) for seed in (20, 21, 22)}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_relations_hold_on_steep_views_and_close_walls(steep_families, name):
    assert_relations_hold(steep_families, name, "steep views, close walls, 640x480")


# Scenes of held-out sweeps (640x480 and 480x640) where a model's per-object error beyond the
# tolerated bias once mirrored a near/far row: (family, seed, index, width, height, variant). Each
# one: an object read 1.4-1.5 times as far beside one read 0.7-0.8 times, in a close-walled or
# steep view, or an umbrella's canopy read as far as the wall behind it.
MIRRORED_NEAR_FAR = [
    (SceneConfig(pitch_deg=(-15.0, 40.0), camera_height=(0.3, 4.0)), 317, 70, 640, 480, "mono"),  # a person read behind the wall 8.5 m away
    (SceneConfig(wall_prob=1.0, wall_distance=(4.0, 12.0)), 327, 75, 640, 480, "mono"),
    (SceneConfig(), 311, 140, 480, 640, "mono-metric"),  # two people 0.15 m apart, read 3.3 and 6.9 m away
    (SceneConfig(), 306, 2, 640, 480, "mono-metric"),  # an umbrella in front of a wall
]


@pytest.mark.parametrize("case", MIRRORED_NEAR_FAR, ids=lambda c: f"{c[1]}-{c[2]}-{c[5]}")
def test_near_far_holds_where_a_models_error_once_mirrored_it(case):
    from spatialforge.processing.synth.scenes import make_scene

    config, seed, index, width, height, name = case
    scene = make_scene(seed, index, width, height, config)
    rows, _ = run([variant_record(scene, VARIANTS[name], detector=True)], tasks=("near_far",))
    report = evaluate(rows, truth_of([scene]))["near_far"]
    assert report.wrong == 0, report.failures


# ... and where a camera looking down saw a person's back in front of where they stand, and an
# object just behind them came out on the mirrored side (exact depth and boxes).
MIRRORED_PERSPECTIVE = [(CORRELATED_CONFIG, 302, 148, "exact"), (CORRELATED_CONFIG, 302, 148, "detector")]


@pytest.mark.parametrize("case", MIRRORED_PERSPECTIVE, ids=lambda c: f"{c[1]}-{c[2]}-{c[3]}")
def test_perspective_holds_where_a_persons_depth_once_mirrored_it(case):
    from spatialforge.processing.synth.scenes import make_scene

    config, seed, index, name = case
    scene = make_scene(seed, index, 640, 480, config)
    rows, _ = run([variant_record(scene, VARIANTS[name], detector=True)], tasks=("perspective",))
    report = evaluate(rows, truth_of([scene]))["perspective"]
    assert report.wrong == 0, report.failures
