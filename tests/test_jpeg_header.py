"""Image headers of plain JPEGs read from the frame header give exactly PIL's answer, odd files included."""

import io

import pytest
from PIL import Image, ImageCms

from spatialforge.processing.readers import read_header
from spatialforge.processing.readers.images import _jpeg_segments, _plain_jpeg_header, _read_header_pil

pytestmark = pytest.mark.filterwarnings("ignore:.*:UserWarning")  # PIL warns on the damaged files, then answers


def _jpeg(mode="RGB", size=(64, 48), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else None).save(buf, "JPEG", **save)
    return buf.getvalue()


def _jpeg_size(path):
    """The frame header's size of a JPEG without EXIF, else None."""
    found = _jpeg_segments(path)
    return found[0] if found is not None and found[1] is None else None


def _outcome(path):
    """PIL's answer for ``path``, or the type and text of what it raised."""
    try:
        return _read_header_pil(path)
    except Exception as err:  # noqa: BLE001 -- the comparison is the point
        return type(err), str(err)


def _same_as_pil(path):
    try:
        got = read_header(path)
    except Exception as err:  # noqa: BLE001
        got = type(err), str(err)
    assert got == _outcome(path), path


def _exif(orientation=None, f35=None, **sub) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if f35 is not None:
        exif.get_ifd(0x8769)[0xA405] = f35
    for tag, value in sub.items():
        exif.get_ifd(0x8769)[{"f_mm": 0x920A, "xres": 0xA20E, "unit": 0xA210, "pixel_x": 0xA002}[tag]] = value
    return exif


def _camera_exif() -> Image.Exif:
    """EXIF as a camera writes it: strings, resolutions, a date, the focal length from the sensor."""
    exif = _exif(orientation=3, f_mm=4.25, xres=1000.0, unit=3, pixel_x=4032)
    exif[0x010F], exif[0x0110], exif[0x011A], exif[0x011B], exif[0x0128] = "Maker", "Model 7", 72.0, 72.0, 2
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"
    return exif


