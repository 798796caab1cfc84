"""Model steps (depth, detection, pose) on tiny models built from configs, loaded offline.

Random weights: structure is asserted on real tiny models; correctness of the conversion code
(depth conventions, grids incl. EXIF rotation, box rescaling, keypoints -> facing, NMS) is asserted
with hand-made model outputs whose truth is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from _tiny_models import LABELS, TinyModels

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from spatialforge.processing.perception.depth_models import (  # noqa: E402
    DepthModelStep,
    depth_convention,
    DepthProPreprocessor,
    common_input_size,
    depth_maps_from_outputs,
    group_by_shape,
    resolve_dtype,
)
from spatialforge.processing.perception.detection import (  # noqa: E402
    DetectionStep,
    box_iou,
    center_to_corners,
    class_wise_nms,
    detections_from_transformers,
    grounding_label_scores,
    merge_across_prompts,
    nms,
    pack_prompts,
)
from spatialforge.processing.perception.pose import PoseStep, keypoints_from_pose_result, xyxy_to_coco  # noqa: E402
from spatialforge.processing.records import FACINGS, Detections, Record  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


def save_image(path, size, orientation=None, paint=None):
    """An RGB image of stored ``size`` (w, h); ``paint(array)`` draws on the stored pixels."""
    from PIL import Image

    arr = np.full((size[1], size[0], 3), 20, np.uint8)
    if paint is not None:
        paint(arr)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    im.save(path, exif=exif)
    return str(path)


def record_for(path, width, height, objects=None, image_id="img"):
    return Record("test", image_id, width, height, image_path=str(path), objects=objects or Detections.empty())


def bright_top_left(arr):
    arr[: arr.shape[0] // 2, : arr.shape[1] // 2] = 250


# -- depth: conventions ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, expected",
    [
        (transformers.DepthAnythingConfig(depth_estimation_type="relative"), ("inverse_depth", False)),
        (transformers.DepthAnythingConfig(depth_estimation_type="metric", max_depth=80), ("depth", True)),
        (transformers.DPTConfig(), ("inverse_depth", False)),
        (transformers.DepthProConfig(), ("depth", True)),
        (transformers.ZoeDepthConfig(), ("depth", True)),
    ],
)
def test_depth_convention_from_config(config, expected):
    assert depth_convention(config) == expected


def test_unknown_depth_convention_names_the_fix():
    with pytest.raises(ValueError, match="kind='depth'"):
        depth_convention(transformers.BertConfig())


def test_dtype_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="fp8"):
        resolve_dtype("fp8", "cpu")


def test_group_by_shape():
    shapes = [torch.zeros(3, 4, 6), torch.zeros(3, 6, 4), torch.zeros(3, 4, 6)]
    assert group_by_shape(shapes) == [[0, 2], [1]]


# -- depth: conversion with hand-made outputs ------------------------------------------------------
def test_depth_resized_to_target_grid_keeps_order(tiny_models):
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models.depth_anything())
    ramp = torch.arange(6, dtype=torch.float32).repeat(4, 1)[None]  # (1, 4, 6): grows to the right
    outputs = transformers.modeling_outputs.DepthEstimatorOutput(predicted_depth=ramp)
    (dm,) = depth_maps_from_outputs(processor, outputs, [(8, 12)], "inverse_depth", False, "model:x:inverse_depth")
    assert dm.values.shape == (8, 12) and dm.kind == "inverse_depth" and not dm.metric
    assert dm.values[:, -1].mean() > dm.values[:, 0].mean()
    assert dm.valid.all()


def test_metric_depth_marks_nonpositive_invalid():
    values = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])
    outputs = transformers.modeling_outputs.DepthEstimatorOutput(predicted_depth=values)
    (dm,) = depth_maps_from_outputs(None, outputs, [(2, 2)], "depth", True, "model:m:depth")
    assert dm.valid.tolist() == [[True, True], [False, True]]
    assert dm.nearness(1.0) > dm.nearness(3.0)


def test_depth_pro_inverse_depth_becomes_meters():
    """Depth Pro predicts inverse depth; converted output is meters (kind 'depth').

    Its image processor needs torchvision, so the conversion without a processor is tested here.
    """
    inverse = torch.full((1, 4, 4), 0.5)
    inverse[0, :, :2] = 0.25  # left half farther
    outputs = transformers.models.depth_pro.modeling_depth_pro.DepthProDepthEstimatorOutput(
        predicted_depth=inverse, field_of_view=None
    )
    (dm,) = depth_maps_from_outputs(None, outputs, [(4, 4)], "depth", True, "model:pro:depth", model_type="depth_pro")
    assert dm.values[:, 2:] == pytest.approx(2.0) and dm.values[:, :2] == pytest.approx(4.0)
    # With a 90 degree field of view on a 4 px wide image, focal = 2 px: depth = focal / (width * inverse).
    outputs.field_of_view = torch.tensor([90.0])
    (dm,) = depth_maps_from_outputs(None, outputs, [(4, 4)], "depth", True, "model:pro:depth", model_type="depth_pro")
    assert dm.values[:, 2:] == pytest.approx(1.0, rel=1e-5) and dm.values[:, :2] == pytest.approx(2.0, rel=1e-5)


class BrightnessDepth(torch.nn.Module):
    """A fake relative depth model: inverse depth = image brightness (known truth)."""

    def __init__(self):
        super().__init__()
        self.config = transformers.DPTConfig()  # model_type "dpt": inverse depth
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        return transformers.modeling_outputs.DepthEstimatorOutput(predicted_depth=pixel_values.mean(1))


@pytest.mark.parametrize("orientation", [None, 6])
def test_depth_follows_image_through_exif_and_flip(tiny_models, tmp_path, orientation):
    # Stored 40x20 with a bright top-left quadrant. Orientation 6 (rotate 90 degrees clockwise to
    # display): the displayed image is 20x40 and the bright quadrant is its top-right.
    path = save_image(tmp_path / "a.jpg", (40, 20), orientation, bright_top_left)
    w, h = (20, 40) if orientation == 6 else (40, 20)
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models.depth_anything())
    step = DepthModelStep(BrightnessDepth(), processor=processor, flip_tta=True, device="cpu")
    (record,) = list(step.run([record_for(path, w, h)]))
    depth = record.depth
    assert depth.values.shape == (h, w)
    assert depth.kind == "inverse_depth" and depth.source.endswith(":inverse_depth")
    if orientation == 6:
        bright, dark = depth.values[2:18, 12:], depth.values[22:, :8]
    else:
        bright, dark = depth.values[2:8, 2:18], depth.values[12:, 22:]
    assert bright.mean() > dark.mean() + 1.0
    alt = record.meta["depth_alt"]  # the flipped prediction, flipped back: same map for this model
    assert alt.values.shape == (h, w)
    np.testing.assert_allclose(alt.values, depth.values, atol=1e-4)


def count_forward_calls(model) -> dict:
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.__setitem__("n", calls["n"] + 1), with_kwargs=True)
    return calls


MIXED_SIZES = [(64, 48), (48, 64), (60, 40), (40, 60), (56, 32)]  # (w, h): landscape, portrait, wide


def test_common_input_size_follows_dpt_rule(tiny_models):
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models.depth_anything())  # 56, multiple 14
    # equal sizes: exactly the processor's own size for that image
    for w, h in MIXED_SIZES:
        alone = processor(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="pt")["pixel_values"].shape[-2:]
        assert common_input_size([(h, w)] * 3, processor) == tuple(alone)
    assert common_input_size([(48, 64), (64, 48)], processor) == (56, 56)
    dpt = transformers.AutoImageProcessor.from_pretrained(tiny_models.dpt())  # fixed size: nothing to do
    assert common_input_size([(48, 64), (64, 48)], dpt) is None


def test_mixed_aspect_ratios_run_in_one_forward_pass(tiny_models, tmp_path):
    """N photos of N shapes, batch_size=N: one forward pass; each map on its own grid, bright where the
    image is bright, and close to the one-image-at-a-time prediction."""
    records = []
    for i, (w, h) in enumerate(MIXED_SIZES):
        def paint(arr, i=i):  # a bright block at a different place in each image
            hh, ww = arr.shape[:2]
            y0, x0 = (i % 2) * hh // 2, (i // 2 % 2) * ww // 2
            arr[y0 : y0 + hh // 2, x0 : x0 + ww // 2] = 250
        path = save_image(tmp_path / f"m{i}.png", (w, h), paint=paint)
        records.append(record_for(path, w, h, image_id=f"m{i}"))
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models.depth_anything())
    results = {}
    for batch_size in (len(records), 1):
        model = BrightnessDepth()
        calls = count_forward_calls(model)
        step = DepthModelStep(model, processor=processor, batch_size=batch_size, device="cpu", flip_tta=True)
        results[batch_size] = list(step.run([record_for(r.image_path, r.width, r.height, image_id=r.image_id) for r in records]))
        assert calls["n"] == (2 if batch_size > 1 else 2 * len(records))  # flip TTA: one more pass per batch
    per_shape = DepthModelStep(BrightnessDepth(), processor=processor, batch_size=len(records), device="cpu",
                               batch_resize="per_shape")
    calls = count_forward_calls(per_shape.model)
    list(per_shape.run([record_for(r.image_path, r.width, r.height) for r in records]))
    shapes = {tuple(processor(images=[np.zeros((h, w, 3), np.uint8)])["pixel_values"][0].shape) for w, h in MIXED_SIZES}
    assert calls["n"] == len(shapes) > 1  # every input shape its own pass
    for i, (batched, alone) in enumerate(zip(results[len(records)], results[1])):
        assert batched.image_id == f"m{i}" and batched.depth.values.shape == (batched.height, batched.width)
        h, w = batched.height, batched.width
        y0, x0 = (i % 2) * h // 2, (i // 2 % 2) * w // 2
        inside = np.zeros((h, w), bool)
        inside[y0 + h // 8 : y0 + h // 2 - h // 8, x0 + w // 8 : x0 + w // 2 - w // 8] = True
        outside = np.ones((h, w), bool)
        outside[max(0, y0 - h // 8) : y0 + h // 2 + h // 8, max(0, x0 - w // 8) : x0 + w // 2 + w // 8] = False
        values = batched.depth.values
        assert values[inside].min() > values[outside].max() + 1.0
        # the common input stretches each image a little: same map up to resampling at the block's edges
        diff = np.abs(values - alone.depth.values)
        assert np.median(diff) < 0.02 * np.ptp(alone.depth.values)
        assert np.corrcoef(values.ravel(), alone.depth.values.ravel())[0, 1] > 0.95
        np.testing.assert_allclose(batched.meta["depth_alt"].values, values, atol=1e-4)


def test_model_steps_share_the_decoded_image(tiny_models, tmp_path, monkeypatch):
    path = save_image(tmp_path / "s.png", (40, 30))
    loads = []
    original = Record.load_image
    monkeypatch.setattr(Record, "load_image", lambda self: loads.append(self.image_id) or original(self))
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models.depth_anything())
    first = DepthModelStep(BrightnessDepth(), processor=processor, device="cpu", keep_image=True)
    second = DepthModelStep(BrightnessDepth(), processor=processor, device="cpu", target="alt")
    (record,) = list(second.run(first.run([record_for(path, 40, 30)])))
    assert loads == ["img"]  # decoded once for both steps
    assert "_image" not in record.meta  # released by the last model step
    np.testing.assert_allclose(record.meta["depth_alt"].values, record.depth.values)


# -- depth: Depth Pro without torchvision ----------------------------------------------------------
def test_depth_pro_preprocessing_matches_its_processor_steps():
    from PIL import Image

    image = Image.new("RGB", (40, 20), (255, 0, 51))
    pre = DepthProPreprocessor(size={"height": 8, "width": 16})
    pv = pre([image])["pixel_values"]
    assert pv.shape == (1, 3, 8, 16)
    # rescale to [0, 1], normalize with mean = std = 0.5: 255 -> 1, 0 -> -1, 51 -> -0.6
    np.testing.assert_allclose(pv[0, :, 3, 5].numpy(), [1.0, -1.0, -0.6], atol=1e-6)


class InverseDepthPro(torch.nn.Module):
    """A fake Depth Pro: canonical inverse depth 0.5 on the right half, 0.25 on the left, FOV 90 degrees."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        inverse = torch.full((b, h, w), 0.5)
        inverse[:, :, : w // 2] = 0.25
        return transformers.models.depth_pro.modeling_depth_pro.DepthProDepthEstimatorOutput(
            predicted_depth=inverse, field_of_view=torch.full((b,), 90.0))


def test_depth_pro_step_without_torchvision_gives_meters(tiny_models, tmp_path):
    path = save_image(tmp_path / "p.png", (40, 20))
    step = DepthModelStep(tiny_models.depth_pro(), device="cpu", batch_size=2)
    records = [record_for(path, 40, 20, image_id="a"), record_for(path, 40, 20, image_id="b")]
    out = list(step.run(records))  # the real tiny model, loaded offline; processor without torchvision
    assert isinstance(step.processor, DepthProPreprocessor) and step.processor.size == {"height": 128, "width": 128}
    assert all(r.depth.kind == "depth" and r.depth.metric and r.depth.values.shape == (20, 40) for r in out)
    assert all(r.depth.estimated for r in out)  # a model's meters: per-object errors tolerated
    assert all(np.isfinite(r.depth.values).all() and (r.depth.values > 0).all() for r in out)
    # known truth: FOV 90 on a 40 px wide image: focal 20 px; depth = focal / (width * inverse)
    step.model = InverseDepthPro(step.model.config)
    (r,) = list(step.run([record_for(path, 40, 20)]))
    assert r.depth.values[:, 25:] == pytest.approx(1.0, rel=1e-4) and r.depth.values[:, :15] == pytest.approx(2.0, rel=1e-4)
    assert r.depth.nearness(1.0) > r.depth.nearness(2.0)


def test_processor_needing_torchvision_names_it(monkeypatch):
    from spatialforge.processing.perception import depth_models

    def unavailable(*args, **kwargs):
        raise ValueError("None of these classes could be imported. Missing optional dependencies: torchvision.")

    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", unavailable)
    with pytest.raises(ImportError, match="pip install torchvision"):
        depth_models.load_depth_processor("org/zoe", "zoedepth")


# -- depth: tiny real models ------------------------------------------------------------------------
@pytest.mark.parametrize("metric", [False, True])
def test_depth_anything_step_structure(tiny_models, tmp_path, metric):
    paths = [
        save_image(tmp_path / "wide.jpg", (64, 32)),
        save_image(tmp_path / "tall.png", (30, 50)),
        save_image(tmp_path / "rot.jpg", (48, 24), orientation=6),
    ]
    records = [record_for(paths[0], 64, 32, image_id="a"), record_for(paths[1], 30, 50, image_id="b"),
               record_for(paths[2], 24, 48, image_id="c")]
    step = DepthModelStep(tiny_models.depth_anything(metric=metric), batch_size=2, device="cpu")
    out = list(step.run(records))
    assert [r.image_id for r in out] == ["a", "b", "c"]
    kind = "depth" if metric else "inverse_depth"
    for r in out:
        assert r.depth.values.shape == (r.height, r.width)
        assert r.depth.kind == kind and r.depth.metric is metric and r.depth.estimated
        assert r.depth.source == f"model:{tiny_models.depth_anything(metric=metric)}:{kind}"
        assert np.isfinite(r.depth.values).all()
    assert step.stats.records_in == 3 and step.stats.records_out == 3


def test_dpt_step_and_bad_images(tiny_models, tmp_path):
    good = save_image(tmp_path / "g.png", (40, 30))
    missing = str(tmp_path / "missing.png")
    wrong = save_image(tmp_path / "w.png", (40, 30))
    records = [record_for(good, 40, 30, image_id="g"), record_for(missing, 40, 30, image_id="m"),
               record_for(wrong, 30, 40, image_id="w")]
    step = DepthModelStep(tiny_models.dpt(), device="cpu", on_error="skip")
    out = list(step.run(records))
    assert [r.image_id for r in out] == ["g"]
    assert out[0].depth.kind == "inverse_depth" and out[0].depth.values.shape == (30, 40)
    assert step.stats.dropped == {"image_unreadable": 1, "image_size_mismatch": 1}
    with pytest.raises(ValueError, match="missing.png"):
        list(DepthModelStep(tiny_models.dpt(), device="cpu", on_error="error").run([record_for(missing, 40, 30)]))


# -- detection: NMS and conversion ------------------------------------------------------------------
def test_box_iou_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.0])


