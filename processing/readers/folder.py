"""Any folder of images, without annotations."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .base import BadInputError, Reader, _Raw
from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

# Image folder


class FolderReader(Reader):
    """Every image file under ``images`` (no boxes); ``image_id`` is the relative path without suffix.

    Example:
        >>> reader = FolderReader("my_photos/", source="my_photos")  # doctest: +SKIP
        >>> reader.items()[:2]                                        # doctest: +SKIP
        ['kitchen/0001', 'kitchen/0002']
    """

    default_source = "folder"

    def _load(self) -> dict[str, _Raw]:
        root = self.images.root
        if root is None or not root.is_dir():
            raise BadInputError(f"images folder {str(root)!r} does not exist")
        out: dict[str, _Raw] = {}
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(os.path.relpath(os.path.join(dirpath, name), root))
        for rel in sorted(Path(f).as_posix() for f in files):
            image_id = rel.rsplit(".", 1)[0]
            if image_id in out:
                self._bad(
                    "duplicate_image_id",
                    f"{rel!r} has the same id {image_id!r} as {out[image_id].relpath!r}; keeping the first",
                    self._load_drops,
                )
                continue
            out[image_id] = _Raw(image_id=image_id, path=str(root / rel), relpath=rel)
        return out
