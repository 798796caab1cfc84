"""Images decoded at the scale the processor reads them: close to the full decode on real photos,
identical where no reduction applies, and the full size kept for the boxes."""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import numpy as np
import pytest
import skimage
import torch
from PIL import Image
from transformers import (
    BlipImageProcessor,
    CLIPImageProcessor,
    LlavaNextImageProcessor,
    SiglipImageProcessor,
)

from spatialforge.processing.training.collate import ChatCollator
from spatialforge.processing.training.images import decode_image, processor_decode_size, resolve_decode_size
from spatialforge.processing.training.stream import TrainingStream

# Real photos that scikit-image ships.
_SK = os.path.join(os.path.dirname(skimage.__file__), "data")
RETINA = os.path.join(_SK, "retina.jpg")  # 1411 x 1411 JPEG
HUBBLE = os.path.join(_SK, "hubble_deep_field.jpg")  # 1000 x 872 JPEG
ROCKET = os.path.join(_SK, "rocket.jpg")  # 640 x 427 JPEG
ASTRONAUT = os.path.join(_SK, "astronaut.png")  # 512 x 512 PNG
COFFEE = os.path.join(_SK, "coffee.png")  # 600 x 400 PNG

# Tolerance of the reduced decode against the full decode, in levels of 255 of the pixel values
# before normalization (|delta pixel_values| * std * 255): the mean over all values, and the 99th
# percentile (sharp edges differ most: the DCT-domain downscale filters differently from the
# processor's bicubic over the full image). Measured: mean 0.5-1.2, p99 3-10.
MEAN_LEVELS, P99_LEVELS = 2.0, 16.0


def clip(size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _levels(image_processor, a: Image.Image, b: Image.Image) -> np.ndarray:
    pa, pb = (image_processor(images=[x])["pixel_values"][0] for x in (a, b))
    assert pa.shape == pb.shape
    return np.abs(pa - pb) * np.asarray(image_processor.image_std).reshape(3, 1, 1) * 255


def test_decode_size_comes_from_processors_whose_output_grid_is_fixed():
    assert processor_decode_size(clip(224)) == (224, 224)  # shortest edge 224, then a 224 crop
    assert processor_decode_size(SiglipImageProcessor(size={"height": 384, "width": 256})) == (256, 384)
    assert processor_decode_size(BlipImageProcessor()) == (384, 384)
    # the grid would follow the input's aspect ratio (rounded): no reduction
    assert processor_decode_size(CLIPImageProcessor(size={"shortest_edge": 224}, do_center_crop=False)) is None
    assert processor_decode_size(CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 256, "width": 256})) is None
    assert processor_decode_size(CLIPImageProcessor(do_resize=False)) is None  # the processor reads the pixels as they are
    assert processor_decode_size(LlavaNextImageProcessor()) is None  # tiles chosen from the input size
    assert resolve_decode_size(300) == (300, 300) and resolve_decode_size((320, 240)) == (320, 240)
    assert resolve_decode_size(None) is None
    for bad in (0, (0, 10), (1, 2, 3), True, 2.5):
        with pytest.raises(ValueError, match="decode_size"):
            resolve_decode_size(bad)


@pytest.mark.parametrize("path, size, decoded", [
    (RETINA, 224, (353, 353)),  # JPEG: 1/4 (1/8 would be 177 < 224)
    (HUBBLE, 224, (500, 436)),  # JPEG: 1/2
    (RETINA, 336, (353, 353)),
    (HUBBLE, 336, (500, 436)),
    (ASTRONAUT, 224, (256, 256)),  # PNG: decoded in full, reduced by 2
])
def test_reduced_decode_is_close_to_the_full_decode_on_real_photos(path, size, decoded):
    processor = clip(size)
    full, full_size = decode_image(path)
    small, small_full_size = decode_image(path, processor_decode_size(processor))
    assert small.size == decoded and small.mode == "RGB"
    assert small_full_size == full_size == full.size
    d = _levels(processor, full, small)
    assert d.mean() <= MEAN_LEVELS and np.quantile(d, 0.99) <= P99_LEVELS, (d.mean(), np.quantile(d, 0.99))
    # and not close by accident: another photo is far
    other = decode_image(ROCKET)[0]
    assert _levels(processor, full, other).mean() > 10 * MEAN_LEVELS


@pytest.mark.parametrize("path, size", [(ROCKET, 224), (COFFEE, 224), (HUBBLE, 448), (ASTRONAUT, 336)])
def test_decode_is_pixel_for_pixel_the_full_one_where_no_reduction_applies(path, size):
    processor = clip(size)
    full, _ = decode_image(path)
    same, _ = decode_image(path, processor_decode_size(processor))
    assert same.size == full.size and np.array_equal(np.asarray(same), np.asarray(full))
    a, b = (torch.as_tensor(processor(images=[x])["pixel_values"][0]) for x in (full, same))
    assert torch.equal(a, b)


def test_exif_rotated_jpeg_is_reduced_on_its_displayed_grid(tmp_path):
    """Stored 872 x 1000 with Orientation 6 (displayed 1000 x 872); a need of 480 x 200 on the
    displayed grid allows 1/2 (1000 // 480 = 2); read on the stored grid it would allow none."""
    upright = Image.open(HUBBLE).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "rotated.jpg")
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    image, size = decode_image(path, (480, 200))
    assert size == (1000, 872) and image.size == (500, 436)
    reference = upright.resize((500, 436), Image.Resampling.BOX)  # the same content, upright
    assert np.abs(np.asarray(image, np.float32) - np.asarray(reference, np.float32)).mean() < 4


