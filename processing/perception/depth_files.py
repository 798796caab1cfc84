"""Depth read from files (sensor or precomputed depth) as a pipeline step.

For users with RGB-D data, or depth computed elsewhere. Files live flat in ``depth_dir`` and are
named after the image: ``<depth_dir>/<image_id>.npy`` or ``<depth_dir>/<image file stem>.npy``
(``.png`` likewise; the image id is tried first so nested folder ids like ``kitchen/0001`` work).

* ``.npy``: a 2-D float array. ``kind="depth"``: meters, larger = farther, values <= 0 or non-finite
  are holes. ``kind="inverse_depth"``: disparity, larger = nearer, non-finite values are holes.
* ``.png``: 16-bit. ``kind="depth"``: millimeters (the Kinect / RealSense / NYU convention), read
  as meters; ``kind="inverse_depth"``: the stored integers are the disparity. 0 is a hole in both.
  8-bit PNGs are refused (``depth_png_not_16bit``): 256 levels cannot order objects reliably.

A map whose size differs from the record's (EXIF-transposed) grid is resized with nearest-neighbour
sampling (holes stay holes, no invented depth between objects; note ``depth_resized``) when the
aspect ratio agrees within 2 %; otherwise the record is dropped (``depth_aspect_mismatch``): a
transposed or cropped map would give wrong depth for every box. A missing file drops the record
(``missing_depth``); an image id that would name a file outside ``depth_dir`` (``../x``, an absolute
path) drops it too (``path_outside_root``, :func:`spatialforge.builders.paths.contained`). Every
drop is counted in ``step.stats.dropped``.

Example:
    >>> step = DepthFromFiles("depth/", kind="depth")   # doctest: +SKIP
    >>> record = step.process(record)                  # doctest: +SKIP
    >>> record.depth.kind, record.depth.metric         # doctest: +SKIP
    ('depth', True)
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ...builders.paths import PATH_OUTSIDE_ROOT, PathOutsideRoot, contained
from ..base import Step
from ..readers import POLICIES, BadInputError, Policy, same_aspect
from ..records import DepthKind, DepthMap, Record

logger = logging.getLogger(__name__)


def resize_nearest(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (pixel centres map to pixel centres)."""
    h, w = values.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return values[rows[:, None], cols[None, :]]


def load_depth_file(path: str | os.PathLike, kind: DepthKind = "depth") -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)`` of a ``.npy`` (float) or 16-bit ``.png`` depth file (see module docstring);
    float32 values, and ``valid`` is False wherever they are not finite."""
    path = Path(path)
    if path.suffix == ".npy":
        values = _load_npy(path)
        if values.ndim == 3 and values.shape[-1] == 1:
            values = values[..., 0]
        if values.ndim != 2:
            raise BadInputError(f"depth file {str(path)!r} must hold a 2-D array, got shape {values.shape}")
        values = values.astype(np.float32, copy=False)  # a float32 file is used as read: no map-sized copy
        return values, _valid_mask(values, kind)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise BadInputError(f"depth PNG {str(path)!r} must be 16-bit, got mode {im.mode!r}")
        raw = np.asarray(im).astype(np.float32)
    valid = raw > 0
    values = raw / 1000.0 if kind == "depth" else raw
    return values.astype(np.float32), valid


def _valid_mask(values: np.ndarray, kind: DepthKind) -> np.ndarray:
    """``isfinite(values)``, and ``values > 0`` for ``kind="depth"``, in one map-sized pass where the
    map's extremes are finite (the common case: NaN and +-inf would show in its max or min)."""
    if values.size and np.isfinite(values.max()):  # no NaN, no +inf
        if kind == "depth":
            return values > 0  # also excludes -inf
        if np.isfinite(values.min()):
            return np.ones(values.shape, dtype=bool)
    valid = np.isfinite(values)
    if kind == "depth":
        valid &= values > 0
    return valid


MAX_DEPTH_ELEMENTS = 1 << 28
"""Largest depth map read (268M values, 1 GiB as float32): a header claiming more is refused before
any allocation (a damaged or hostile header would otherwise end in a MemoryError)."""


def _load_npy(path: Path) -> np.ndarray:
    """A float array from a ``.npy`` file, its header checked before the data is read: refuses a
    ``.npz`` archive named ``.npy``, non-float dtypes (bool, int, complex, strings: no unit to read
    depth in) and shapes above :data:`MAX_DEPTH_ELEMENTS`."""
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic[:4] == b"PK\x03\x04":
            raise BadInputError(f"depth file {str(path)!r} is a .npz archive named .npy: save one array with np.save")
        if magic != b"\x93NUMPY":
            raise BadInputError(f"depth file {str(path)!r} is not a .npy file (it starts with {magic!r})")
        shape, fortran, dtype = _npy_header(f, path)
        if dtype.kind != "f":
            raise BadInputError(
                f"depth file {str(path)!r} holds {dtype} values; depth must be float (meters, or disparity for "
                "--depth-kind inverse_depth); integer millimeters go into a uint16 .png"
            )
        if int(np.prod(shape, dtype=np.float64)) > MAX_DEPTH_ELEMENTS:
            raise BadInputError(f"depth file {str(path)!r} claims a {'x'.join(map(str, shape))} array, above "
                                f"{MAX_DEPTH_ELEMENTS} values")
        count = int(np.prod(shape))
        data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise BadInputError(f"depth file {str(path)!r} is cut short: {data.size} of {count} values")
    return data.reshape(shape, order="F" if fortran else "C")


_HEADERS: dict[bytes, tuple] = {}  # raw .npy header -> its parse (a folder of depth maps shares a few headers)


