"""Record every file a process opens (or lists) under watched folders, with ``sys.addaudithook``.

Audit hooks cannot be removed, so one hook per process reads a module-level watch list; paths it
sees are appended to a log file through a descriptor opened once (``os.write`` is not audited, so the
hook never sees itself). Worker processes install it through :func:`build_audited`, the test
process through :func:`watch`.
"""

from __future__ import annotations

import os
import sys

_EVENTS = ("open", "os.listdir", "os.scandir", "os.stat", "os.open")
_state: dict = {"watch": (), "fd": None}


def _hook(event: str, args: tuple) -> None:
    if not _state["watch"] or event not in _EVENTS or not args:
        return
    target = args[0]
    if not isinstance(target, (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(target))
    if any(path == w or path.startswith(w + os.sep) for w in _state["watch"]):
        os.write(_state["fd"], f"{event}\t{path}\n".encode())


def watch(folders: list[str], log: str) -> None:
    """Log opens under ``folders`` to ``log`` from now on in this process (replaces an earlier watch)."""
    if _state["fd"] is None:
        sys.addaudithook(_hook)
    else:
        os.close(_state["fd"])
    _state["fd"] = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _state["watch"] = tuple(os.path.abspath(f) for f in folders)


def stop() -> None:
    _state["watch"] = ()


def seen(log: str) -> list[str]:
    """Lines ``event<TAB>path`` logged so far by every process."""
    with open(log, encoding="utf-8") as f:
        return f.read().splitlines()


def build_audited(cfg, folders: list[str], log: str):
    """``build_steps(cfg)`` in a worker, with the hook watching ``folders`` (picklable via partial)."""
    from spatialforge.processing.pipeline import build_steps

    watch(folders, log)
    return build_steps(cfg)
