"""Counting and grounding drop an image whose measured depth shows an instance no box accounts for.

Hand-made metric depth of a pinhole camera (f = 150 px, 1.5 m above flat ground, level, sky
above the horizon) seeing people as flat-fronted solids standing on the ground. Two people are
annotated. A third stands 1 m behind the first one, unannotated and unboxed: only the corners
beside the first person's head show it, a second layer inside that person's box, in front of the
sky and the far ground the box would otherwise show there. "How many people?" is then 3, not 2.
The same scenes measured the way a depth sensor errs (mixed pixels on every silhouette, noise
growing with distance) keep their answers: a sensor's one-pixel rims are not a hidden layer.
The truth is the geometry these tests build, not anything the code computes.
"""

import numpy as np

from spatialforge.processing.records import DepthMap, Detections, Record
from spatialforge.processing.tasks import hidden
from spatialforge.processing.tasks.hidden import unexplained_pixels
from spatialforge.processing.tasks.step import TaskStep
from spatialforge.processing.tasks.verify import VerifyConfig, scene_for

W, H, F, CY, CAM_H = 200, 150, 150.0, 75.0, 1.5


def ground_depth():
    v = np.arange(H)[:, None] + 0.5 - CY  # rows below the horizon see the ground at z = F * CAM_H / v
    return np.broadcast_to(np.where(v > 0, F * CAM_H / np.maximum(v, 1e-9), 0.0), (H, W)).astype(np.float64).copy()


def rows_of(z, height):
    return int(round(CY + F * (CAM_H - height) / z)), int(round(CY + F * CAM_H / z))


def stand(depth, x1, x2, z, height, head=False):
    """A solid standing on the ground, front face at ``z`` (with ``head``: its top fifth only in
    the middle 40 % of its width, as a person's head and shoulders). Returns its box."""
    top, bottom = rows_of(z, height)
    before = depth.copy()
    depth[top:bottom, x1:x2] = np.minimum(np.where(depth[top:bottom, x1:x2] > 0, depth[top:bottom, x1:x2], np.inf), z)
    if head:
        neck = top + (bottom - top) // 5
        w = x2 - x1
        for c0, c1 in ((x1, x1 + int(0.3 * w)), (x2 - int(0.3 * w), x2)):
            depth[top:neck, c0:c1] = before[top:neck, c0:c1]
    return [x1, top, x2, bottom]


def person_scene(hidden_third=True, box_the_third=False, bench=False, third_from=58):
    depth = ground_depth()
    third = None
    if hidden_third:  # 1 m behind the first person, a little taller and wider: seen beside their head
        third = stand(depth, third_from, 88, 4.0, 1.8)
    boxes = [stand(depth, 60, 86, 3.0, 1.7, head=True), stand(depth, 150, 165, 5.0, 1.7)]
    labels = ["Person", "Person"]
    if box_the_third:
        boxes.append(third)
        labels.append("Person")
    if bench:  # seen obliquely: its front face recedes from 3 m to 4.5 m across its width
        x1, x2 = 105, 140
        for x in range(x1, x2):
            z = 3.0 + 1.5 * (x - x1) / (x2 - x1)
            top, bottom = rows_of(z, 0.5)
            depth[top:bottom, x] = np.minimum(np.where(depth[top:bottom, x] > 0, depth[top:bottom, x], np.inf), z)
        boxes.append([x1, rows_of(4.5, 0.5)[0], x2, rows_of(3.0, 0.5)[1]])
        labels.append("Bench")
    values = depth.astype(np.float32)
    dm = DepthMap(values, kind="depth", valid=values > 0, metric=True, source="sensor")
    return Record(source="test", image_id="hidden", width=W, height=H, objects=Detections(np.array(boxes, float), labels),
                  depth=dm)


def rows_and_drops(record, tasks=("counting", "grounding"), **config):
    step = TaskStep(tasks=list(tasks), seed=0, config=VerifyConfig(**config), on_invalid_row="error")
    out = step.process(record)
    return out.rows, out.drops


def people_count(rows):
    return [row["count"] for row in rows if row["task"] == "counting" and row["objects"][0]["label"] == "Person"]


