"""Image headers and the EXIF transform: the pixel grid every box lands on."""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ASPECT_TOLERANCE = 0.02  # relative aspect-ratio difference still treated as "the same image, resized"
EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation
SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees (width and height swap)

# Image headers and the EXIF transform


@dataclass(frozen=True)
class ImageHeader:
    """Size of an image file without decoding it: raw (stored) and EXIF-transposed; the focal
    length in pixels where EXIF gives it (:func:`focal_from_exif`)."""

    raw_width: int
    raw_height: int
    orientation: int = 1
    focal_px: float | None = None
    focal_source: str | None = None

    @property
    def swaps_axes(self) -> bool:
        return self.orientation in SWAPS_AXES

    @property
    def width(self) -> int:
        return self.raw_height if self.swaps_axes else self.raw_width

    @property
    def height(self) -> int:
        return self.raw_width if self.swaps_axes else self.raw_height


class TooManyPixels(ValueError):
    """An image above ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb): never decoded."""


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Open ``path`` lazily (header and EXIF only) and return its sizes and EXIF orientation.

    Raises :class:`TooManyPixels` above ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL itself only warns up
    to twice that and raises its own error above). A plain JPEG, its EXIF plain too
    (:func:`_plain_jpeg_header`), is read from its headers without PIL, with the same answer."""
    from PIL import Image

    header = _plain_jpeg_header(path)
    if header is not None:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is None or header.raw_width * header.raw_height <= limit:
            return header
    return _read_header_pil(path)


_JPEG_HEAD = 4096  # bytes read for the frame header: a plain JPEG has it within a few hundred
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE))
_JPEG_SKIP = frozenset((0xC4, 0xCC, 0xDB, 0xDD, 0xFE))  # DHT, DAC, DQT, DRI, COM: PIL stores or skips them


def _plain_jpeg_header(path: str | os.PathLike) -> ImageHeader | None:
    """:func:`read_header`'s answer for a plain JPEG (:func:`_jpeg_segments`) whose EXIF, if any, is
    plain too (:func:`_exif_header_fields`); None where PIL's reading could differ in any way."""
    found = _jpeg_segments(path)
    if found is None:
        return None
    (width, height), exif = found
    if exif is None:
        return ImageHeader(width, height)
    fields = _exif_header_fields(exif, width, height)
    if fields is None:
        return None
    orientation, focal = fields
    if orientation not in range(1, 9):
        orientation = 1
    if focal is None:
        return ImageHeader(width, height, orientation)
    return ImageHeader(width, height, orientation, focal[0], focal[1])


def _jpeg_segments(path: str | os.PathLike) -> tuple[tuple[int, int], bytes | None] | None:
    """``((width, height), EXIF payload or None)`` of a plain JPEG from its frame (SOF) header, or
    None where PIL's reading could differ in any way: then :func:`_read_header_pil` decides (and
    raises what PIL raises).

    Plain: SOI, then only length-prefixed JFIF (APP0), one EXIF (APP1), DHT, DAC, DQT, DRI, COM and
    SOF segments up to the start of scan, back to back, within the first :data:`_JPEG_HEAD` bytes,
    every one whole and as PIL's JPEG parser accepts it (8-bit samples, 1, 3 or 4 components, whole
    quantisation tables); the size is the last frame header's, as PIL's. Any other segment (XMP,
    ICC, MPF, Adobe: orientation or another reading), padding, junk or a non-positive size: None."""
    try:
        with open(path, "rb") as f:
            data = f.read(_JPEG_HEAD)
    except OSError:
        return None
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, end, size, exif = 2, len(data), None, None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = pos + 4
        pos = body + length - 2
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:  # start of scan: PIL's header parsing ends here
            return ((size, exif) if size is not None and size[0] > 0 and size[1] > 0 else None)
        if marker in _JPEG_SOF:
            n = length - 2
            if n < 6 or (n - 6) % 3 or data[body] != 8 or data[body + 5] not in (1, 3, 4):
                return None
            size = ((data[body + 3] << 8) | data[body + 4], (data[body + 1] << 8) | data[body + 2])
        elif marker == 0xDB:
            k = body
            while k < pos:
                k += 1 + 64 * (1 if data[k] < 16 else 2)
                if k > pos:
                    return None
        elif marker == 0xE0:
            if data[body:body + 4] == b"JFIF" and length - 2 < 7:
                return None
        elif marker == 0xE1:
            if exif is not None or data[body:body + 6] != b"Exif\0\0" or pos - body < 6:
                return None
            exif = data[body + 6:pos]
        elif marker not in _JPEG_SKIP:
            return None
    return None


_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}  # bytes per value of a TIFF type
_EXIF_SCALAR_TYPES = {  # the tags read (PIL also reads the resolution), and the TIFF types (one value each) taken
    EXIF_ORIENTATION: (3,), 0x8769: (4,), 0xA405: (3,), 0x920A: (5, 11, 12), 0xA20E: (5, 11, 12), 0xA210: (3,),
    0xA002: (3, 4),
    0x011A: (5,), 0x0128: (3,),
}


