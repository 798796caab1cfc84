"""Readers: turn a source's annotations and images into :class:`~spatialforge.processing.records.Record` objects.

One module per source, plus the shared parts::

    base.py         Reader (the one class every source subclasses), policies, shard slices
    images.py       image headers and the EXIF transform (the pixel grid boxes land on)
    table.py        the per-image annotation table cache (parse once, read any shard) and TableReader
    json_stream.py  streaming JSON for multi-GB COCO files
    coco.py         Objects365 / COCO JSON          openimages.py  OpenImages CSVs
    pixmo.py        Pixmo rows (points)             folder.py      any folder of images
    hf.py           a local Hugging Face dataset      fiftyone.py    a FiftyOne dataset (lazy import)

Every reader lists its items first (image ids, sorted, deterministic) and then reads any subset of
them, so executors can split the work into stable shards whatever the number of workers::

    reader = CocoReader("objects365_val.json", images="images/", source="objects365")
    ids = reader.items()                         # sorted image ids
    for record in reader.read_shard(3, 16):      # the 4th of 16 contiguous slices of ``ids``
        ...

See :mod:`.base` for the pixel-grid reconciliation and the bad-input policy.
"""

from .base import POLICIES, SOURCES, BadInputError, Policy, Reader, SizePolicy, shard_slice
from .coco import CocoReader
from .folder import FolderReader
from .hf import HFDatasetReader
from .images import ASPECT_TOLERANCE, IMAGE_EXTENSIONS, ImageHeader, ImageIndex, read_header, same_aspect
from .openimages import OpenImagesReader, read_class_descriptions
from .pixmo import PixmoReader
from .table import AnnotationTable, TableReader

__all__ = [
    "ASPECT_TOLERANCE", "IMAGE_EXTENSIONS", "POLICIES", "SOURCES", "AnnotationTable", "BadInputError",
    "CocoReader", "FolderReader", "HFDatasetReader", "ImageHeader", "ImageIndex", "OpenImagesReader",
    "PixmoReader", "Policy", "Reader", "SizePolicy", "TableReader", "read_class_descriptions",
    "read_header", "same_aspect", "shard_slice",
]
