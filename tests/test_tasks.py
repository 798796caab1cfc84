"""Task generators on hand-built records whose truth is known (constant depth per object box)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from spatialforge.builders.schema import TASKS, normalize_bbox, validate_row
from spatialforge.processing.records import DETECTOR_OBJECTS, DepthMap, Detections, Record
from spatialforge.processing.tasks.step import DEFAULT_MAX_PER_TASK, TaskStep, task_rng
from spatialforge.processing.tasks.verify import VerifyConfig, box_text, object_depth

UNCAPPED = dict.fromkeys(TASKS, None)


def make_record(
    objects: list[tuple],
    size: tuple[int, int] = (200, 100),
    background: float = 20.0,
    kind: str = "depth",
    image_id: str = "img",
    exhaustive: set[str] | None = None,
    depth_shape: tuple[int, int] | None = None,
    **columns,
) -> Record:
    """``objects``: ``(label, [x1, y1, x2, y2], z)``; depth is painted far to near (z-buffer)."""
    w, h = size
    z = np.full((h, w), background, np.float32)
    for _, (x1, y1, x2, y2), dz in sorted(objects, key=lambda o: -o[2]):
        z[y1:y2, x1:x2] = dz
    if depth_shape is not None:  # nearest-neighbour resample to another grid
        dh, dw = depth_shape
        z = z[(np.arange(dh) * h // dh)[:, None], (np.arange(dw) * w // dw)[None, :]]
    values = z if kind == "depth" else 1.0 / z
    det = Detections(np.array([o[1] for o in objects], float).reshape(-1, 4), [o[0] for o in objects], **columns)
    return Record("test", image_id, w, h, objects=det, depth=DepthMap(values, kind, source=f"test:{kind}",
                                                                          metric=kind == "depth"),
                  exhaustive_labels=exhaustive)


def run(record: Record, tasks=TASKS, **kw) -> Record:
    kw.setdefault("max_per_task", UNCAPPED)
    return TaskStep(tasks=tasks, on_invalid_row="error", **kw).process(record)


def rows_of(record: Record, task: str) -> list[dict]:
    return [r for r in record.rows if r["task"] == task]


def fact_triples(record: Record, task: str) -> set[tuple]:
    """Facts as (subject label, predicate, object label), canonical: nearer_than / left_of."""
    flip = {"farther_than": "nearer_than", "right_of": "left_of"}
    out = set()
    for r in rows_of(record, task):
        f = r["fact"]
        s, o = r["objects"][f["subject"]]["label"], r["objects"][f["object"]]["label"]
        if f["predicate"] in flip and f["frame"] == "camera":
            s, o = o, s
        out.add((s, flip.get(f["predicate"], f["predicate"]) if f["frame"] == "camera" else f["predicate"], o))
    return out


SCENE = [("cup", [10, 30, 40, 90], 1.0), ("dog", [60, 20, 100, 90], 2.0), ("lamp", [130, 10, 170, 60], 4.0)]


# ------------------------------------------------------------------------------------ near_far
@pytest.mark.parametrize("kind", ["depth", "inverse_depth"])
def test_near_far_facts_hold_for_depth_and_inverse_depth(kind):
    # Relative inverse depth: the check is told what holds here (no per-object bias, the far end 20x
    # as far as the near end); with the defaults it assumes only 3x and a 15 % bias.
    config = VerifyConfig(relative_object_bias=0.0, min_far_near_ratio=20.0)
    rec = run(make_record(SCENE, kind=kind), tasks=["near_far"], config=config)
    assert fact_triples(rec, "near_far") == {("cup", "nearer_than", "dog"), ("cup", "nearer_than", "lamp"),
                                             ("dog", "nearer_than", "lamp")}
    for r in rows_of(rec, "near_far"):
        v = r["verification"]
        assert v["depth_margin"] >= 0.3 and v["depth_source"] == f"test:{kind}"
        assert {"depth_valid", "depth_margin"} <= set(v["checks"])
        nearer = v["depth_subject"] < v["depth_object"] if kind == "depth" else v["depth_subject"] > v["depth_object"]
        assert nearer == (r["fact"]["predicate"] == "nearer_than")


def test_near_far_depth_and_inverse_give_identical_rows():
    # Told the truth of the scene (no per-object bias, the background 20x as far as the nearest
    # object), relative inverse depth allows no shift and keeps the ratios of metric depth.
    config = VerifyConfig(relative_object_bias=0.0, min_far_near_ratio=20.0)
    a = run(make_record(SCENE, kind="depth"), tasks=["near_far"], config=config).rows
    b = run(make_record(SCENE, kind="inverse_depth"), tasks=["near_far"], config=config).rows
    strip = lambda rows: [{k: v for k, v in r.items() if k != "verification"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b) and len(a) == 3


def test_near_far_depth_map_on_a_smaller_grid():
    rec = run(make_record(SCENE, depth_shape=(50, 100)), tasks=["near_far"])
    assert fact_triples(rec, "near_far") == fact_triples(run(make_record(SCENE), tasks=["near_far"]), "near_far")


def test_near_far_drops_small_margin_and_counts_it():
    rec = run(make_record([("cup", [10, 30, 40, 90], 2.0), ("dog", [60, 20, 100, 90], 2.2)]), tasks=["near_far"])
    assert rows_of(rec, "near_far") == []
    assert rec.drops == Counter({"near_far/depth_margin": 1})


@pytest.mark.parametrize("estimated", [False, True])
def test_near_far_on_a_depth_models_meters_tolerates_its_per_object_error(estimated):
    # Truth: the cup 3.5 m away, the dog 3.6 m, a camel 8 m. A metric depth model reads the cup 26 %
    # too far (4.4 m), the dog 15 % too near (3.06 m) and the camel 15 % too near (6.8 m): errors
    # of its own per object, as depth models make them.
    objects = [("cup", [10, 30, 40, 90], 4.4), ("dog", [60, 20, 100, 90], 3.06), ("camel", [130, 10, 170, 60], 6.8)]
    rec = make_record(objects)
    rec.depth.estimated = estimated
    rec = run(rec, tasks=["near_far"])
    facts = fact_triples(rec, "near_far")
    if estimated:
        # Each value may be off by relative_object_bias: only the pair whose order survives that is asked.
        assert facts == {("dog", "nearer_than", "camel")}
        assert rec.drops == Counter({"near_far/depth_margin": 2})
    else:
        # Measured meters (a sensor's) are taken as they are: read from the model, the same values
        # would state the wrong fact about the cup and the dog.
        assert ("dog", "nearer_than", "cup") in facts


def test_near_far_without_depth_counts_every_pair():
    rec = make_record(SCENE)
    rec.depth = None
    rec = run(rec, tasks=["near_far"])
    assert rec.rows == [] and rec.drops["near_far/no_depth"] == 3


def test_near_far_occlusion_must_match_the_nearer_object():
    # The cup's own pixels say 1 m, the dog's 3 m, but where their boxes overlap the dog shows:
    # the dog occludes the cup, so "the cup is nearer" cannot be true; the pair is dropped.
    objects = [("cup", [10, 10, 70, 90], 1.0), ("dog", [40, 10, 110, 90], 3.0)]
    rec = make_record(objects)
    rec.depth.values[10:90, 40:70] = 3.0
    rec = run(rec, tasks=["near_far"])
    assert rec.rows == [] and rec.drops == Counter({"near_far/occlusion_inconsistent": 1})
    # Painted the consistent way (the cup in front), the row stays and says so.
    ok = run(make_record(objects), tasks=["near_far"])
    assert fact_triples(ok, "near_far") == {("cup", "nearer_than", "dog")}
    assert "occlusion" in rows_of(ok, "near_far")[0]["verification"]["checks"]


@pytest.mark.parametrize(("cover", "want"), [((32, 55, 80, 97), {("lamp", "nearer_than", "vase")}), ((25, 60, 80, 105), set())])
def test_near_far_far_object_inside_a_near_objects_box_keeps_its_own_depth(cover, want):
    # A small far vase peeks out inside the box of a big near sofa, whose arm covers most of the
    # vase's box. Read naively, the vase looks as near as the sofa (1 m, "vase nearer than lamp").
    # The sofa's depth is removed from the vase's pixels: what is left is the vase (8 m), or too
    # little to trust (then no vase question at all).
    rec = make_record([("sofa", [20, 20, 120, 95], 1.0), ("vase", [80, 25, 110, 60], 8.0), ("lamp", [150, 10, 190, 60], 4.0)])
    rec.depth.values[25:60, 80:110] = 8.0  # the vase shows through a gap in the sofa ...
    y1, y2, x1, x2 = cover
    rec.depth.values[y1:y2, x1:x2] = 1.0  # ... except where the arm covers it
    assert object_depth(rec.depth, [80, 25, 110, 60]) == 1.0
    rec = run(rec, tasks=["near_far"])
    assert {f for f in fact_triples(rec, "near_far") if "vase" in f} == want
    assert ("sofa", "nearer_than", "lamp") in fact_triples(rec, "near_far")
    if not want:
        assert rec.drops == Counter({"near_far/depth_invalid": 2})


def test_near_far_object_inside_a_mixed_containers_box_gets_no_depth():
    # A person 8 m away stands inside the box of an umbrella whose canopy, tilted, runs from 2.5 m
    # on the left to 5 m on the right across the top of its box; below it the box shows the
    # background (20 m) and the person. The umbrella's own depth is mixed (its canopy is much
    # nearer than the rest of its box), so no single depth marks its pixels: removing the pixels
    # near its depth from the person's box leaves canopy, read as the person at 3.9 m, "nearer
    # than the lamp" at 6.5 m, which is wrong. The person gets no depth instead.
    rec = make_record([("umbrella", [20, 5, 150, 98], 20.0), ("person", [70, 12, 100, 95], 8.0), ("lamp", [160, 20, 195, 80], 6.5)])
    rec.depth.values[5:45, 20:150] = np.linspace(2.5, 5.0, 130, dtype=np.float32)[None, :]  # the canopy
    rec.depth.values[45:98, 84:86] = 3.8  # its pole
    rec = run(rec, tasks=["near_far"])
    assert rec.rows == []
    # umbrella: mixed, its pairs counted once; the person: no depth, both its pairs
    assert rec.drops == Counter({"near_far/depth_mixed": 1, "near_far/depth_invalid": 2})


def test_near_far_object_inside_an_open_shapes_box_gets_no_depth():
    # A person 13.5 m away inside the box of an umbrella whose canopy (8 m) runs along the top of its
    # box and dips in front of the person; the rest of the box shows a wall at 14 m. The umbrella's
    # inner box reads the wall (its canopy is too little of it to make it mixed), so removing the
    # pixels at that depth from the person's box removed the person and left the canopy: "the person
    # is nearer than the lamp" (12 m), wrong. The umbrella is an open shape (its own nearest part
    # lies far in front of its value), so nothing inside its box gets a depth from it.
    rec = make_record([("umbrella", [20, 2, 180, 98], 14.0), ("person", [90, 10, 104, 90], 13.5),
                       ("lamp", [185, 10, 199, 60], 12.0)], background=14.0)
    rec.depth.values[2:18, 20:180] = 8.0  # the canopy
    rec.depth.values[26:40, 92:102] = 8.0  # ... where it dips in front of the person
    rec.depth.values[40:98, 99:101] = 8.0  # its pole
    rec = run(rec, tasks=["near_far"])
    assert rec.rows == []
    assert rec.drops == Counter({"near_far/depth_mixed": 1, "near_far/depth_invalid": 2})


@pytest.mark.parametrize(("margin", "want"), [(0.1, {("lamp", "nearer_than", "person")}), (0.0, {("person", "nearer_than", "lamp")})])
def test_near_far_removes_an_occluders_box_with_a_margin(margin, want):
    # A person 12 m away behind an umbrella whose canopy (5 m) starts 5 px above its box, a box
    # that sits off as a detector's does (the box is 57 px tall: within a 10 % margin). The pixels
    # the box leaves out are canopy, read as the person at 5 m, nearer than the lamp (8 m): wrong.
    rec = make_record([("person", [90, 24, 110, 54], 12.0), ("umbrella", [60, 41, 190, 98], 20.0), ("lamp", [150, 5, 190, 35], 8.0)])
    rec.depth.values[36:53, 60:190] = 5.0  # the canopy, from 5 px above its box's top edge
    rec.depth.values[53:98, 124:126] = 5.0  # its pole
    rec = run(rec, tasks=["near_far"], config=VerifyConfig(occluder_margin=margin))
    assert fact_triples(rec, "near_far") == want
    assert rec.drops == Counter({"near_far/depth_mixed": 2})  # the umbrella's pairs: an open shape


def test_near_far_second_depth_signal_must_agree():
    rec = make_record(SCENE)
    alt = make_record([(lab, box, {"cup": 4.0, "dog": 2.0, "lamp": 1.0}[lab]) for lab, box, _ in SCENE]).depth
    rec.meta["depth_alt"] = alt
    rec = run(rec, tasks=["near_far"])
    assert rec.rows == [] and rec.drops == Counter({"near_far/depth_alt_disagree": 3})
    rec2 = make_record(SCENE)
    rec2.meta["depth_alt"] = make_record(SCENE, kind="inverse_depth").depth
    rec2 = run(rec2, tasks=["near_far"])
    assert len(rec2.rows) == 3 and all("depth_alt" in r["verification"]["checks"] for r in rec2.rows)


def test_near_far_ground_contact_cue_is_opt_in():
    # The nearer cup's box bottom is HIGHER in the image than the dog's: the cue disagrees.
    objects = [("cup", [10, 10, 40, 50], 1.0), ("dog", [60, 20, 100, 90], 3.0)]
    assert len(run(make_record(objects), tasks=["near_far"]).rows) == 1
    rec = run(make_record(objects), tasks=["near_far"], config=VerifyConfig(ground_contact=True))
    assert rec.rows == [] and rec.drops == Counter({"near_far/ground_contact_disagree": 1})


def test_near_far_unreliable_depth_is_dropped():
    rec = make_record(SCENE)
    rec.depth.valid[:, :50] = False  # the cup has no measurement
    rec = run(rec, tasks=["near_far"])
    assert fact_triples(rec, "near_far") == {("dog", "nearer_than", "lamp")}
    assert rec.drops == Counter({"near_far/depth_invalid": 2})


# ---------------------------------------------------------------------------------- left_right
def test_left_right_camera_frame():
    rec = run(make_record(SCENE), tasks=["left_right"])
    assert fact_triples(rec, "left_right") == {("cup", "left_of", "dog"), ("cup", "left_of", "lamp"),
                                               ("dog", "left_of", "lamp")}
    for r in rows_of(rec, "left_right"):
        assert r["fact"]["frame"] == "camera" and r["verification"]["box_gap"] >= 0
        s, o = (r["objects"][r["fact"][k]]["bbox"] for k in ("subject", "object"))
        assert (s[2] <= o[0]) == (r["fact"]["predicate"] == "left_of")


def test_left_right_refuses_boxes_that_overlap_in_x():
    rec = run(make_record([("cup", [10, 10, 60, 40], 1.0), ("dog", [50, 50, 100, 90], 2.0)]), tasks=["left_right"])
    assert rec.rows == [] and rec.drops == Counter({"left_right/boxes_overlap_x": 1})


# --------------------------------------------------------------------------------- perspective
FOCAL_60 = 100 / np.tan(np.radians(30))  # a 60-degree horizontal view of the 200-pixel-wide test images
TURN_30 = VerifyConfig(perspective_max_yaw_deg=30.0)  # people given a facing without keypoints: turned <= 30 deg


def with_focal(rec: Record, focal: float = FOCAL_60) -> Record:
    """``rec`` with the focal length a reader takes from EXIF."""
    rec.meta["focal_px"], rec.meta["focal_source"] = focal, "exif:FocalLengthIn35mmFilm"
    return rec


def person_scene(facing: str, confidence: float = 0.9) -> Record:
    # person in the middle, cup on the image's RIGHT (0.4 m in front of the body's front, so in
    # front of where they stand too), lamp on the image's LEFT
    objects = [("person", [80, 10, 120, 95], 3.0), ("cup", [150, 50, 180, 80], 2.6), ("lamp", [10, 10, 40, 50], 5.0)]
    return with_focal(make_record(objects, facing=[facing, "unknown", "unknown"], facing_confidence=[confidence, 0, 0]))


@pytest.mark.parametrize(
    ("facing", "cup_side", "lamp_side"),
    [("toward_camera", "left_of", "right_of"), ("away_from_camera", "right_of", "left_of")],
)
def test_perspective_person_frame(facing, cup_side, lamp_side):
    rec = run(person_scene(facing), tasks=["perspective"], config=TURN_30)
    assert fact_triples(rec, "perspective") == {("cup", cup_side, "person"), ("lamp", lamp_side, "person")}
    for r in rows_of(rec, "perspective"):
        assert r["fact"]["frame"] == "person" and r["objects"][r["fact"]["object"]]["label"] == "person"
        assert r["verification"]["facing"] == facing and r["verification"]["facing_confidence"] == pytest.approx(0.9)
        assert r["objects"][0]["label"] == "person"  # every perspective template names the person first


@pytest.mark.parametrize(
    ("facing", "confidence", "reason"),
    [("unknown", 0.0, "facing_unknown"), ("sideways", 0.9, "facing_sideways"), ("toward_camera", 0.2, "facing_low_confidence")],
)
def test_perspective_refuses_unknown_facing(facing, confidence, reason):
    rec = run(person_scene(facing, confidence), tasks=["perspective"])
    assert rec.rows == [] and rec.drops == Counter({f"perspective/{reason}": 2})


# ------------------------------------------------------------------------------------ counting
def test_counting_counts_exhaustive_labels_only():
    objects = [("cup", [10, 10, 30, 30], 1.0), ("cup", [40, 10, 60, 30], 1.0), ("cup", [70, 10, 90, 30], 1.0),
               ("dog", [100, 40, 150, 90], 2.0), ("car", [160, 40, 190, 90], 3.0)]
    rec = run(make_record(objects, exhaustive={"cup", "dog"}), tasks=["counting"])
    got = {r["objects"][0]["label"]: r for r in rows_of(rec, "counting")}
    assert sorted(got) == ["cup", "dog"] and got["cup"]["count"] == 3 and got["dog"]["count"] == 1
    assert [o["bbox"][0] for o in got["cup"]["objects"]] == [50, 200, 350]  # left to right
    assert got["cup"]["answer"] in ("3", "There are 3.")
    assert rec.drops == Counter({"counting/not_exhaustive": 1})


def test_counting_refuses_group_boxes_and_large_counts():
    objects = [("cup", [10, 10, 30, 30], 1.0), ("cup", [40, 10, 90, 40], 1.0)]
    rec = run(make_record(objects, is_group=[False, True]), tasks=["counting"])
    assert rec.rows == [] and rec.drops == Counter({"counting/group_box": 1})
    many = [("bead", [5 * k, 0, 5 * k + 4, 4], 1.0) for k in range(12)]
    rec = run(make_record(many), tasks=["counting"])
    assert rec.rows == [] and rec.drops == Counter({"counting/count_out_of_range": 1})


def test_counting_zero_only_for_labels_known_absent():
    rec = make_record(SCENE)
    rec.meta["absent_labels"] = {"zebra", "cup"}
    rec = run(rec, tasks=["counting"], config=VerifyConfig(count_zero=True))
    zero = [r for r in rows_of(rec, "counting") if r["count"] == 0]
    assert len(zero) == 1 and zero[0]["objects"] == [] and "zebra" in zero[0]["question"]
    assert rec.drops == Counter({"counting/absent_label_present": 1})
    assert all(r["count"] != 0 for r in rows_of(run(make_record(SCENE), tasks=["counting"]), "counting"))


# ----------------------------------------------------------------------------------- referring
def test_referring_refuses_ambiguous_regions():
    objects = [("cup", [10, 10, 50, 50], 1.0), ("mug", [12, 12, 52, 52], 1.0), ("dog", [100, 20, 150, 90], 2.0)]
    rec = run(make_record(objects), tasks=["referring"])
    rows = rows_of(rec, "referring")
    assert [r["objects"][0]["label"] for r in rows] == ["dog"]
    assert rows[0]["objects"][0]["bbox"] == normalize_bbox([100, 20, 150, 90], 200, 100)
    assert str(rows[0]["objects"][0]["bbox"]) in rows[0]["question"] and "dog" in rows[0]["answer"].lower()
    assert rec.drops == Counter({"referring/ambiguous_region": 2})


@pytest.mark.parametrize(("found", "kept"), [
    ([], ["backpack", "dog"]),  # no detector box beyond the annotations: both regions are asked about
    ([("Chair", [11, 12, 51, 50])], ["dog"]),  # a chair left out right behind the backpack: "[region]" names either
    ([("Chair", [120, 10, 160, 40])], ["backpack", "dog"]),  # a chair elsewhere: the regions stay unambiguous
    ([("Backpack", [11, 11, 50, 51])], ["backpack", "dog"]),  # the detector's own box of the backpack
    ([("Chair", [60, 10, 190, 95])], ["backpack", "dog"]),  # a chair box around the dog, IoU < max_referring_iou
])
def test_referring_refuses_regions_a_detector_beside_names_otherwise(found, kept):
    objects = [("Backpack", [10, 10, 50, 50], 1.0), ("Dog", [100, 20, 150, 90], 2.0)]
    rec = make_record(objects)
    boxes = [o[1] for o in objects] + [f[1] for f in found]  # the detector also finds both annotated objects
    rec.meta[DETECTOR_OBJECTS] = Detections(np.array(boxes, float), [o[0] for o in objects] + [f[0] for f in found],
                                            scores=np.full(len(boxes), 0.9, np.float32))
    rec = run(rec, tasks=["referring"])
    assert sorted(r["objects"][0]["label"].lower() for r in rows_of(rec, "referring")) == kept
    assert rec.drops == Counter({"referring/detector_ambiguous_region": 2 - len(kept)} if len(kept) < 2 else {})
    assert all("detector_unambiguous" in r["verification"]["checks"] for r in rows_of(rec, "referring"))


def test_referring_refuses_group_and_depiction_boxes():
    rec = run(make_record(SCENE, is_group=[True, False, False], is_depiction=[False, True, False]), tasks=["referring"])
    assert [r["objects"][0]["label"] for r in rec.rows] == ["lamp"]
    assert rec.drops == Counter({"referring/group_box": 1, "referring/depiction": 1})


@pytest.mark.parametrize(("box_source", "config", "labels"), [
    ("file:detections.json", VerifyConfig(), ["car"]),  # a detector's 6x16 px box: not asked about
    ("model:some/detector", VerifyConfig(), ["car"]),
    ("annotation", VerifyConfig(), ["person", "car"]),  # the same box drawn by a person is
    ("file:detections.json", VerifyConfig(min_detected_box_pixels=0), ["person", "car"]),
])
def test_referring_refuses_a_detectors_box_too_small_to_make_out(box_source, config, labels):
    # 320x240: the relative floor (0.0005 of the image, 38 px) lets a 6x16 px person through.
    rec = make_record([("person", [96, 79, 102, 95], 16.0), ("car", [150, 100, 230, 160], 9.0)], size=(320, 240))
    rec.box_source = box_source
    rec = run(rec, tasks=["referring"], config=config)
    assert [r["objects"][0]["label"] for r in rec.rows] == labels
    assert rec.drops == (Counter({"referring/box_too_small": 1}) if len(labels) == 1 else Counter())


# ----------------------------------------------------------------------------------- grounding
def test_grounding_json_parses_and_matches_objects():
    objects = SCENE + [("cup", [150, 70, 190, 95], 3.0)]
    rec = run(make_record(objects), tasks=["grounding"])
    rows = {r["objects"][0]["label"]: r for r in rows_of(rec, "grounding")}
    assert sorted(rows) == ["cup", "dog", "lamp"]
    for r in rows.values():
        answer = json.loads(r["answer"])
        assert [a["bbox_2d"] for a in answer] == [o["bbox"] for o in r["objects"]]
        assert [a["label"] for a in answer] == [o["label"] for o in r["objects"]]
    assert [o["bbox"] for o in rows["cup"]["objects"]] == [normalize_bbox(b, 200, 100) for b in ([10, 30, 40, 90], [150, 70, 190, 95])]
    assert len(json.loads(rows["dog"]["answer"])) == 1


def test_grounding_refuses_non_exhaustive_and_group_labels():
    rec = run(make_record(SCENE, exhaustive={"dog", "lamp"}, is_group=[False, False, True]), tasks=["grounding"])
    assert [r["objects"][0]["label"] for r in rec.rows] == ["dog"]
    assert rec.drops == Counter({"grounding/not_exhaustive": 1, "grounding/group_box": 1})


# ------------------------------------------------------------------------- mentions and order
def test_same_label_objects_are_named_with_their_box_in_mention_order():
    objects = [("cup", [10, 30, 40, 90], 1.0), ("cup", [150, 20, 190, 90], 3.0)]
    rec = run(make_record(objects), tasks=["near_far", "left_right"])
    assert len(rec.rows) == 2
    for r in rec.rows:
        q = r["question"]
        first, second = (str(o["bbox"]) for o in r["objects"])
        assert f"cup at {first}" in q and f"cup at {second}" in q and q.index(first) < q.index(second)


def test_unique_but_non_exhaustive_label_is_named_with_its_box():
    # Naming by label alone allowed: only the dog, exhaustively annotated and alone, goes without a box.
    config = VerifyConfig(label_alone_mentions=True)
    rec = run(make_record(SCENE, exhaustive={"dog"}), tasks=["left_right"], config=config)
    q = " ".join(r["question"] for r in rec.rows)
    assert "the cup at [" in q and "the lamp at [" in q and "the dog at" not in q and "the dog" in q


def test_every_object_is_named_with_its_box_by_default():
    # Even a label annotated exhaustively, with one box, names its object with the box: an instance
    # neither annotations nor detector box would make "the dog" ambiguous.
    rec = run(make_record(SCENE, exhaustive={"cup", "dog", "lamp"}), tasks=["near_far", "left_right"])
    assert rec.rows
    for r in rec.rows:
        for o in r["objects"]:
            assert f"the {o['label']} at {box_text(o['bbox'])}" in r["question"], r["question"]


# ---------------------------------------------------------------- determinism, balance, accounting
def random_record(rng: np.random.Generator, image_id: str, n: int = 6) -> Record:
    objects = []
    for k in range(n):
        x = int(rng.integers(0, 170))
        y = int(rng.integers(0, 70))
        objects.append((["cup", "dog", "lamp", "person"][k % 4], [x, y, x + 25, y + 25], float(rng.uniform(1, 10))))
    facing = [str(rng.choice(["toward_camera", "away_from_camera", "unknown"])) for _ in range(n)]
    return make_record(objects, image_id=image_id, facing=facing, facing_confidence=np.full(n, 0.9))


def generate(seed: int, n_images: int = 40, **kw) -> list[Record]:
    rng = np.random.default_rng(123)
    step = TaskStep(seed=seed, on_invalid_row="error", **kw)
    return [step.process(random_record(rng, f"im{k}")) for k in range(n_images)]


def test_same_seed_same_rows_other_seed_other_rows():
    a, b, c = generate(0), generate(0), generate(1)
    rows = lambda recs: [r for rec in recs for r in rec.rows]  # noqa: E731
    assert rows(a) == rows(b) and len(rows(a)) > 100
    assert [r["id"] for r in rows(a)] == [r["id"] for r in rows(b)]
    assert rows(a) != rows(c)
    assert len({r["id"] for r in rows(a)}) == len(rows(a))


def test_task_rng_is_stable():
    x = task_rng(0, "src", "img", "near_far").integers(1 << 30, size=3).tolist()
    assert x == task_rng(0, "src", "img", "near_far").integers(1 << 30, size=3).tolist()
    assert x != task_rng(0, "src", "img", "left_right").integers(1 << 30, size=3).tolist()


def test_answers_are_balanced():
    recs = generate(0, n_images=300, tasks=["near_far", "left_right", "perspective"], max_per_task=UNCAPPED)
    yes, first, side = Counter(), Counter(), Counter()
    for r in (r for rec in recs for r in rec.rows):
        if r["answer"] in ("Yes.", "No."):
            yes[r["answer"]] += 1
        elif r["task"] != "perspective" and r["question"].startswith(("Which", "Between")):
            first[r["fact"]["subject"] == 0] += 1  # the answer is the fact's subject: named first?
        else:
            side[r["fact"]["predicate"]] += 1
    for counts in (yes, first):
        total = sum(counts.values())
        assert total > 300, counts
        assert 0.43 < max(counts.values()) / total < 0.57, counts


def test_every_candidate_is_accounted_for():
    recs = generate(0, n_images=30)
    for rec in recs:
        considered, accepted = rec.meta["considered"], rec.meta["accepted"]
        n = len(rec.objects)
        assert considered["near_far"] == considered["left_right"] == n * (n - 1) // 2
        assert considered["referring"] == n and considered["grounding"] == len(set(rec.objects.labels))
        for task in TASKS:
            dropped = sum(v for k, v in rec.drops.items() if k.startswith(f"{task}/"))
            assert accepted[task] + dropped == considered[task]
            assert accepted[task] == len(rows_of(rec, task)) <= DEFAULT_MAX_PER_TASK[task]
        for row in rec.rows:
            validate_row(row)


def test_caps_count_over_cap_drops():
    rec = run(make_record(SCENE), tasks=["near_far"], max_per_task=1)
    assert len(rec.rows) == 1 and rec.drops == Counter({"near_far/over_cap": 2})
    assert rec.meta["considered"]["near_far"] == 3 and rec.meta["accepted"]["near_far"] == 1


def test_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tasks must be among"):
        TaskStep(tasks=["near"])
    with pytest.raises(ValueError, match="max_per_task"):
        TaskStep(max_per_task={"nearfar": 1})
    with pytest.raises(ValueError, match="on_invalid_row"):
        TaskStep(on_invalid_row="ignore")


# -------------------------------------------------------------------------------- verification
def test_object_depth_conventions_and_refusals():
    z = np.full((60, 60), 10.0, np.float32)
    z[10:50, 10:50] = 2.0
    box = [10, 10, 50, 50]
    assert object_depth(DepthMap(z, "depth"), box) == 2.0
    assert object_depth(DepthMap(1 / z, "inverse_depth"), box) == pytest.approx(0.5)
    assert object_depth(DepthMap(z, "depth", valid=np.zeros_like(z, bool)), box) is None
    assert object_depth(DepthMap(z, "depth"), box, exclude=[[0, 0, 60, 60]]) is None  # nothing of its own left
    # An "umbrella": a near canopy strip over far ground. Mostly ground in the box -> refused.
    u = np.full((60, 60), 10.0, np.float32)
    u[10:22, 10:50] = 2.0
    assert object_depth(DepthMap(u, "depth"), box) is None
    assert object_depth(DepthMap(u, "depth"), box, config=VerifyConfig(max_near_share=1.0)) == 10.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_depth_margin", 1.5), ("depth_shrink", 0.5), ("count_max", -1), ("range_quantiles", (0.9, 0.1)),
     ("perspective_max_yaw_deg", 95.0), ("near_share_ratio", 0.0), ("depth_max_samples", 4),
     ("min_detected_box_pixels", -1.0), ("occluder_margin", 1.5)],
)
def test_verify_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        VerifyConfig(**{field: value})


# ------------------------------------------------------------------ relative (non-metric) depth
def test_near_far_relative_depth_refuses_an_open_shape_seen_as_background():
    # An umbrella: its canopy (3 m) is a strip along the top of its box, the rest of the box shows
    # the ground behind it (20 m). The inner box sees only ground, so by box depth the umbrella is
    # "farther than the dog" (10 m), which is false. With relative depth an object whose own nearest
    # pixels (the canopy) lie well in front of its value gets no depth (depth_mixed); were it let
    # through, the farther object's nearest pixels would still have to lie behind the nearer one.
    rec = make_record([("umbrella", [10, 10, 60, 90], 20.0), ("dog", [100, 20, 150, 90], 10.0)], kind="inverse_depth")
    rec.depth.values[10:18, 10:60] = 1 / 3.0
    # Told the view is as deep as the margin assumes (the flat-view check would drop it first).
    rec = run(rec, tasks=["near_far"], config=VerifyConfig(flat_far_near_ratio=3.0))
    assert rec.rows == [] and rec.drops == Counter({"near_far/depth_mixed": 1})
    # Solid objects pass the same check (test_near_far_facts_hold_for_depth_and_inverse_depth).


def test_near_far_relative_depth_refuses_an_object_read_behind_what_surrounds_it():
    # A person 9 m away in front of a wall 10 m away, a trash can 9.5 m away: the person is nearer.
    # A model reads the person 1.4 times as far (12.6 m: behind the wall that shows in the top
    # corners of their box) and the can 0.7 times (6.65 m), and the pair's margin says "the can is
    # nearer". A solid thing cannot lie behind what its own box shows around it: no depth for it.
    rec = make_record([("person", [20, 10, 50, 95], 12.6), ("trash can", [120, 45, 150, 95], 6.65)], background=10.0,
                      kind="inverse_depth")
    rec.depth.values[10:25, 20:28] = rec.depth.values[10:25, 42:50] = 0.1  # the wall beside their head
    # Told the view is as deep as the margin assumes (the flat-view check would drop it first).
    rec = run(rec, tasks=["near_far"], config=VerifyConfig(flat_far_near_ratio=3.0))
    assert rec.rows == [] and rec.drops == Counter({"near_far/depth_mixed": 1})


@pytest.mark.parametrize("estimated", [False, True])
def test_near_far_a_models_meters_refuse_an_open_shape_whose_canopy_reads_too_far(estimated):
    # An umbrella 10 m away: its canopy is a strip along the top of its box, the rest of the box
    # shows a wall 20 m away; a dog stands 10.5 m away. A metric depth model reads the canopy 1.45
    # times as far (14.5 m), so the canopy lies only 27 % in front of the wall: not "much nearer"
    # (near_share_ratio) by itself. Read as the wall, the umbrella is "farther than the dog", which
    # is false. Allowed the tolerated per-object bias, the canopy marks an open shape: no depth.
    rec = make_record([("umbrella", [10, 10, 60, 90], 20.0), ("dog", [100, 20, 150, 90], 10.5)])
    rec.depth.values[10:18, 10:60] = 14.5
    rec.depth = DepthMap(rec.depth.values, "depth", metric=True, estimated=estimated, source="test")
    rec = run(rec, tasks=["near_far"])
    if estimated:
        assert rec.rows == [] and rec.drops == Counter({"near_far/depth_mixed": 1})
    else:  # measured meters: the canopy is where they say, 14.5 m away, behind the dog
        assert fact_triples(rec, "near_far") == {("dog", "nearer_than", "umbrella")}


def test_perspective_relative_depth_must_hold_for_every_shift():
    # Person in the middle at 3 m, cup on the right at 5 m: with metric depth the cup's offset
    # across the camera-person ray outweighs tan(30 deg) x its offset along it. Relative inverse
    # depth may hide a shift that puts the cup farther behind the person: then it does not.
    objects = [("person", [90, 10, 110, 95], 3.0), ("cup", [150, 50, 170, 80], 5.0)]
    cols = {"facing": ["toward_camera", "unknown"], "facing_confidence": [0.9, 0.0]}
    metric = run(with_focal(make_record(objects, **cols)), tasks=["perspective"], config=TURN_30)
    assert fact_triples(metric, "perspective") == {("cup", "left_of", "person")}
    assert "lateral_dominance" in metric.rows[0]["verification"]["checks"]
    assert metric.rows[0]["verification"]["focal_source"] == "exif:FocalLengthIn35mmFilm"
    relative = run(with_focal(make_record(objects, kind="inverse_depth", **cols)), tasks=["perspective"], config=TURN_30)
    assert relative.rows == [] and relative.drops == Counter({"perspective/lateral_ambiguous": 1})