_TIFF_FORMAT = {3: "H", 4: "L", 11: "f", 12: "d"}  # struct formats of the one-number types


def _tiff_ifd(tiff: bytes, offset: int, order: str) -> dict[int, tuple[int, bytes]] | None:
    """``{tag: (type, value bytes)}`` of the TIFF directory at ``offset``, or None unless every
    entry is whole, of a basic type, with a value, inside ``tiff`` and its tag given once (none at
    all is fine: PIL saves an empty EXIF so)."""
    import struct

    if offset < 8 or offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    stop = offset + 2 + 12 * count
    if stop + 4 > len(tiff):  # the entries and the next directory's offset (no entries: an empty EXIF)
        return None
    out: dict[int, tuple[int, bytes]] = {}
    for at in range(offset + 2, stop, 12):
        tag, typ, n, value = struct.unpack_from(order + "HHL4s", tiff, at)
        unit = _TIFF_UNIT.get(typ)
        if unit is None or not n or tag in out:
            return None
        if tag in _EXIF_SCALAR_TYPES and (n != 1 or typ not in _EXIF_SCALAR_TYPES[tag]):
            return None
        size = unit * n
        if size > 4:
            (start,) = struct.unpack_from(order + "L", value)
            if start + size > len(tiff):
                return None
            value = tiff[start:start + size]
        out[tag] = (typ, value[:size])
    return out


def _tiff_scalar(entry: tuple[int, bytes], order: str) -> float | int | None:
    """A SHORT, LONG, RATIONAL, FLOAT or DOUBLE value as PIL reads it (None: a zero denominator, left to PIL)."""
    import struct

    typ, value = entry
    if typ in _TIFF_FORMAT:
        return struct.unpack_from(order + _TIFF_FORMAT[typ], value)[0]
    num, den = struct.unpack_from(order + "LL", value)
    return num / den if den else None


def _exif_header_fields(exif: bytes, width: int, height: int) -> tuple[int, tuple[float, str] | None] | None:
    """``(orientation, focal)`` of a JPEG's EXIF payload as :func:`_read_header_pil` reads them
    (:func:`focal_from_exif`), or None unless it is a plain little- or big-endian TIFF directory
    (:func:`_tiff_ifd`) whose orientation, EXIF pointer and focal tags hold one value of their type."""
    if exif[:2] == b"MM" and exif[2:4] == b"\0*":
        order = ">"
    elif exif[:2] == b"II" and exif[2:4] == b"*\0":
        order = "<"
    else:
        return None
    ifd0 = _tiff_ifd(exif, int.from_bytes(exif[4:8], "big" if order == ">" else "little"), order)
    if ifd0 is None:
        return None
    orientation = _tiff_scalar(ifd0[EXIF_ORIENTATION], order) if EXIF_ORIENTATION in ifd0 else 1
    if _EXIF_IFD not in ifd0:
        return orientation, None
    sub = _tiff_ifd(exif, _tiff_scalar(ifd0[_EXIF_IFD], order), order)
    if sub is None:
        return None
    tags = {}
    for tag in (_FOCAL_LENGTH, _FOCAL_35MM, _FOCAL_PLANE_XRES, _FOCAL_PLANE_UNIT, _PIXEL_X):
        if tag in sub:
            tags[tag] = _tiff_scalar(sub[tag], order)
            if tags[tag] is None:
                return None
    return orientation, focal_from_exif(tags, width, height)


