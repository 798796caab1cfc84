"""OWLv2 / OWL-ViT with the vocabulary's text queries encoded once: equal to the plain forward.

Tiny real models (random weights, built offline): the cached path (:func:`owl_detect`) is compared
value by value with ``model(input_ids, pixel_values)`` on the same inputs, and the step's final
detections with those of the step running the plain forward; the text tower is counted with a
forward hook.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from _tiny_models import TinyModels

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("scipy")  # OWLv2's image processor

from spatialforge.processing.perception import detection  # noqa: E402
from spatialforge.processing.perception.detection import (  # noqa: E402
    DetectionStep,
    owl_cache_support,
    owl_detect,
    owl_text_queries,
)
from spatialforge.processing.records import Record  # noqa: E402

VOCABULARY = ["person", "cup", "dog", "cat", "car", "chair", "table"]
SIZES = [(64, 40), (48, 48), (40, 72), (56, 32), (64, 64)]  # (width, height): mixed aspect ratios


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-owl"))


def make_records(folder, n: int) -> list[Record]:
    from PIL import Image

    records = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        arr = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(arr).save(path)
        records.append(Record("test", f"img{i}", w, h, image_path=str(path)))
    return records


def count_text_passes(model) -> dict:
    """Calls of the text tower (``model.<owlv2|owlvit>.text_model``)."""
    calls = {"n": 0}
    tower = getattr(model, model.base_model_prefix).text_model
    tower.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return calls


@pytest.mark.parametrize("factory", ["owlv2", "owlvit"])
def test_cached_path_equals_the_forward_per_chunk(tiny_models, tmp_path, factory):
    """3 images, the vocabulary in chunks of 3, 3 and 1 labels: per chunk, logits, boxes (and OWLv2's
    objectness) of the cached path equal the forward's within 1e-5; the whole vocabulary at once
    equals the chunks joined."""
    step = DetectionStep(getattr(tiny_models, factory)(), labels=VOCABULARY, labels_per_prompt=3, device="cpu")
    step.setup()
    model, processor = step.model, step.processor
    assert owl_cache_support(model) is None
    images = [r.load_image() for r in make_records(tmp_path, 3)]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        joined, embeds, masks = [], [], []
        for chunk in step.prompts:
            labels = [VOCABULARY[i] for i in chunk]
            tokens = processor(text=[labels], return_tensors="pt")
            queries = owl_text_queries(model, tokens["input_ids"], tokens["attention_mask"])
            cached = owl_detect(model, pixel_values, *queries)
            plain = model(**processor(text=[labels] * len(images), return_tensors="pt"), pixel_values=pixel_values)
            assert cached.logits.shape == plain.logits.shape == (3, pixel_values.shape[-1] ** 2 // 64, len(labels))
            torch.testing.assert_close(cached.logits, plain.logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(cached.pred_boxes, plain.pred_boxes, atol=1e-5, rtol=0)
            torch.testing.assert_close(cached.image_embeds, plain.image_embeds, atol=1e-5, rtol=0)
            if factory == "owlv2":
                torch.testing.assert_close(cached.objectness_logits, plain.objectness_logits, atol=1e-5, rtol=0)
            joined.append(plain.logits)
            embeds.append(queries[0])
            masks.append(queries[1])
        whole = owl_detect(model, pixel_values, torch.cat(embeds), torch.cat(masks))
    assert [len(c) for c in step.prompts] == [3, 3, 1]
    torch.testing.assert_close(whole.logits, torch.cat(joined, dim=-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("factory", ["owlv2", "owlvit"])
def test_cached_step_gives_the_plain_steps_detections(tiny_models, tmp_path, factory):
    """5 images in batches of 2, vocabulary in 3 prompts: the same detections (labels and order
    identical, boxes and scores within float rounding) and drop counts as the plain forward; the text
    tower runs once per prompt (plus once for the first-use check), not once per prompt and batch."""
    records = make_records(tmp_path, 5)
    results, passes = {}, {}
    for cache in (True, False):
        step = DetectionStep(getattr(tiny_models, factory)(), labels=VOCABULARY, labels_per_prompt=3, threshold=0.0,
                             nms_iou=0.5, batch_size=2, device="cpu", min_size=0.0, cache_text_queries=cache)
        step.setup()
        calls = count_text_passes(step.model)
        out = list(step.run([Record(r.source, r.image_id, r.width, r.height, image_path=r.image_path) for r in records]))
        results[cache], passes[cache] = out, calls["n"]
        assert (step._owl_queries[1] is not None) == cache
    batches, prompts = 3, 3
    assert passes[True] == prompts + 1  # + the first-use check's forward on one image
    assert passes[False] == batches * prompts
    for a, b in zip(results[True], results[False]):
        assert len(a.objects) > 0
        assert a.objects.labels == b.objects.labels
        np.testing.assert_allclose(a.objects.xyxy, b.objects.xyxy, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.objects.scores, b.objects.scores, atol=1e-6, rtol=0)
        assert a.drops == b.drops


class NoHeads(torch.nn.Module):
    """A wrapper hiding the detection heads: only its forward is known."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, **kwargs):
        return self.inner(**kwargs)


@pytest.mark.parametrize("why", ["no_heads", "check_fails"])
def test_falls_back_to_the_forward_with_a_note(tiny_models, tmp_path, monkeypatch, caplog, why):
    """A model without the public pieces, or a cached path that does not match the forward (as on a
    transformers release composing it differently), runs the plain forward, says so once in the log,
    and gives the plain step's detections."""
    records = make_records(tmp_path, 2)
    step = DetectionStep(tiny_models.owlv2(), labels=VOCABULARY, threshold=0.0, batch_size=2, device="cpu")
    step.setup()
    if why == "no_heads":
        step.model = NoHeads(step.model)
        assert "has no image_embedder, class_predictor, box_predictor, get_text_features" in owl_cache_support(step.model)
    else:
        monkeypatch.setitem(detection.OWL_CHECK_ATOL, "fp32", -1.0)  # any difference fails the check
    with caplog.at_level(logging.INFO, logger="spatialforge.processing.perception.detection"):
        out = list(step.run([Record(r.source, r.image_id, r.width, r.height, image_path=r.image_path) for r in records]))
    assert step._owl_queries[1] is None
    notes = [m for m in caplog.messages if "re-encoded with every batch" in m]
    assert len(notes) == 1
    assert ("has no image_embedder" if why == "no_heads" else "differs from the forward") in notes[0]
    plain = DetectionStep(tiny_models.owlv2(), labels=VOCABULARY, threshold=0.0, batch_size=2, device="cpu",
                          cache_text_queries=False)
    expected = list(plain.run([Record(r.source, r.image_id, r.width, r.height, image_path=r.image_path) for r in records]))
    for a, b in zip(out, expected):
        assert a.objects.labels == b.objects.labels
        np.testing.assert_array_equal(a.objects.xyxy, b.objects.xyxy)


def test_grounding_dino_is_never_cached(tiny_models, tmp_path):
    """Grounding DINO fuses text and image in its encoder: every batch runs the full model."""
    step = DetectionStep(tiny_models.grounding_dino(), labels=VOCABULARY[:3], threshold=0.0, device="cpu")
    (r,) = list(step.run(make_records(tmp_path, 1)))
    assert step._owl_queries is None and r.box_source.startswith("model:")