@pytest.mark.parametrize(
    "boxes, scores, iou, keep",
    [
        ([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        ([[0, 0, 10, 10], [1, 0, 11, 10]], [0.5, 0.9], 0.5, [1]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.5, [0, 1]),  # IoU 1/3 <= 0.5: both kept
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 0.3, [0]),
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], 0.5, [0]),  # tie: the earlier box
        (np.zeros((0, 4)), [], 0.5, []),
    ],
)
def test_nms_table(boxes, scores, iou, keep):
    assert nms(np.array(boxes, float), np.array(scores, float), iou).tolist() == keep


def test_class_wise_nms_keeps_overlapping_different_labels():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], float)
    keep = class_wise_nms(boxes, np.array([0.9, 0.8, 0.7]), ["cup", "cup", "table"], 0.5)
    assert keep.tolist() == [0, 2]


def test_detections_from_transformers_clips_thresholds_and_maps_labels():
    result = {
        "boxes": torch.tensor([[-5.0, 2, 30, 50], [0, 0, 10, 10], [1, 0, 11, 10], [5, 5, 5.5, 9], [0, 0, 8, 8]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.95, 0.1]),
        "labels": torch.tensor([0, 1, 1, 2, 1]),
    }
    det, drops = detections_from_transformers(result, {0: "person", 1: "cup", 2: "dog"}, 20, 40, 0.3, 0.5)
    assert det.labels == ["person", "cup"]
    np.testing.assert_allclose(det.xyxy, [[0, 2, 20, 40], [0, 0, 10, 10]])
    assert drops == {"low_score": 1, "degenerate_box": 1, "nms": 1, "prompt_merge": 0}