def test_a_person_seen_only_beside_another_ones_head_stops_the_count():
    record = person_scene()
    assert unexplained_pixels(scene_for(record, VerifyConfig())) >= 60
    rows, drops = rows_and_drops(record)
    assert people_count(rows) == []
    assert drops["counting/unboxed_instance"] >= 1 and drops["grounding/unboxed_instance"] >= 1
    # With the check off the same image gets the wrong count: two people, where three are seen.
    rows, _ = rows_and_drops(person_scene(), hidden_min_pixels=0)
    assert people_count(rows) == [2]


def test_without_the_third_person_the_count_of_two_stands():
    record = person_scene(hidden_third=False)
    assert unexplained_pixels(scene_for(record, VerifyConfig())) < 60
    rows, drops = rows_and_drops(record)
    assert people_count(rows) == [2], drops
    assert not drops["counting/unboxed_instance"]


def test_a_left_out_person_seen_partly_outside_every_box_is_not_taken_for_a_wall():
    # The third person steps out to the left: 15 columns of them lie outside every grown box. Their
    # front is fronto-parallel, a plane in nearness like a wall, but one 15 px wide of 200: not
    # ground, not a wall, so it is no background, and what the first person's box shows of them
    # stays a second layer. (Taken for a background plane, it hid itself: 0 pixels, count 2.)
    record = person_scene(third_from=40)
    assert unexplained_pixels(scene_for(record, VerifyConfig())) >= 60
    rows, drops = rows_and_drops(record)
    assert people_count(rows) == [] and drops["counting/unboxed_instance"] >= 1
    for seed in range(5):  # through a sensor's errors too
        rows, drops = rows_and_drops(with_sensor_errors(person_scene(third_from=40), seed=seed))
        assert people_count(rows) == [] and drops["counting/unboxed_instance"] >= 1, seed


def test_a_boxed_third_person_is_accounted_for():
    rows, drops = rows_and_drops(person_scene(box_the_third=True))
    assert people_count(rows) == [3], drops


def test_an_objects_own_receding_side_is_not_a_second_layer():
    record = person_scene(hidden_third=False, bench=True)
    assert unexplained_pixels(scene_for(record, VerifyConfig())) < 60
    rows, drops = rows_and_drops(record)
    assert people_count(rows) == [2], drops


def as_a_model_sees_it(record, bias=None, shift=0.1, seed=0, meters=False, sigma=1.5, noise=0.01, scale=2.0):
    """The record's depth as a monocular depth model errs: each solid (picked by its exact depth)
    read ``bias[z]`` times farther, a gaussian blur of ``sigma`` pixels on inverse depth (every
    silhouette a ramp), multiplicative noise, then an unknown scale and a shift of either sign
    (relative inverse depth), or (``meters``) a metric model's meters, blur and bias alike."""
    z = record.depth.values.astype(np.float64)
    inv = np.where(z > 0, 1.0 / np.where(z > 0, z, 1.0), 0.0)  # sky: 0
    for at, factor in (bias or {}).items():
        inv[z == at] /= factor
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    inv = np.pad(inv, r, mode="edge")
    inv = np.apply_along_axis(np.convolve, 0, inv, k, "valid")
    inv = np.apply_along_axis(np.convolve, 1, inv, k, "valid")
    inv *= np.random.default_rng(seed).normal(1.0, noise, inv.shape)
    if meters:
        values = (1.0 / np.maximum(inv, 1e-3)).astype(np.float32)  # a model's range ends at 1000 m
        record.depth = DepthMap(values, kind="depth", metric=True, estimated=True, source="model")
    else:
        record.depth = DepthMap((scale * (inv + shift * inv.max())).astype(np.float32), kind="inverse_depth",
                                source="model")
    return record


MODEL_VIEWS = [dict(shift=shift, seed=seed, meters=meters, bias=bias)
               for seed in range(3) for shift, meters in ((0.2, False), (-0.1, False), (0.0, True))
               for bias in (None, {3.0: np.exp(-0.15), 4.0: np.exp(0.15)}, {3.0: np.exp(0.15), 4.0: np.exp(0.15)},
                            {3.0: np.exp(-0.15), 4.0: np.exp(-0.15)})]
"""Relative maps shifted either way and a metric model's meters; each solid read as it is, the first
person 15 % nearer and the third 15 % farther, or both 15 % farther, or both 15 % nearer. (A gap of
1 m at 3-4 m that the per-object errors shrink below about a fifth is beyond what the check sees.)"""