def _example():
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "train_tiny.py")
    spec = importlib.util.spec_from_file_location("train_tiny", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stream_decodes_smaller_keeps_the_full_size_and_the_same_samples(tmp_path):
    from _loader_fixtures import make_dataset

    fx = make_dataset(str(tmp_path / "fx"))
    kw = dict(seed=3, shuffle_buffer=5, index_dir=str(tmp_path / "index"))
    full = list(TrainingStream(fx.annotations, "counting", fx.image_dirs, **kw))
    small = list(TrainingStream(fx.annotations, "counting", fx.image_dirs, decode_size=(16, 12), **kw))
    assert [s["id"] for s in small] == [s["id"] for s in full] and len(small) == len(fx.images)
    by_id = {im.image_id: im for im in fx.images}
    for s in small:  # JPEGs at 1/4 (DCT scaling), PNGs reduced by 4; the rotated one on its displayed grid
        im = by_id[s["rows"][0]["image_id"]]
        assert s["image_size"] == (im.width, im.height)
        assert s["image"].size == (math.ceil(im.width / 4), math.ceil(im.height / 4)) and s["image"].mode == "RGB"
        x1, y1, x2, y2 = (v / 4 for v in im.rect)  # the red rectangle where the rows' boxes say, scaled
        red = s["image"].getpixel((int((x1 + x2) / 2), int((y1 + y2) / 2)))
        assert all(abs(a - b) < 60 for a, b in zip(red, (255, 0, 0))), (im.image_id, red)
    assert all(s["image_size"] == s["image"].size for s in full)


def test_collator_writes_boxes_for_the_full_image_when_it_was_decoded_smaller(tmp_path, caplog):
    """Qwen2.5-VL box text is in pixels of the image as its processor resizes it: from the full size."""
    from transformers import AutoProcessor

    rows = [{"id": "mine-a-grounding-000", "source": "mine", "image_id": "a", "task": "grounding", "width": 1000,
             "height": 872, "question": "Where is the galaxy?", "answer": "", "fact": None, "count": None,
             "objects": [{"label": "galaxy", "bbox": [100, 200, 500, 600]}]}]
    corpus = ["USER: ASSISTANT: Where is the galaxy? bbox_2d label galaxy [ ] { } 0 1 2 3 4 5 6 7 8 9 , :"] * 4
    processor = AutoProcessor.from_pretrained(_example().build_tiny_llava(str(tmp_path / "llava"), corpus))
    collate = ChatCollator(processor, model_family="qwen2.5-vl")
    full, size = decode_image(HUBBLE)
    small, _ = decode_image(HUBBLE, (224, 224))
    sample = {"id": "a", "rows": rows, "image_path": HUBBLE}
    with caplog.at_level(logging.INFO, logger="spatialforge.processing.training.collate"):
        want = collate([dict(sample, image=full)])["input_ids"]
        collate([dict(sample, image=full)])
    hints = [r.getMessage() for r in caplog.records if "decode_size=processor" in r.getMessage()]
    assert collate.decode_size == (32, 32) and len(hints) == 1 and "1000x872" in hints[0]  # said once
    assert torch.equal(collate([dict(sample, image=small, image_size=size)])["input_ids"], want)
    assert not torch.equal(collate([dict(sample, image=small)])["input_ids"], want)  # the size matters here


def test_image_that_goes_bad_mid_stream_is_skipped_and_counted_at_any_decode_size(tmp_path):
    from _loader_fixtures import make_dataset

    fx = make_dataset(str(tmp_path / "fx"))
    stream = TrainingStream(fx.annotations, "counting", fx.image_dirs, seed=0, index_dir=str(tmp_path / "index"),
                            decode_size=(16, 12), on_missing_image="skip")
    jpeg = next(im for im in fx.images if im.path.endswith(".jpg") and im.orientation is None)
    png = next(im for im in fx.images if im.path.endswith(".png"))
    for im in (jpeg, png):  # after the pre-scan: pixel data cut in half, header intact
        with open(im.path, "rb") as f:
            data = f.read()
        with open(im.path, "wb") as f:
            f.write(data[: len(data) // 2])
    ids = [s["rows"][0]["image_id"] for s in stream]
    assert sorted(ids) == sorted(im.image_id for im in fx.images if im not in (jpeg, png))
    assert stream.counts["corrupt"] == 2 and stream.counts["corrupt_rows"] == 2


def test_collator_pixel_values_are_the_processors_own(tmp_path):
    """RGB images skip the processor's RGB conversion (a copy) and give the same pixel_values; images
    with transparency go through it (composited on white)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(_example().build_tiny_llava(str(tmp_path / "llava"), ["USER: ASSISTANT: 2"] * 4))
    rows = [{"id": "mine-a-counting-000", "source": "mine", "image_id": "a", "task": "counting", "width": 1000,
             "height": 872, "question": "How many?", "answer": "2", "objects": [], "fact": None, "count": 2}]
    photo = decode_image(HUBBLE)[0]
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    for image in (photo, rgba):
        got = ChatCollator(processor)([{"id": "a", "rows": rows, "image": image, "image_path": HUBBLE}])["pixel_values"]
        want = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(got, want)
    assert not torch.equal(*(processor.image_processor(images=[x], return_tensors="pt")["pixel_values"]
                             for x in (photo, rgba)))  # the alpha matters, so the conversion ran
