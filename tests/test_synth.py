"""Synthetic scenes: the truth they claim is the truth they render."""

import json
import math

import numpy as np
import pytest

from spatialforge.processing.perception.facing import facing_from_keypoints
from spatialforge.processing.synth.scenes import (
    PERSON,
    SKY,
    corrupt_depth,
    gaussian_blur,
    make_scene,
    make_scenes,
    objects365_stem,
    scene_record,
    scene_rng,
    write_objects365_layout,
)

W, H = 160, 120


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(60, seed=7, width=W, height=H)


def test_deterministic_from_seed_and_index():
    a, b = make_scene(3, 5, W, H), make_scene(3, 5, W, H)
    assert a.image.tobytes() == b.image.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert make_scene(3, 6, W, H).image.tobytes() != a.image.tobytes()
    assert make_scene(4, 5, W, H).image.tobytes() != a.image.tobytes()


def test_depth_is_camera_z_of_the_ground_and_sky_is_a_hole(scenes):
    s = scenes[0]
    cam = s.camera
    rows, cols = np.nonzero((s.instances < 0) & (s.depth > 0))
    z = s.depth[rows, cols].astype(float)
    pts = np.stack([(cols + 0.5 - cam.cx) / cam.fx * z, (rows + 0.5 - cam.cy) / cam.fy * z, z], 1)
    world = cam.center + pts @ cam.rotation.T
    slope_x, slope_z = s.ground_slope  # the ground rises by these per meter across and along the view
    assert s.wall is None and (slope_x, slope_z) != (0.0, 0.0)
    # ground pixels back-project onto the ground plane Y = slope_x X + slope_z Z
    assert np.abs(world[:, 1] - slope_x * world[:, 0] - slope_z * world[:, 2]).max() < 1e-3 * z.max()
    top = s.depth[0]
    assert (top == SKY).all()  # a camera pitched down a little still sees sky in the first row


def test_object_pixels_lie_within_the_solid_depth_extent(scenes):
    for s in scenes[:20]:
        for o in s.objects:
            d = s.depth[s.instances == o.instance]
            if d.size:
                assert o.z_range[0] - 1e-4 <= d.min() and d.max() <= o.z_range[1] + 1e-4