def test_a_models_depth_shows_a_left_out_person_through_its_blur_bias_and_shift():
    # The third person steps out to the left (third_from=40): a surface 12 cells wide inside the
    # first person's grown box, wider than the blur's ramps on either side.
    for view in MODEL_VIEWS:
        record = as_a_model_sees_it(person_scene(third_from=40), **view)
        assert unexplained_pixels(scene_for(record, VerifyConfig())) >= 60, view
        rows, drops = rows_and_drops(record)
        assert people_count(rows) == [] and drops["counting/unboxed_instance"] >= 1, view


def test_a_models_blur_rings_are_not_a_hidden_instance():
    # The same errors on the scenes without the third person: the blur rings every head and
    # shoulder with in-between values, the bench recedes; two people stand, their count asked.
    for view in MODEL_VIEWS:
        for record in (person_scene(hidden_third=False), person_scene(hidden_third=False, bench=True),
                       person_scene(third_from=40, box_the_third=True)):
            expected = 3 if len(record.objects.labels) == 3 and "Bench" not in record.objects.labels else 2
            record = as_a_model_sees_it(record, **view)
            rows, drops = rows_and_drops(record)
            assert people_count(rows) == [expected], (view, drops)
            assert not drops["counting/unboxed_instance"], view
    # Read cell by cell, as a renderer's map, the rings alone would stop the clean count.
    record = as_a_model_sees_it(person_scene(hidden_third=False))
    record.depth = DepthMap(1.0 / np.maximum(record.depth.values - record.depth.values.min() + 1e-3, 1e-3),
                            kind="depth", metric=True, source="renderer")
    assert unexplained_pixels(scene_for(record, VerifyConfig())) >= 60


def test_a_plane_through_a_face_and_the_ground_band_at_its_feet_is_no_background():
    # A person's face has the ground's nearness along the row of their feet: a plane through the
    # face also explains that row, from one side of the view to the other. Its cells span the
    # width there, but only the face's 15 columns in the other rows: it is no background.
    n_face = 1.0 / 4.0
    feet = int(round(CY + F * CAM_H * n_face))  # the ground row at 4 m
    face = [(u, v) for u in range(40, 55) for v in range(64, feet)]
    band = [(u, feet) for u in range(0, W, 2)]
    u, v = (np.array(c, float) for c in zip(*(face + band)))
    assert hidden._row_span(u, v) == 14
    assert u.max() - u.min() >= 0.25 * W  # what the whole span would have said
    n = np.full(len(u), n_face)
    planes = hidden._fit_planes(u, v, n, lambda pred: 0.002 + 0 * pred, np.random.default_rng(0), 0.25 * W)
    assert planes == []
    wall = [(u, v) for u in range(0, W, 3) for v in range(20, 60, 3)]
    u, v = (np.array(c, float) for c in zip(*wall))
    assert hidden._row_span(u, v) >= 0.25 * W
    assert len(hidden._fit_planes(u, v, np.full(len(u), 0.1), lambda pred: 0.002 + 0 * pred,
                                  np.random.default_rng(0), 0.25 * W)) == 1


def with_sensor_errors(record, seed=0):
    """The record's depth as a depth sensor measures it (Kinect-like): on every jump between two
    measured surfaces the farther pixel is a mixed one, reading the mean of the two, and every
    pixel carries noise growing with the square of its distance (0.0012 + 0.0019 (z - 0.4)^2 m)."""
    z = record.depth.values.astype(np.float64)
    seen = z > 0
    out = z.copy()
    for axis in (0, 1):
        a, o, v = np.moveaxis(z, axis, 0), np.moveaxis(out, axis, 0), np.moveaxis(seen, axis, 0)
        jump = v[1:] & v[:-1] & (np.abs(a[1:] - a[:-1]) > 0.1 * np.minimum(a[1:], a[:-1]))
        mean = 0.5 * (a[1:] + a[:-1])
        o[:-1][jump & (a[:-1] > a[1:])] = mean[jump & (a[:-1] > a[1:])]
        o[1:][jump & (a[1:] > a[:-1])] = mean[jump & (a[1:] > a[:-1])]
    noise = np.random.default_rng(seed).normal(0.0, 1.0, z.shape) * (0.0012 + 0.0019 * (out - 0.4) ** 2)
    values = np.where(seen, out + noise, 0.0).astype(np.float32)
    record.depth = DepthMap(values, kind="depth", valid=values > 0, metric=True, source="sensor")
    return record