def test_nms_is_class_wise_in_conversion():
    """Two overlapping boxes of different classes (a cup on a table) both survive; same class: one."""
    result = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11]]),
              "scores": torch.tensor([0.9, 0.8, 0.7]), "text_labels": ["cup", "table", "cup"]}
    det, drops = detections_from_transformers(result, None, 20, 20, 0.3, 0.5)
    assert det.labels == ["cup", "table"] and drops["nms"] == 1


def test_merge_across_prompts():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    scores = np.array([0.6, 0.9, 0.8, 0.5])
    # box 2 overlaps box 1 but comes from the same prompt: left to class-wise NMS
    assert merge_across_prompts(boxes, scores, np.array([0, 1, 1, 0]), 0.5).tolist() == [1, 2, 3]
    result = {"boxes": boxes, "scores": scores, "text_labels": ["person", "dog", "cat", "person"],
              "prompts": np.array([0, 1, 1, 0])}
    det, drops = detections_from_transformers(result, None, 40, 40, 0.3, 0.5)
    assert det.labels == ["dog", "cat", "person"] and drops["prompt_merge"] == 1


def test_center_to_corners():
    np.testing.assert_allclose(center_to_corners(np.array([[0.25, 0.5, 0.5, 1.0]]), 20, 40), [[0, 0, 10, 40]])