ODD = {
    "baseline": _jpeg(),
    "gray": _jpeg("L", (33, 17)),
    "cmyk": _jpeg("CMYK", (20, 30)),  # Adobe APP14: PIL decides
    "progressive": _jpeg(progressive=True, size=(301, 7)),
    "optimized": _jpeg(optimize=True, quality=30, size=(1, 1)),
    "subsampled": _jpeg(subsampling=0, size=(640, 480)),
    "comment": _jpeg(comment=b"a comment", size=(70, 90)),
    "restart": _jpeg(restart_marker_blocks=1, size=(40, 40)),
    "exif_rotated": _jpeg(exif=_exif(orientation=6), size=(80, 20)),
    "exif_focal": _jpeg(exif=_exif(f35=28), size=(400, 300)),
    "exif_camera": _jpeg(exif=_camera_exif(), size=(403, 302)),
    "exif_empty": _jpeg(exif=Image.Exif(), size=(64, 32)),
    "exif_little_endian": _jpeg(size=(40, 30))[:20] + b"\xff\xe1\x00\x28Exif\0\0II*\0\x08\0\0\0\x02\0"
                          + b"\x12\x01\x03\0\x01\0\0\0\x06\0\0\0" + b"\x69\x87\x04\0\x01\0\0\0\x26\0\0\0"
                          + b"\0\0\0\0" + _jpeg(size=(40, 30))[20:],  # IFD0: orientation 6, EXIF pointer out of range
    "icc": _jpeg(icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
    "xmp_rotated": _jpeg(xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>', size=(50, 10)),
    "no_jfif": _jpeg(size=(12, 34))[:2] + _jpeg(size=(12, 34))[20:],  # APP0 segment (18 bytes) cut out
}


def test_plain_jpegs_take_the_frame_header_and_match_pil(tmp_path):
    for name in ("baseline", "gray", "progressive", "optimized", "subsampled", "comment", "restart", "no_jfif"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(ODD[name])
        with Image.open(path) as im:
            assert _jpeg_size(path) == im.size, name  # the fast path answered
        _same_as_pil(path)
    assert read_header(tmp_path / "subsampled.jpg").raw_width == 640


def test_plain_exif_is_read_without_pil_and_matches_it(tmp_path):
    for name in ("exif_rotated", "exif_focal", "exif_camera", "exif_empty"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(ODD[name])
        assert _plain_jpeg_header(path) is not None and _jpeg_size(path) is None, name
        _same_as_pil(path)
    assert read_header(tmp_path / "exif_rotated.jpg").width == 20  # orientation 6 swaps the axes
    assert read_header(tmp_path / "exif_focal.jpg").focal_px == pytest.approx(28 / 43.2666 * 500, rel=1e-4)
    camera = read_header(tmp_path / "exif_camera.jpg")  # 4.25 mm x 100 px/mm x 403 / 4032
    assert camera.orientation == 3 and camera.focal_px == pytest.approx(4.25 * 100 * 403 / 4032)
    path = tmp_path / "le.jpg"
    path.write_bytes(ODD["exif_little_endian"])
    assert _plain_jpeg_header(path) is None  # its EXIF pointer leads nowhere: PIL decides
    assert read_header(path).orientation == 6
    _same_as_pil(path)


def test_xmp_icc_and_adobe_files_are_left_to_pil(tmp_path):
    for name in ("cmyk", "icc", "xmp_rotated"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(ODD[name])
        assert _plain_jpeg_header(path) is None, name
        _same_as_pil(path)
    assert read_header(tmp_path / "xmp_rotated.jpg").orientation == 8


@pytest.mark.parametrize("name", ["exif_camera", "exif_empty"])
def test_altered_exif_bytes_read_as_pil_reads_them(tmp_path, name):
    data = ODD[name]
    start = data.index(b"Exif\0\0")
    end = start - 2 + int.from_bytes(data[start - 2:start], "big")
    answered = 0
    for pos in range(start - 4, end):
        for value in (0x00, 0x01, 0x03, 0x05, 0x49, 0xFF):
            if data[pos] == value:
                continue
            path = tmp_path / f"exif{pos}-{value}.jpg"
            path.write_bytes(data[:pos] + bytes([value]) + data[pos + 1:])
            answered += _plain_jpeg_header(path) is not None
            _same_as_pil(path)
    assert answered > (100 if name == "exif_camera" else 5)  # most changes (values, unused bytes) still take the fast path


def test_truncated_and_damaged_files_raise_what_pil_raises(tmp_path):
    data = ODD["baseline"]
    sos = data.index(b"\xff\xda")
    cuts = sorted(set(range(0, sos + 16)) | {len(data) // 2, len(data) - 2})
    for cut in cuts:
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:cut])
        _same_as_pil(path)
    # Every byte of the header changed to values that break lengths, markers, bit depth, components
    for pos in range(2, sos + 4):
        for value in (0x00, 0x01, 0x0C, 0xC0, 0xDA, 0xFF):
            if data[pos] == value:
                continue
            path = tmp_path / f"byte{pos}-{value}.jpg"
            path.write_bytes(data[:pos] + bytes([value]) + data[pos + 1:])
            _same_as_pil(path)


def test_sizes_at_and_above_the_decompression_bomb_limit(tmp_path, monkeypatch):
    data = ODD["baseline"]  # 64x48 = 3072 pixels
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    for limit in (3072, 3071, 1536, 1535, None):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        _same_as_pil(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3071)
    with pytest.raises(ValueError, match="decompression-bomb limit 3071"):
        read_header(path)


def test_zero_sizes_other_formats_and_missing_files(tmp_path):
    data = bytearray(ODD["baseline"])
    sof = data.index(b"\xff\xc0")
    for at in (sof + 5, sof + 7):  # height, then width, set to 0
        broken = bytearray(data)
        broken[at:at + 2] = b"\x00\x00"
        path = tmp_path / f"zero{at}.jpg"
        path.write_bytes(bytes(broken))
        assert _jpeg_size(path) is None
        _same_as_pil(path)
    png = tmp_path / "a.png"
    Image.new("RGB", (5, 9)).save(png)
    assert _jpeg_size(png) is None and read_header(png).raw_height == 9
    jpeg_named_png = tmp_path / "b.png"
    jpeg_named_png.write_bytes(ODD["gray"])
    _same_as_pil(jpeg_named_png)
    _same_as_pil(tmp_path / "missing.jpg")
    _same_as_pil(tmp_path)  # a folder