def _npy_header(f, path: Path) -> tuple:
    """``(shape, fortran, dtype)`` of the ``.npy`` header at the start of ``f``, which is left at the
    data. numpy's parser (``ast.literal_eval`` of the header text) runs once per distinct header."""
    f.seek(0)
    prefix = f.read(8)
    wide = prefix[6:8] != b"\x01\x00"  # versions 2 and 3 store the header length in 4 bytes
    size = f.read(4 if wide else 2)
    raw = prefix + size + f.read(int.from_bytes(size, "little")) if len(size) == (4 if wide else 2) else b""
    parsed = _HEADERS.get(raw) if raw else None
    if parsed is not None:
        return parsed
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        parsed = read(f)
    except (ValueError, SyntaxError) as err:
        raise BadInputError(f"depth file {str(path)!r} has a malformed .npy header ({err})") from err
    if raw and f.tell() == len(raw):
        if len(_HEADERS) >= 64:
            _HEADERS.clear()
        _HEADERS[raw] = parsed
    return parsed


class DepthFromFiles(Step):
    """Attach ``record.depth`` from ``<depth_dir>/<stem>.npy`` or ``.png`` (see module docstring).

    Args:
        depth_dir: folder of depth files.
        kind: ``"depth"`` (larger = farther; meters) or ``"inverse_depth"`` (larger = nearer).
        measured: True: the files hold measurements (an RGB-D sensor, LiDAR, a renderer), trusted
            per object. False: a depth model's predictions saved to files (``DepthMap.estimated``):
            each object may be off by a factor of its own, which the checks on metric maps then
            tolerate (``VerifyConfig.relative_object_bias``). None (default): by format, as such
            files are written: 16-bit PNG millimeters are a sensor's (Kinect, RealSense, NYU),
            float ``.npy`` a model's.
        on_bad_input: unreadable or ill-shaped files: ``"skip"`` (drop the record, counted),
            ``"warn"`` (also log) or ``"error"`` (raise). Missing files are always a counted drop
            under skip/warn.
    """

    name = "depth_files"

    def __init__(self, depth_dir: str | os.PathLike, kind: DepthKind = "depth", on_bad_input: Policy = "skip",
                 measured: bool | None = None) -> None:
        super().__init__()
        if kind not in ("depth", "inverse_depth"):
            raise ValueError(f"kind must be 'depth' or 'inverse_depth', got {kind!r}")
        if on_bad_input not in POLICIES:
            raise ValueError(f"on_bad_input must be one of {POLICIES}, got {on_bad_input!r}")
        self.depth_dir = Path(depth_dir)
        if not self.depth_dir.is_dir():
            raise ValueError(f"depth_dir {str(self.depth_dir)!r} is not a folder")
        self.kind = kind
        self.measured = measured
        self.on_bad_input = on_bad_input
        self.notes: Counter = Counter()
        self.inputs_used: set[str] = set()  # depth files read, and the ones looked up before them (absent)

    def find(self, record: Record) -> Path | None:
        """The depth file of ``record``, or None; raises PathOutsideRoot for an id that would leave ``depth_dir``."""
        stems = [contained(record.image_id, self.depth_dir, kind="depth")]
        if record.image_path:
            stems.append(Path(record.image_path).stem)
        for stem in dict.fromkeys(stems):
            for ext in (".npy", ".png"):
                candidate = self.depth_dir / f"{stem}{ext}"
                self.inputs_used.add(str(candidate))  # absent ones too: a file added later changes the answer
                if candidate.is_file():
                    return candidate
        return None

    def _drop(self, reason: str, message: str) -> None:
        if self.on_bad_input == "error":
            raise BadInputError(f"{message} [{reason}]")
        self.count(reason)
        if self.on_bad_input == "warn":
            logger.warning("%s [%s]", message, reason)

    def process(self, record: Record) -> Record | None:
        try:
            path = self.find(record)
        except PathOutsideRoot as err:
            self._drop(PATH_OUTSIDE_ROOT, f"{record.key}: {err}")
            return None
        if path is None:
            self._drop("missing_depth", f"{record.key}: no {record.image_id}.npy/.png in {str(self.depth_dir)!r}")
            return None
        try:
            values, valid = load_depth_file(path, self.kind)
        except BadInputError as err:
            reason = "depth_png_not_16bit" if "16-bit" in str(err) else "depth_malformed"
            self._drop(reason, f"{record.key}: {err}")
            return None
        except (OSError, ValueError) as err:  # truncated / corrupt files
            self._drop("depth_unreadable", f"{record.key}: cannot read {str(path)!r}: {err}")
            return None
        h, w = values.shape
        if (h, w) != (record.height, record.width):
            if not same_aspect(w, h, record.width, record.height):
                self._drop(
                    "depth_aspect_mismatch",
                    f"{record.key}: depth {w}x{h} has another aspect ratio than the image {record.width}x{record.height}",
                )
                return None
            values = resize_nearest(values, record.height, record.width)
            valid = resize_nearest(valid, record.height, record.width)
            self.notes["depth_resized"] += 1
        estimated = not self.measured if self.measured is not None else path.suffix != ".png"
        metric = self.kind == "depth"
        record.depth = DepthMap(
            values=values,
            kind=self.kind,
            valid=valid,
            # what the rows' verification.depth_source says: meters a model predicted are marked
            source=f"file:{self.kind}:estimated" if metric and estimated else f"file:{self.kind}",
            metric=metric,
            estimated=estimated,
            valid_is_finite=True,  # load_depth_file's mask (resized with the values: still so)
        )
        return record
