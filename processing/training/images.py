"""Decode an image at the scale a processor reads it: JPEG DCT scaling, or an integer reduce.

A CLIP-style processor resizes every image to a fixed grid (LLaVA-1.5: shortest edge 336, then a
336 crop). A 1024 x 768 photo decoded in full is 0.8 megapixels that the processor's resize then
throws away; decoding and resizing them is most of a training sample's preparation. ``decode_image(path, min_size)`` decodes at the smallest scale that still has at
least ``min_size`` pixels on each side, so the processor's own resize still downscales (never
upscales) an image it would have downscaled:

* JPEG: ``PIL.Image.draft`` (libjpeg's DCT-domain scaling, 1/2, 1/4 or 1/8): the file is decoded
  at that scale, which is where the time goes (``Image.thumbnail`` does the same, keeping twice
  its target).
* other formats: decoded in full, then ``Image.reduce`` by the largest integer factor that keeps
  ``min_size`` (a box filter), as ``Image.resize(reducing_gap=...)`` does; the processor's resize
  then reads the smaller image.

Where no scale keeps ``min_size`` the image is decoded as before, pixel for pixel.
``processor_decode_size(processor)`` gives ``min_size`` for image processors whose output grid
does not depend on the input size (a fixed ``height``/``width``, or a shortest edge followed by a
center crop no larger than it); for any other processor (Qwen-VL's pixel budgets, LLaVA-NeXT's
tiles, InternVL's dynamic tiles, ...) it is ``None``: decode in full.

Example:
    >>> processor_decode_size(CLIPImageProcessor(size={"shortest_edge": 224},
    ...                       crop_size={"height": 224, "width": 224}))         # doctest: +SKIP
    (224, 224)
    >>> image, size = decode_image("photo_1024x768.jpg", (224, 224))           # doctest: +SKIP
    >>> image.size, size                                                        # doctest: +SKIP
    ((512, 384), (1024, 768))
"""

from __future__ import annotations

import logging
from typing import Any

from ..readers.images import EXIF_ORIENTATION, SWAPS_AXES

logger = logging.getLogger(__name__)

# Image processors whose preprocessing is resize (to a fixed grid, or shortest edge + center crop),
# rescale, normalize, each on the image alone. Their slow (PIL) and fast (torchvision) classes share
# the name up to a "Pil" / "Fast" suffix.
FIXED_GRID_PROCESSORS = frozenset({
    "CLIPImageProcessor", "SiglipImageProcessor", "ViTImageProcessor", "BlipImageProcessor",
    "ChineseCLIPImageProcessor", "BitImageProcessor", "ConvNextImageProcessor",
})


def _size_get(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processor_decode_size(processor: Any) -> tuple[int, int] | None:
    """``(width, height)`` an image needs at least for ``processor`` to give the same grid, or ``None``.

    ``processor``: a ``transformers`` processor (its ``image_processor`` is used) or an image
    processor. ``None`` where the output grid depends on the input size, or the class is not one
    whose preprocessing is known to be resize + crop + rescale + normalize.
    """
    image_processor = getattr(processor, "image_processor", processor)
    name = type(image_processor).__name__
    for suffix in ("Pil", "Fast"):
        name = name.removesuffix(suffix)
    if name not in FIXED_GRID_PROCESSORS or not getattr(image_processor, "do_resize", False):
        return None
    size = getattr(image_processor, "size", None)
    if size is None or any(_size_get(size, k) for k in ("longest_edge", "max_height", "max_width", "max_pixels")):
        return None
    height, width, short = (_size_get(size, k) for k in ("height", "width", "shortest_edge"))
    if height and width and not short:
        return width, height  # resized to exactly this grid (aspect ratio not kept)
    if short and not (height or width):
        # The resized size keeps the aspect ratio (rounded); a crop no larger than the short edge
        # makes the output grid the crop's whatever the rounding.
        crop = getattr(image_processor, "crop_size", None)
        if not getattr(image_processor, "do_center_crop", False) or crop is None:
            return None
        ch, cw = _size_get(crop, "height"), _size_get(crop, "width")
        if ch and cw and ch <= short and cw <= short:
            return short, short
    return None


def resolve_decode_size(decode_size: Any) -> tuple[int, int] | None:
    """``decode_size`` as ``(width, height)``: an int (each side), a pair, a processor, or ``None``."""
    if decode_size is None:
        return None
    if isinstance(decode_size, (bool, float, str)):
        raise ValueError(f"decode_size must be an int, a (width, height) pair, a processor or None, got {decode_size!r}")
    if isinstance(decode_size, int):
        decode_size = (decode_size, decode_size)
    if isinstance(decode_size, (tuple, list)):
        if len(decode_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in decode_size):
            raise ValueError(f"decode_size must be positive (width, height) ints, got {decode_size!r}")
        return int(decode_size[0]), int(decode_size[1])
    size = processor_decode_size(decode_size)
    if size is None:
        logger.info("images are decoded in full: the output grid of %s depends on the input size",
                    type(getattr(decode_size, "image_processor", decode_size)).__name__)
    return size


def decode_image(path: str, min_size: tuple[int, int] | None = None):
    """Open ``path`` as an RGB, EXIF-transposed ``PIL.Image``, at ``min_size`` scale where possible.

    Returns ``(image, size)``: ``size`` is the ``(width, height)`` of the full image on the
    EXIF-transposed grid (what the rows' boxes refer to), whatever scale ``image`` was decoded at.
    Errors are PIL's (``FileNotFoundError``, ``UnidentifiedImageError``, ``OSError`` ...).
    """
    from PIL import Image, ImageOps

    image = Image.open(path)
    width, height = image.size
    swap = image.getexif().get(EXIF_ORIENTATION) in SWAPS_AXES
    full = (height, width) if swap else (width, height)
    if min_size is not None and image.format == "JPEG":
        need = (min_size[1], min_size[0]) if swap else min_size  # draft works on the stored grid
        image.draft(None, need)  # the largest of 1/8, 1/4, 1/2 that keeps >= need on each side (or none)
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy of the (usual) upright image
    if image.mode != "RGB":
        image = image.convert("RGB")
    if min_size is not None:
        factor = min(image.width // min_size[0], image.height // min_size[1])
        if factor >= 2:  # a format without DCT scaling (or a JPEG larger than 8x the need)
            image = image.reduce(factor)
    return image, full


__all__ = ["FIXED_GRID_PROCESSORS", "decode_image", "processor_decode_size", "resolve_decode_size"]
