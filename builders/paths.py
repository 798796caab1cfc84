"""The one containment rule for paths built from input data.

Annotation values name files: a COCO ``file_name``, an OpenImages ``ImageID``, a Pixmo
``image_sha256``, a loaded row's ``image_id``, the image id a depth file is looked up by. Each is
joined to a folder the user gave (``--images``, ``--depth-dir``, the loader's image roots), so a
value such as ``../../outside/x`` or ``/etc/passwd`` would read a file outside every folder the user
named. Both the generator (``processing``) and the loader (``builders``) refuse such values with
:func:`contained`, checked lexically before any file system call, with the same words everywhere::

    image_id '../outside/x' would escape the image root '/data/images'

The generator counts it as a dropped image under ``on_bad_input`` (reason
:data:`PATH_OUTSIDE_ROOT`, or an error under ``"error"``); the loader refuses it under every policy.

Example:
    >>> contained("patch0/x.jpg", "/data/images", what="file_name")
    'patch0/x.jpg'
    >>> contained("../x", "/data/images")
    Traceback (most recent call last):
    ...
    spatialforge.builders.paths.PathOutsideRoot: image_id '../x' would escape the image root '/data/images'
"""

from __future__ import annotations

import os

PATH_OUTSIDE_ROOT = "path_outside_root"
"""Drop reason (and ``BadInputError`` tag) of a value refused by :func:`contained`."""


class PathOutsideRoot(ValueError):
    """A value from the input data would name a file outside the folder it is looked up in."""

    reason = PATH_OUTSIDE_ROOT


def escapes(name: str) -> bool:
    """True if ``name``, joined to any folder, could leave it: absolute, a drive, ``..``, or NUL."""
    parts = name.replace("\\", "/").split("/")
    return (
        "\x00" in name
        or os.path.isabs(name)
        or name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")  # a Windows drive, e.g. C:foo
        or ".." in parts
    )


def contained(name: str, root: str | os.PathLike | None, what: str = "image_id", kind: str = "image", note: str = "") -> str:
    """Return ``name`` if it stays inside ``root`` when joined to it; raise :class:`PathOutsideRoot`.

    ``what`` names the field the value came from (``file_name``, ``ImageID``, ...), ``kind`` the
    folder (``image``, ``depth``); ``note`` is appended after ``"; "`` (e.g. the policy that applies).
    """
    if escapes(name):
        root = os.fspath(root) if root is not None else None
        raise PathOutsideRoot(f"{what} {name!r} would escape the {kind} root {root!r}" + (f"; {note}" if note else ""))
    return name
