"""Training-side adapters: chat formats derived from the stored rows (:mod:`.formats`), and the
files each training framework reads (:mod:`.export`)."""

from .formats import MODEL_FAMILIES, FormatError, ModelFamily, Sample, row_text, smart_resize, to_messages

__all__ = ["MODEL_FAMILIES", "FormatError", "ModelFamily", "Sample", "row_text", "smart_resize", "to_messages"]