def test_pack_prompts_respects_token_budget():
    assert pack_prompts([1, 2, 1, 3], 6) == [[0, 1], [2, 3]]
    assert pack_prompts([1, 2, 1, 3], 5) == [[0, 1], [2], [3]]
    with pytest.raises(ValueError, match="label #0"):
        pack_prompts([9], 5)


def test_grounding_label_scores_take_span_maximum():
    logits = torch.full((1, 2, 8), -10.0)
    logits[0, 0, 4] = 3.0  # query 0: token 4, inside the span of label 1
    logits[0, 1, 1] = 2.0  # query 1: token 1, label 0
    scores = grounding_label_scores(logits, [(1, 3), (4, 5)])
    assert scores.shape == (1, 2, 2)
    assert scores[0].argmax(-1).tolist() == [1, 0]


class FixedDetr(torch.nn.Module):
    """A fake DETR whose one confident query is a known box: left half of the image, label 1."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values, pixel_mask=None):
        b = len(pixel_values)
        logits = torch.full((b, 2, len(LABELS) + 1), -10.0)
        logits[:, 0, 1] = 10.0  # query 0: "cup"
        logits[:, 1, -1] = 10.0  # query 1: no object
        boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 0.2, 0.2]]).expand(b, 2, 4)
        return transformers.models.detr.modeling_detr.DetrObjectDetectionOutput(logits=logits, pred_boxes=boxes)


@pytest.mark.parametrize("orientation", [None, 6])
def test_detection_boxes_on_exif_grid(tiny_models, tmp_path, orientation):
    path = save_image(tmp_path / "d.jpg", (60, 30), orientation)
    w, h = (30, 60) if orientation == 6 else (60, 30)
    step = DetectionStep(tiny_models.detr(), device="cpu")
    step.setup()
    step.model = FixedDetr(step.model.config)
    (record,) = list(step.run([record_for(path, w, h)]))
    assert record.objects.labels == ["cup"]
    np.testing.assert_allclose(record.objects.xyxy, [[0, 0, w / 2, h]], atol=1e-3)
    assert record.box_source == f"model:{tiny_models.detr()}"
    assert record.exhaustive_labels == set()


class TokenGrounding(torch.nn.Module):
    """A fake Grounding DINO that reads its prompt: for each query, token logits given per word
    (``{query: {word: logit}}``); every other token -10. Boxes are fixed per query."""

    BOXES = [[0.25, 0.25, 0.3, 0.3], [0.75, 0.25, 0.2, 0.2]]  # query 0: top-left, query 1: top-right (OWLv2 pads to a square below)

    def __init__(self, config, tokenizer, word_logits):
        super().__init__()
        self.config, self.tok, self.word_logits = config, tokenizer, word_logits
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.prompts = []

    def forward(self, input_ids, pixel_values, **kwargs):
        b, t = input_ids.shape
        self.prompts.append(self.tok.decode(input_ids[0], skip_special_tokens=True))
        logits = torch.full((b, 2, t), -10.0)
        for q, words in self.word_logits.items():
            for word, value in words.items():
                logits[:, q][input_ids == self.tok.convert_tokens_to_ids(word)] = value
        boxes = torch.tensor(self.BOXES).expand(b, 2, 4)
        return transformers.models.grounding_dino.modeling_grounding_dino.GroundingDinoObjectDetectionOutput(
            logits=logits, pred_boxes=boxes)


class QueryOwl(torch.nn.Module):
    """A fake OWLv2: per query, logits given per label word (other labels -10); fixed boxes."""

    def __init__(self, config, tokenizer, word_logits):
        super().__init__()
        self.config, self.tok, self.word_logits = config, tokenizer, word_logits
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, pixel_values, attention_mask=None, **kwargs):
        b = len(pixel_values)
        n = len(input_ids) // b  # text queries per image
        logits = torch.full((b, 2, n), -10.0)
        for k in range(n):
            for q, words in self.word_logits.items():
                for word, value in words.items():
                    if self.tok.convert_tokens_to_ids(word + "</w>") in input_ids[k].tolist():
                        logits[:, q, k] = value
        boxes = torch.tensor(TokenGrounding.BOXES).expand(b, 2, 4)
        return transformers.models.owlv2.modeling_owlv2.Owlv2ObjectDetectionOutput(logits=logits, pred_boxes=boxes)


OPEN_VOCABULARY = ["person", "cup", "dog", "cat", "car"]


def _open_step(tiny_models, factory, fake, word_logits, labels_per_prompt=None, nms_iou=0.5):
    step = DetectionStep(getattr(tiny_models, factory)(), labels=OPEN_VOCABULARY, labels_per_prompt=labels_per_prompt,
                         threshold=0.5, nms_iou=nms_iou, device="cpu")
    step.setup()
    step.model = fake(step.model.config, step.processor.tokenizer, word_logits)
    return step


@pytest.mark.parametrize("labels_per_prompt", [None, 2, 1])
def test_grounding_labels_come_from_token_spans(tiny_models, tmp_path, labels_per_prompt):
    """Query 0 lights up the token of "dog", query 1 the token of "cup" (weakly also "car"): each box
    gets its own word's label, whichever prompt the word is in and at whatever position."""
    path = save_image(tmp_path / "g.png", (80, 40))
    step = _open_step(tiny_models, "grounding_dino", TokenGrounding,
                      {0: {"dog": 4.0}, 1: {"cup": 3.0, "car": 1.0}}, labels_per_prompt)
    (r,) = list(step.run([record_for(path, 80, 40)]))
    assert r.objects.labels == ["dog", "cup"]
    np.testing.assert_allclose(r.objects.xyxy, [[8, 4, 32, 16], [52, 6, 68, 14]], atol=1e-4)
    assert r.objects.scores == pytest.approx([1 / (1 + np.exp(-4.0)), 1 / (1 + np.exp(-3.0))], rel=1e-5)
    expected = {None: 1, 2: 3, 1: 5}[labels_per_prompt]
    assert len(step.model.prompts) == expected and len(step.prompts) == expected