def _read_header_pil(path: str | os.PathLike) -> ImageHeader:
    """:func:`read_header` by PIL (any format, EXIF included)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                exif = im.getexif()
                orientation = exif.get(EXIF_ORIENTATION, 1)
                focal = focal_from_exif(exif.get_ifd(_EXIF_IFD), width, height) if _EXIF_IFD in exif else None
    except Image.DecompressionBombError as err:
        raise TooManyPixels(f"{os.fspath(path)!r}: {err}") from err
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise TooManyPixels(f"{os.fspath(path)!r} has {width}x{height} = {width * height} pixels, above the "
                            f"decompression-bomb limit {limit} (PIL.Image.MAX_IMAGE_PIXELS)")
    if orientation not in range(1, 9):
        orientation = 1  # out-of-spec values are ignored by exif_transpose too
    if focal is None:
        return ImageHeader(width, height, int(orientation))
    return ImageHeader(width, height, int(orientation), focal[0], focal[1])


_EXIF_IFD = 0x8769
_FOCAL_LENGTH, _FOCAL_35MM, _FOCAL_PLANE_XRES, _FOCAL_PLANE_UNIT, _PIXEL_X = 0x920A, 0xA405, 0xA20E, 0xA210, 0xA002
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit: inch, cm, mm, micrometer
_FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


def focal_from_exif(ifd, raw_width: int, raw_height: int) -> tuple[float, str] | None:
    """``(focal length in pixels, source)`` from a photo's EXIF sub-IFD, or None.

    ``FocalLengthIn35mmFilm`` is the focal length that gives the same *diagonal* view on a 36x24 mm
    frame, so ``f_px = f35 / 43.27 * image diagonal in pixels`` (whatever the aspect ratio or
    orientation). Else ``FocalLength`` (mm) times the sensor's pixels per mm
    (``FocalPlaneXResolution`` / ``FocalPlaneResolutionUnit``, rescaled when the file is smaller than
    ``PixelXDimension``). Pixels are square, so the value holds for the EXIF-transposed grid too.
    """
    def number(tag: int) -> float | None:
        try:
            value = float(ifd.get(tag)) if ifd.get(tag) is not None else None
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return value if value is not None and math.isfinite(value) and value > 0 else None

    f35 = number(_FOCAL_35MM)
    if f35 is not None:
        return f35 / _FULL_FRAME_DIAGONAL_MM * math.hypot(raw_width, raw_height), "exif:FocalLengthIn35mmFilm"
    f_mm, xres = number(_FOCAL_LENGTH), number(_FOCAL_PLANE_XRES)
    unit = _UNIT_MM.get(int(ifd.get(_FOCAL_PLANE_UNIT, 2) or 2))
    if f_mm is None or xres is None or unit is None:
        return None
    full_width = number(_PIXEL_X) or raw_width
    return f_mm * xres / unit * raw_width / full_width, "exif:FocalLength+FocalPlaneXResolution"


def exif_transform_points(xy: np.ndarray, orientation: int, raw_width: float, raw_height: float) -> np.ndarray:
    """Map points ``(..., 2)`` from the raw grid to the grid ``ImageOps.exif_transpose`` gives.

    Works on continuous coordinates (pixel edges), so box corners map exactly.
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    w, h = raw_width, raw_height
    mapping = {
        1: (x, y),
        2: (w - x, y),  # FLIP_LEFT_RIGHT
        3: (w - x, h - y),  # ROTATE_180
        4: (x, h - y),  # FLIP_TOP_BOTTOM
        5: (y, x),  # TRANSPOSE
        6: (h - y, x),  # ROTATE_270 (90 degrees clockwise)
        7: (h - y, w - x),  # TRANSVERSE
        8: (y, w - x),  # ROTATE_90 (90 degrees counter-clockwise)
    }
    if orientation not in mapping:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
    nx, ny = mapping[orientation]
    return np.stack([nx, ny], axis=-1)


def transform_boxes(xyxy: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a point transform to ``(N, 4)`` boxes, returning axis-aligned ``x1<=x2, y1<=y2`` boxes."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    a = fn(xyxy[:, 0:2])
    b = fn(xyxy[:, 2:4])
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


def same_aspect(w1: float, h1: float, w2: float, h2: float) -> bool:
    """Whether ``w1 x h1`` and ``w2 x h2`` have one aspect ratio, within :data:`ASPECT_TOLERANCE` of the second."""
    r1, r2 = w1 / h1, w2 / h2
    return abs(r1 - r2) <= ASPECT_TOLERANCE * r2


_IGNORED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _is_file(path: str) -> bool:
    """``Path(path).is_file()`` on a string: the same answer, and the same errors raised."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as err:
        if err.errno not in _IGNORED_ERRNOS and getattr(err, "winerror", None) not in (21, 123, 1921):
            raise
        return False
    except ValueError:
        return False


class ImageIndex:
    """Find image files under a root: by relative path (any suffix of it), else by file stem.

    The stem index (one ``os.walk``, sorted) is built only when a direct lookup fails, so datasets
    laid out as their annotations say cost nothing extra.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self._by_stem: dict[str, str] | None = None

    def _stems(self) -> dict[str, str]:
        if self._by_stem is None:
            index: dict[str, str] = {}
            if self.root is not None and self.root.is_dir():
                for dirpath, dirnames, filenames in os.walk(self.root):
                    dirnames.sort()
                    for name in sorted(filenames):
                        if name.startswith("."):
                            continue
                        p = Path(name)
                        suffix = p.suffix.lower()
                        # Pixmo images are often named by their sha256 with no extension.
                        stem = p.stem if suffix in IMAGE_EXTENSIONS else name
                        index.setdefault(stem, os.path.join(dirpath, name))
            self._by_stem = index
            logger.debug("indexed %d image files under %s", len(index), self.root)
        return self._by_stem

    def find(self, relpath: str | None = None, stem: str | None = None) -> str | None:
        if self.root is None:
            return None
        if relpath:
            parts = Path(relpath).parts
            # "images/v2/patch16/x.jpg" is found under root "images/v2", "images", or the patch dir.
            # The candidates as strings: the same paths pathlib would build (parts are normalized, and a
            # root of "." is left to pathlib, which drops it), without a Path object per candidate.
            root = str(self.root)
            for i in range(len(parts)):
                candidate = os.path.join(root, *parts[i:]) if root != "." else str(self.root.joinpath(*parts[i:]))
                if _is_file(candidate):
                    return candidate
        if stem:
            for ext in ("", ".jpg", ".jpeg", ".png"):
                candidate = self.root / f"{stem}{ext}"
                if candidate.is_file():
                    return str(candidate)
            return self._stems().get(stem)
        return None
