"""Training-side adapters: chat formats derived from the stored rows (:mod:`.formats`), the files
each training framework reads (:mod:`.export`), and chat-shaped files read back into rows
(:mod:`.parse`)."""

from .export import EXPORT_FORMATS, ExportReport, MissingImagesError, export_dataset
from .formats import MODEL_FAMILIES, FormatError, ModelFamily, Sample, row_text, smart_resize, to_messages
from .parse import ChatReader

__all__ = [
    "EXPORT_FORMATS",
    "MODEL_FAMILIES",
    "ChatReader",
    "ExportReport",
    "FormatError",
    "MissingImagesError",
    "ModelFamily",
    "Sample",
    "export_dataset",
    "row_text",
    "smart_resize",
    "to_messages",
]