def test_visible_boxes_bound_exactly_the_visible_pixels(scenes):
    for s in scenes[:20]:
        for o in s.objects:
            mask = s.instances == o.instance
            if not mask.any():
                assert o.box is None and not o.annotated
                continue
            rows, cols = np.nonzero(mask)
            assert o.box == (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
            assert o.visible_pixels == mask.sum()
            if o.annotated:
                assert o.visible_fraction >= 0.5 and o.visible_pixels >= 60


def test_occlusion_hides_some_objects_from_the_annotations(scenes):
    flags = [o.annotated for s in scenes for o in s.objects]
    assert 0 < flags.count(False) < flags.count(True)


def test_some_scenes_repeat_a_label(scenes):
    repeats = 0
    for s in scenes:
        labels = [o.category for o in s.annotated]
        repeats += any(labels.count(x) >= 2 for x in set(labels))
    assert repeats >= 10


def test_person_body_sides_follow_the_facing(scenes):
    seen = {"toward_camera": 0, "away_from_camera": 0, "sideways": 0}
    for s in scenes:
        for o in s.annotated:
            if o.category != PERSON:
                continue
            kp = o.keypoints
            assert kp.shape == (17, 3)
            if not (kp[[5, 6, 11, 12], 2] > 0).all():
                continue  # cut by the frame: a shoulder or hip is not labeled
            if o.facing == "toward_camera":
                assert kp[5, 0] > kp[6, 0] and kp[11, 0] > kp[12, 0]  # left shoulder on the image's right
                assert kp[0, 2] > 0  # the nose is labeled
            elif o.facing == "away_from_camera":
                assert kp[5, 0] < kp[6, 0] and kp[11, 0] < kp[12, 0]
                assert kp[0, 2] == 0 and (kp[0, :2] == 0).all()  # face not labeled (COCO writes 0, 0, 0)
            seen[o.facing] += 1
            if o.facing != "sideways":
                assert facing_from_keypoints(kp)[0] == o.facing
    assert min(seen.values()) >= 3, seen


def test_person_frame_of_a_person_facing_the_camera_is_mirrored():
    s = next(s for s in make_scenes(40, seed=1, width=W, height=H) if any(o.facing == "toward_camera" for o in s.annotated))
    p = next(o for o in s.annotated if o.facing == "toward_camera")
    # A point one meter to the camera's left of the person is on the person's right.
    lateral, _ = s.world_to_person(p, p.position + np.array([-1.0, 0.0, 0.0]))
    assert lateral > 0.8


def test_corrupt_depth_errs_like_monocular_depth_but_keeps_big_gaps(scenes):
    s = next(s for s in scenes if (s.depth == 0).sum() > 100)  # open ground and sky (no wall)
    inv = corrupt_depth(s.depth, s.instances, scene_rng(0, s.index, "corrupt"))
    assert inv.shape == s.depth.shape and inv.dtype == np.float32
    sky, near = s.depth == 0, (s.depth > 0) & (s.depth < 3)
    ground = (s.instances < 0) & (s.depth > 0)
    # Inverse depth: larger is nearer; the sky is the farthest thing.
    assert inv[sky].mean() < inv[ground].mean()
    assert np.corrcoef(inv[ground], 1 / s.depth[ground])[0, 1] > 0.95
    if near.any():
        assert inv[near].mean() > inv[ground].mean()
    clean = corrupt_depth(s.depth, None, scene_rng(0, 1, "c"), object_bias=0, blur_sigma=0, noise=0, kind="depth")
    ratio = clean[ground] / s.depth[ground]
    assert not np.allclose(ratio, 1.0)  # scale and shift in inverse depth make depth affine-wrong


def test_gaussian_blur_keeps_constants_and_mass():
    a = np.zeros((9, 9))
    a[4, 4] = 1.0
    b = gaussian_blur(a, 1.0)
    assert abs(b.sum() - 1.0) < 1e-9 and b[4, 4] < 0.2
    assert np.allclose(gaussian_blur(np.full((5, 7), 3.0), 2.0), 3.0)


def test_write_objects365_layout_round_trips_through_the_coco_reader(tmp_path, scenes):
    from spatialforge.processing.readers import CocoReader

    paths = write_objects365_layout(scenes[:12], tmp_path, images_per_patch=5)
    assert (tmp_path / "images/train/patch0/objects365_v2_00000001.jpg").is_file()
    assert (tmp_path / "images/train/patch2/objects365_v2_00000012.jpg").is_file()
    depth = np.load(tmp_path / "depth/objects365_v2_00000003.npy")
    assert depth.dtype == np.float32 and np.array_equal(depth, scenes[2].depth)
    coco = json.loads(paths.annotations.read_text())
    person = next(c for c in coco["categories"] if c["name"] == PERSON)
    assert len(person["keypoints"]) == 17
    assert {a["iscrowd"] for a in coco["annotations"]} == {0}
    truth = json.loads(paths.truth.read_text())["images"]
    assert set(truth) == {objects365_stem(i + 1) for i in range(12)}

    records = {r.image_id: r for r in CocoReader(paths.annotations, images=paths.images).run([])}
    assert len(records) == 12
    for s in scenes[:12]:
        rec, want = records[s.image_id], scene_record(s)
        assert (rec.width, rec.height) == (W, H)
        assert rec.objects.labels == want.objects.labels
        np.testing.assert_allclose(rec.objects.xyxy, want.objects.xyxy)
        persons = [i for i, lab in enumerate(want.objects.labels) if lab == PERSON]
        for i in persons:
            lab = want.objects.keypoints[i][:, 2] > 0
            np.testing.assert_allclose(rec.objects.keypoints[i][lab], want.objects.keypoints[i][lab], atol=0.01)


def _row(scene, task, objs, fact=None, count=None):
    from spatialforge.builders.schema import normalize_bbox

    return {
        "id": f"{scene.image_id}-{task}", "image_id": scene.image_id, "task": task, "count": count, "fact": fact,
        "objects": [{"label": o.category, "bbox": normalize_bbox(o.box, scene.width, scene.height)} for o in objs],
    }  # fmt: skip


def test_evaluate_catches_every_kind_of_wrong_answer(scenes):
    from spatialforge.processing.synth.evaluate import evaluate

    s = next(s for s in scenes if sum(o.category == PERSON for o in s.annotated) >= 1 and len(s.annotated) >= 4)
    truth = {s.image_id: s.truth()}
    objs = s.annotated
    a, b = objs[0], objs[1]
    near = "nearer_than" if a.depth < b.depth else "farther_than"
    far = "farther_than" if near == "nearer_than" else "nearer_than"
    ua, ub = (s.camera.project(o.center_cam)[0] for o in (a, b))
    left, right = ("left_of", "right_of") if ua < ub else ("right_of", "left_of")
    person = next(o for o in objs if o.category == PERSON)
    other = next(o for o in objs if o is not person)
    lateral, _ = s.world_to_person(person, s.camera.center + s.camera.rotation @ other.center_cam)
    pl, pr = ("left_of", "right_of") if lateral < 0 else ("right_of", "left_of")
    same = [o for o in objs if o.category == a.category]
    wrong_label = dict(_row(s, "referring", [a])["objects"][0], label="Zebra")
    rows = [
        _row(s, "near_far", [a, b], {"subject": 0, "predicate": near, "object": 1, "frame": "camera"}),
        _row(s, "near_far", [a, b], {"subject": 0, "predicate": far, "object": 1, "frame": "camera"}),
        _row(s, "left_right", [a, b], {"subject": 0, "predicate": left, "object": 1, "frame": "camera"}),
        _row(s, "left_right", [a, b], {"subject": 0, "predicate": right, "object": 1, "frame": "camera"}),
        _row(s, "perspective", [other, person], {"subject": 0, "predicate": pl, "object": 1, "frame": "person"}),
        _row(s, "perspective", [other, person], {"subject": 0, "predicate": pr, "object": 1, "frame": "person"}),
        _row(s, "counting", [a], count=len(same)),
        _row(s, "counting", [a], count=len(same) + 1),
        _row(s, "grounding", same),
        _row(s, "grounding", same + [same[0]]),
        _row(s, "referring", [a]),
        {**_row(s, "referring", [a]), "objects": [wrong_label]},
    ]
    report = evaluate(rows, truth, drops={"near_far/depth_margin": 3, "near_far/over_cap": 1})
    for task in ("near_far", "left_right", "perspective", "counting", "grounding", "referring"):
        assert (report[task].rows, report[task].correct) == (2, 1), (task, report[task].failures)
    assert report["near_far"].candidates == 6 and report["near_far"].yield_ == pytest.approx(2 / 6)
    assert report["near_far"].pass_rate == pytest.approx(3 / 6)


def test_leaning_people_tilt_their_upper_body_keypoints_only():
    import dataclasses

    from spatialforge.processing.synth.scenes import DEFAULT_CONFIG, make_scene

    upright = dataclasses.replace(DEFAULT_CONFIG, torso_lean_deg=(0.0, 0.0), side_lean_deg=0.0)
    leaning = dataclasses.replace(upright, torso_lean_deg=(45.0, 45.0))
    checked = 0
    for index in range(40):
        plain, bent = make_scene(3, index, config=upright), make_scene(3, index, config=leaning)
        assert [o.box for o in plain.objects] == [o.box for o in bent.objects]  # the render is the same
        for a, b in zip(plain.objects, bent.objects):
            if a.keypoints is None or not (a.keypoints[[5, 6, 11, 12], 2] > 0).all() or not (b.keypoints[[5, 6], 2] > 0).all():
                continue
            np.testing.assert_array_equal(a.keypoints[11:], b.keypoints[11:])  # hips and legs stay
            torso = lambda kp: np.hypot(*(kp[[5, 6], :2].mean(0) - kp[[11, 12], :2].mean(0)))  # noqa: E731
            # Leaning 45 degrees toward where they face, a person seen from the front or the back (within
            # 25 degrees) shows a torso shorter than upright: cos(45) of it, give or take the view's pitch.
            if abs(math.cos(math.radians(a.yaw_to_camera_deg))) > 0.9:
                assert torso(b.keypoints) < 0.85 * torso(a.keypoints)
                checked += 1
    assert checked > 5


def test_sensor_depth_errs_as_a_structured_light_sensor_does(tmp_path):
    # A hand-made step: a wall 4 m away, a box 2 m away in front of it, a patch of wall 12 m away
    # (beyond the sensor's range), at 300 px focal length.
    from types import SimpleNamespace

    from spatialforge.processing.perception.depth_files import load_depth_file
    from spatialforge.processing.synth.scenes import SensorNoise, sensor_depth

    z = np.full((60, 80), 4.0, np.float32)
    z[15:45, 30:50] = 2.0
    z[:, 70:] = 12.0
    z[0:5, 0:10] = 0.0  # a hole in the truth stays one
    scene = SimpleNamespace(depth=z, camera=SimpleNamespace(fx=300.0))
    noise = SensorNoise()
    got = sensor_depth(scene, noise, np.random.default_rng(0))
    assert got.dtype == np.float32 and got.shape == z.shape
    assert np.array_equal(np.round(got * 1000.0) / 1000.0, got)  # whole millimeters
    assert (got[0:5, 0:10] == 0).all() and (got[:, 71:] == 0).all()  # hole; beyond 10 m
    # The projector's shadow: f * b * (1/2 - 1/4) = 5.6 px of wall left of the box get nothing,
    # the wall right of it and above it is measured.
    rows = slice(16, 44)
    assert (got[rows, 24:30] == 0).all()
    assert (got[rows, 20:24] > 0).all() and (got[rows, 50:70] > 0).all() and (got[5:14, 20:60] > 0).all()
    # Flying pixels: the wall pixels beside the box's right edge and below it read between the two
    # surfaces (80 % of them, 20-80 % of the way), never nearer than the box or farther than the wall.
    for edge in (got[rows, 50], got[45, 31:49]):
        between = (edge > 2.3) & (edge < 3.7)
        assert 0.55 < between.mean() <= 1.0, edge
        assert (edge > 1.9).all() and (edge < 4.2).all()
    # Away from silhouettes the error grows with distance (axial noise and disparity steps ~ z^2).
    box, wall = got[20:40, 35:45] - 2.0, got[5:55, 55:65] - 4.0
    assert np.abs(box).max() < 0.05 and np.abs(wall).max() < 0.2
    assert wall.std() > 2.5 * box.std() > 0
    # Written as NYU and RealSense do (16-bit millimeters), it reads back as a measurement.
    from PIL import Image

    path = tmp_path / "d.png"
    Image.fromarray(np.round(got * 1000.0).astype(np.uint16)).save(path)
    values, valid = load_depth_file(path, "depth")
    np.testing.assert_allclose(values[valid], got[valid], atol=1e-6)
    assert np.array_equal(valid, got > 0)