def test_a_sensors_mixed_pixels_and_noise_are_not_a_hidden_instance(monkeypatch):
    clean = with_sensor_errors(person_scene(hidden_third=False))
    rows, drops = rows_and_drops(clean)
    assert people_count(rows) == [2], drops
    assert not drops["counting/unboxed_instance"]
    # The third person, a layer many pixels thick, still stops the count through the same errors.
    rows, drops = rows_and_drops(with_sensor_errors(person_scene()))
    assert people_count(rows) == []
    assert drops["counting/unboxed_instance"] >= 1 and drops["grounding/unboxed_instance"] >= 1
    # Read as a renderer's map, the one-pixel rims of mixed values alone would stop the clean count.
    monkeypatch.setattr(hidden, "MIXED_SHARE", np.inf)
    monkeypatch.setattr(hidden, "ROUGHNESS", np.inf)
    assert unexplained_pixels(scene_for(clean, VerifyConfig())) >= VerifyConfig().hidden_min_pixels


def test_the_sensor_gates_median_test_is_the_median():
    rng = np.random.default_rng(0)
    levels = np.float32([0.001, 0.0019999, 0.002, 0.0020001, 0.003])
    for trial in range(4000):
        n = int(rng.integers(1, 40))
        values = rng.choice(levels, n) if trial % 2 else (rng.random(n) * 0.004).astype(np.float32)
        assert hidden._median_exceeds(values, 0.002) == (float(np.median(values)) > 0.002), values


def test_a_planes_row_span_is_the_quantile_of_its_rows_extents():
    # Per row, the columns its cells reach from first to last; over rows, numpy's quantile. Row
    # by row with a loop here, on cells in np.nonzero's order and shuffled, and on one row alone.
    rng = np.random.default_rng(0)
    for trial in range(600):
        m = int(rng.integers(1, 400))
        u = rng.integers(0, 320, m).astype(float)
        v = rng.integers(0, 1 + int(rng.integers(0, 240)), m).astype(float)
        if trial % 2:
            order = np.lexsort((u, v))
            u, v = u[order], v[order]
        extents = [u[v == row].max() - u[v == row].min() for row in sorted(set(v.tolist()))]
        assert hidden._row_span(u, v) == float(np.quantile(extents, hidden.ROW_SPAN_Q)), trial
    for trial in range(3000):  # the quantile itself, bit for bit, on spreads small and large
        x = rng.normal(0.0, 10 ** rng.uniform(-3, 3), int(rng.integers(1, 300)))
        q = (0.9, 0.5, 0.0, 1.0, float(rng.random()))[trial % 5]
        assert hidden._linear_quantile(x, q) == float(np.quantile(x, q)), trial


def wall_gap_scene(gap=(80, 120)):
    """Two trucks 6 m away, 4.5 m tall, fill the view but for a gap; a wall 20 m away closes it
    (no sky). The wall shows only in the gap: too narrow for a background plane of its own."""
    depth = ground_depth()
    depth = np.where((depth == 0) | (depth > 20.0), 20.0, depth)
    boxes = [stand(depth, 0, gap[0], 6.0, 4.5), stand(depth, gap[1], W, 6.0, 4.5)]
    values = depth.astype(np.float32)
    return Record(source="test", image_id="wall", width=W, height=H,
                  objects=Detections(np.array(boxes, float), ["Truck", "Truck"]),
                  depth=DepthMap(values, kind="depth", valid=values > 0, metric=True, source="sensor"))


def test_the_far_wall_is_not_in_front_of_the_ground_extrapolated_above_its_base():
    # The ground's plane explains free cells up to the wall's base (where the two meet), so the
    # rows around it have a background: the ground's plane, which above the base runs farther
    # than anything the image shows. The wall inside the trucks' grown boxes is no second layer:
    # nothing is in front of a background beyond the image's far end. (Before: 140 px, no count.)
    record = wall_gap_scene()
    assert unexplained_pixels(scene_for(record, VerifyConfig())) == 0
    rows, drops = rows_and_drops(record)
    assert [row["count"] for row in rows if row["task"] == "counting"] == [2], drops
    assert not drops["counting/unboxed_instance"]