@pytest.mark.parametrize("factory, fake", [("grounding_dino", TokenGrounding), ("owlv2", QueryOwl)])
def test_split_vocabulary_gives_the_single_prompt_result(tiny_models, tmp_path, factory, fake):
    """The same object seen by several prompts (query 0: "dog" strongly, "person" weakly, in different
    prompts) is one box with the best label, as with one prompt; a different object overlapping it
    that only one prompt sees is kept when it does not overlap enough."""
    path = save_image(tmp_path / "o.png", (80, 40))
    logits = {0: {"dog": 3.0, "person": 1.0}, 1: {"cat": 2.0}}
    results = []
    for lpp in (None, 1):
        step = _open_step(tiny_models, factory, fake, logits, lpp)
        (r,) = list(step.run([record_for(path, 80, 40)]))
        results.append((r.objects.labels, r.objects.xyxy.round(3).tolist(), r.objects.scores.round(5).tolist()))
    assert results[0] == results[1]
    assert results[0][0] == ["dog", "cat"]


# -- detection: tiny real models --------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["detr", "rt_detr", "owlv2", "owlvit", "grounding_dino"])
def test_detection_step_structure(tiny_models, tmp_path, factory):
    path = save_image(tmp_path / "x.jpg", (64, 40), 6)
    annotated = record_for(path, 40, 64, objects=Detections(np.array([[0, 0, 5, 5.0]]), ["keep"]), image_id="ann")
    vocabulary = ["person", "cup", "dog"]
    step = DetectionStep(getattr(tiny_models, factory)(), labels=vocabulary if factory not in ("detr", "rt_detr") else None,
                         threshold=0.0, nms_iou=0.5, device="cpu", batch_size=2, min_size=0.0)
    out = list(step.run([record_for(path, 40, 64, image_id="a"), record_for(path, 40, 64, image_id="b"), annotated]))
    assert [r.image_id for r in out] == ["a", "b", "ann"]
    assert step.mode == ("closed" if factory in ("detr", "rt_detr") else "open")
    allowed = set(LABELS) if step.mode == "closed" else set(vocabulary)
    for r in out[:2]:
        det = r.objects
        assert len(det) > 0 and set(det.labels) <= allowed
        assert (det.xyxy[:, [0, 2]] <= 40).all() and (det.xyxy[:, [1, 3]] <= 64).all() and (det.xyxy >= 0).all()
        assert (np.diff(det.scores) <= 0).all()  # sorted by score
        assert r.box_source.startswith("model:") and r.exhaustive_labels == set()
    assert out[2].objects.labels == ["keep"] and out[2].box_source == "annotation"  # annotated boxes kept


