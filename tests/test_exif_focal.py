"""The focal length from a photo's EXIF, in pixels of the image the boxes are on."""

import math

import pytest
from PIL import Image

from spatialforge.processing.readers import read_header


def _photo(path, size=(400, 300), **tags):
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    for tag, value in tags.items():
        ifd[{"f35": 0xA405, "f_mm": 0x920A, "xres": 0xA20E, "unit": 0xA210, "pixel_x": 0xA002}[tag]] = value
    Image.new("RGB", size).save(path, exif=exif)
    return path


def test_35mm_equivalent_focal_length_uses_the_diagonal(tmp_path):
    header = read_header(_photo(tmp_path / "a.jpg", f35=26))
    # 26 mm on a 36x24 mm frame (diagonal 43.27 mm) over a 500-pixel diagonal
    assert header.focal_px == pytest.approx(26 / math.hypot(36, 24) * 500)
    assert header.focal_source == "exif:FocalLengthIn35mmFilm"


def test_focal_length_with_the_sensor_resolution(tmp_path):
    # 4 mm lens, 250 pixels per mm on the sensor of a 4000-pixel-wide original, stored at 400 pixels
    header = read_header(_photo(tmp_path / "b.jpg", f_mm=4.0, xres=250.0, unit=4, pixel_x=4000))
    assert header.focal_px == pytest.approx(4.0 * 250.0 * 400 / 4000)
    assert header.focal_source == "exif:FocalLength+FocalPlaneXResolution"


def test_no_focal_length_without_the_tags(tmp_path):
    assert read_header(_photo(tmp_path / "c.jpg")).focal_px is None
    assert read_header(_photo(tmp_path / "d.jpg", f_mm=4.0)).focal_px is None  # no sensor size: unknown