def test_open_vocabulary_defaults_to_objects365(tiny_models):
    from spatialforge.processing.perception.objects365_labels import OBJECTS365_CATEGORIES, OBJECTS365_PROMPTS, prompt_name

    assert len(OBJECTS365_CATEGORIES) == len(set(OBJECTS365_PROMPTS)) == 365
    assert prompt_name("Moniter/TV") == "monitor" and prompt_name("Cabinet/shelf") == "cabinet"
    step = DetectionStep(tiny_models.grounding_dino(), device="cpu")
    step.setup()
    assert step.vocabulary == list(OBJECTS365_PROMPTS)
    assert sorted(i for chunk in step.prompts for i in chunk) == list(range(365))
    assert len(step.prompts) > 1  # 365 labels do not fit one 64-token prompt


def test_closed_set_label_filter(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="giraffe"):
        DetectionStep(tiny_models.detr(), labels=["giraffe"], device="cpu").setup()
    path = save_image(tmp_path / "x.png", (50, 40))
    step = DetectionStep(tiny_models.detr(), labels=["dog"], threshold=0.0, device="cpu")
    (r,) = list(step.run([record_for(path, 50, 40)]))
    assert set(r.objects.labels) <= {"dog"}


# -- pose ---------------------------------------------------------------------------------------------
def test_keypoints_from_pose_result_fills_missing_with_nan():
    result = {"keypoints": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([5, 6])}
    kp = keypoints_from_pose_result(result)
    assert kp.shape == (17, 3) and kp[5].tolist() == pytest.approx([1, 2, 0.9]) and np.isnan(kp[0, 0])
    assert xyxy_to_coco(np.array([[10, 20, 30, 60]])).tolist() == [[10, 20, 20, 40]]


class FacingPose(torch.nn.Module):
    """A fake ViTPose: heatmap peaks of a person facing the camera (left shoulder on image right)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values, dataset_index=None):
        heat = torch.zeros(len(pixel_values), 17, 16, 12)
        peaks = {0: (3, 6), 1: (2, 7), 2: (2, 5), 5: (5, 9), 6: (5, 2), 11: (11, 8), 12: (11, 3)}  # (row, col)
        for k, (y, x) in peaks.items():
            heat[:, k, y, x] = 1.0
        return transformers.models.vitpose.modeling_vitpose.VitPoseEstimatorOutput(heatmaps=heat)


def test_pose_step_keypoints_on_grid_and_facing(tiny_models, tmp_path):
    path = save_image(tmp_path / "p.jpg", (80, 60), 6)  # displayed 60x80
    det = Detections(np.array([[10, 10, 40, 70], [45, 5, 58, 20], [0, 0, 3, 3]], float), ["person", "cup", "person"])
    step = PoseStep(tiny_models.vitpose(), device="cpu", min_confidence=0.3)
    step.setup()
    step.model = FacingPose(step.model.config)
    (r,) = list(step.run([record_for(path, 60, 80, objects=det)]))
    kp = r.objects.keypoints
    assert np.isfinite(kp[0]).all() and np.isnan(kp[1, :, 0]).all() and np.isnan(kp[2, :, 0]).all()
    x, y = kp[0, :, 0], kp[0, :, 1]
    assert x[5] > x[6] and y[11] > y[5]  # peaks land where drawn, on the display grid
    peaked = kp[0, :, 2] > 0  # keypoints without a heatmap peak score 0 and may fall outside
    assert peaked.sum() == 7
    assert ((x >= 0) & (x <= 60) & (y >= 0) & (y <= 80))[peaked].all()
    assert r.objects.facing == ["toward_camera", "unknown", "unknown"]
    assert r.objects.facing_confidence[0] > 0.3
    assert r.drops["pose_box_too_small"] == 1


def test_pose_person_labels_are_the_perspective_tasks():
    from spatialforge.processing.perception.facing import FacingFromKeypoints
    from spatialforge.processing.tasks.verify import VerifyConfig

    det = Detections(np.array([[0, 0, 40, 90]] * 7, float), ["Man", "Woman", "Boy", "Girl", "Person", "child", "cup"])
    record = Record("openimages", "x", 100, 100, objects=det)
    step = PoseStep("unused/model")  # nothing is loaded before setup()
    assert step.person_indices(record) == [0, 1, 2, 3, 4, 5]
    assert step.person_labels == set(VerifyConfig().person_labels) == FacingFromKeypoints().person_labels
    assert PoseStep("unused/model", person_labels=["Rider"]).person_labels == {"rider"}


def test_pose_step_tiny_vitpose_structure(tiny_models, tmp_path):
    path = save_image(tmp_path / "p.png", (64, 48))
    det = Detections(np.array([[4, 4, 30, 44], [30, 2, 60, 46]], float), ["person", "Person"])
    no_people = record_for(path, 64, 48, objects=Detections(np.array([[0, 0, 9, 9.0]]), ["cup"]), image_id="none")
    step = PoseStep(tiny_models.vitpose(), device="cpu", batch_size=2)
    out = list(step.run([record_for(path, 64, 48, objects=det), no_people]))
    assert len(out) == 2
    assert np.isfinite(out[0].objects.keypoints).all() and out[0].objects.keypoints.shape == (2, 17, 3)
    assert all(f in FACINGS for f in out[0].objects.facing)
    assert np.isnan(out[1].objects.keypoints).all()
