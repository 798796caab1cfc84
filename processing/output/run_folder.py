"""One run per output folder: the lock, the manifest, and what a run may replace or delete.

A dataset folder is written by one run at a time and holds only that run's files::

    out/
      README.md  stats.json                       the card and the merged stats (the run's)
      data/<task>/train-00000-of-00008.parquet    the shards' files (listed in their markers)
      .spatialforge/
        lock                                      held (flock) by the running process: pid, host, start
        run.json                                  what was run; a folder without it holds no run
        markers/shard-00003.json                  a finished shard: its stats and the files it wrote
        inputs/shard-00003.json                   the input files it read: size, mtime, cheap hash
        manifest.json                             every file of the run, written before the card

Rules (:class:`RunFolder`):

* **Lock.** ``fcntl.flock`` on ``.spatialforge/lock`` for the whole run; a second run refuses,
  naming the holder (pid, host, start time). The kernel drops the lock when its process dies, so
  the lock of a killed run is free: the next run takes it over and writes its own holder line (no
  pid guessing, no race between two runs taking over the same stale lock).
* **A folder that holds no run** (no ``run.json``) and is not empty is refused, naming what is
  there, unless ``allow_existing``; even then files the run would write (``README.md``,
  ``stats.json``, anything under ``data/``) are refused, so a user's card or an earlier run's stale
  shards are never replaced or served with the new ones.
* **Overwrite** deletes only the run's files: what the manifest and the markers list, the files of
  unfinished shards (named after the run's shards), and the run state. A file the run did not write
  stays, and is then refused as above if the new run would write it.
* **Before the card**: ``data/`` must hold exactly the files the markers list (a file written by
  something else, or one missing, stops the run naming it), and ``README.md`` / ``stats.json`` are
  replaced only when the manifest lists them (or they do not exist).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...builders import schema

logger = logging.getLogger(__name__)

STATE_DIR = ".spatialforge"
RUN_FILE = "run.json"
LOCK_FILE = "lock"
MANIFEST_FILE = "manifest.json"
RUN_OUTPUTS: tuple[str, ...] = ("README.md", "stats.json")
"""Files the end of a run writes (the card and the merged stats) beside ``data/``."""
_LISTED = 5  # names shown in a refusal before "and N more"
HASH_SPAN = 16 * 1024  # bytes hashed at each end of a file
_RACY_NS = 2_000_000_000  # an mtime this close to the recording is not trusted (coarse file system clocks)


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked: in use, not a run's folder, or holding foreign files."""


def _names(paths: Iterable[str]) -> str:
    paths = sorted(paths)
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(paths[:_LISTED]) + more


# -- input files: identity by content ----------------------------------------------------------


def file_identity(path: str | os.PathLike) -> list | None:
    """``[size, mtime_ns, ctime_ns, hash]`` of a file, or None when it does not exist.

    The hash (sha256, 16 hex digits) covers the size and the first and last :data:`HASH_SPAN`
    bytes: the whole file up to 32 KiB (annotation rows, small depth maps), and for larger files
    the parts an in-place rewrite of an image or array changes (headers, sizes, the first and last
    rows of the data), without reading gigabytes on every resume. The hash only settles what the
    size, mtime and ctime leave open (:func:`input_change`); a shard records every image and depth
    file it read, so reading less of each keeps the recording cheap beside the run (a 640x480
    float32 depth map is 1.2 MB).
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            h = hashlib.sha256(str(st.st_size).encode() + b"\0")
            h.update(f.read(HASH_SPAN))
            if st.st_size > HASH_SPAN:
                f.seek(max(HASH_SPAN, st.st_size - HASH_SPAN))
                h.update(f.read(HASH_SPAN))
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, h.hexdigest()[:16]]


def input_change(path: str, recorded: list | None, recorded_at_ns: int) -> str | None:
    """Why ``path`` differs from its recorded identity, or None if it is the same file.

    Size, mtime and ctime decide when they are trusted: a write changes the ctime even when the
    mtime is set back (``cp -p``, ``rsync -t``, ``os.utime``), and no tool sets a ctime. A changed
    mtime or ctime (a copy, a ``touch``, a ``chmod``) or one within 2 s of the recording (a rewrite in
    the same clock tick of a coarse file system clock) is settled by the hash, so a file that only
    looks changed keeps its shards.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if recorded is None else "removed"
    if recorded is None:
        return "appeared"
    size, mtime_ns, ctime_ns, digest = recorded
    if st.st_size != size:
        return f"size {size} -> {st.st_size}"
    if (st.st_mtime_ns, st.st_ctime_ns) == (mtime_ns, ctime_ns) and max(mtime_ns, ctime_ns) < recorded_at_ns - _RACY_NS:
        return None
    now = file_identity(path)
    if now is None:
        return "removed"
    return None if now[3] == digest else "content changed"


# -- the folder ----------------------------------------------------------------------------------


def atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunFolder:
    """The state of one output folder (see the module docstring); used by the executors.

    Example:
        >>> folder = RunFolder("out/")                                 # doctest: +SKIP
        >>> with folder.locked():                                      # doctest: +SKIP
        ...     folder.check_start(overwrite=False, allow_existing=False)
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.state = self.out_dir / STATE_DIR
        self._fd: int | None = None

    @property
    def holds_run(self) -> bool:
        return (self.state / RUN_FILE).is_file()

    # -- the lock ------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock or raise :class:`OutputFolderError` naming the run that holds it."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputFolderError(f"output folder {str(self.out_dir)!r} is a file, not a folder")
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one run per folder is then the user's to keep
            logger.warning("no file locks on this platform: nothing stops a second run into %s", self.out_dir)
            self._fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on host {info['host']}, started {info['started']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that has not written its name yet"
            raise OutputFolderError(
                f"output folder {str(self.out_dir)!r} is in use by another run ({who}); wait for it to end or use "
                f"another folder (lock: {str(path)!r})"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no stale holder line; the file stays (unlinking it races a waiting run)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunFolder:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- what is there ---------------------------------------------------------------------------
    def _entries(self) -> list[str]:
        """Names in the folder other than the run state."""
        if not self.out_dir.is_dir():
            return []
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.out_dir.iterdir() if p.name != STATE_DIR)

    def data_files(self) -> set[str]:
        """Every file under ``data/``, relative to the folder (posix)."""
        data = self.out_dir / schema.DATA_DIR
        if not data.is_dir():
            return set()
        return {p.relative_to(self.out_dir).as_posix() for p in data.rglob("*") if p.is_file() or p.is_symlink()}

    def _colliding(self) -> list[str]:
        """Files the run would write that are already there."""
        return sorted([n for n in RUN_OUTPUTS if (self.out_dir / n).exists()] + list(self.data_files()))

    def manifest(self) -> set[str]:
        path = self.state / MANIFEST_FILE
        if not path.is_file():
            return set()
        return set(json.loads(path.read_text(encoding="utf-8"))["files"])

    def write_manifest(self, files: Iterable[str]) -> None:
        atomic_json(self.state / MANIFEST_FILE, {"files": sorted(files)})

    # -- starting ------------------------------------------------------------------------------
    def check_start(self, overwrite: bool, allow_existing: bool, run_files: Iterable[str] = ()) -> None:
        """Under the lock: make the folder ready for a run, or refuse (see the module docstring).

        ``run_files``: the files the run in the folder owns beyond the manifest (its markers' lists
        and its unfinished shards' names), deleted by ``overwrite``.
        """
        if self.holds_run and not overwrite:
            return  # a resume: the executor checks that it is the same run
        if self.holds_run:  # overwrite: delete the run's files, nothing else
            owned = self.manifest() | set(run_files)
            for rel in sorted(owned):
                (self.out_dir / rel).unlink(missing_ok=True)
            self._remove_empty_data_dirs()
            logger.info("overwrite: deleted %d files of the previous run in %s", len(owned), self.out_dir)
            self.clear_state()
            colliding = self._colliding()
            if colliding:
                raise OutputFolderError(
                    f"output folder {str(self.out_dir)!r} holds files the previous run did not write (not in its "
                    f"manifest), which this run would replace: {_names(colliding)}; --overwrite deletes only a run's "
                    "own files: move these away or use another folder"
                )
            return
        self.clear_state()  # a state without run.json (removed by hand, or a run that never started): not a run
        entries = self._entries()
        if not entries:
            return
        if not allow_existing:
            hint = " (--overwrite deletes only files a run's manifest lists; there is none)" if overwrite else ""
            raise OutputFolderError(
                f"output folder {str(self.out_dir)!r} is not empty and holds no SpatialForge run (no "
                f"{STATE_DIR}/{RUN_FILE}): {_names(entries)}{hint}; use an empty or new folder, or pass "
                "--allow-existing (allow_existing=True) to write beside those files"
            )
        colliding = self._colliding()
        if colliding:
            raise OutputFolderError(
                f"output folder {str(self.out_dir)!r} holds files this run would write, not written by a run here: "
                f"{_names(colliding)}; move them away or use another folder (--allow-existing never replaces files)"
            )

    def clear_state(self) -> None:
        """Remove the run state, keeping the lock file."""
        if not self.state.is_dir():
            return
        import shutil

        for path in self.state.iterdir():
            if path.name == LOCK_FILE:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _remove_empty_data_dirs(self) -> None:
        data = self.out_dir / schema.DATA_DIR
        if not data.is_dir():
            return
        for sub in sorted((p for p in data.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(sub.iterdir()):
                sub.rmdir()
        if not any(data.iterdir()):
            data.rmdir()

    # -- finishing -----------------------------------------------------------------------------
    def check_finish(self, shard_files: Iterable[str]) -> None:
        """Before the card: ``data/`` holds exactly ``shard_files``, and the card may be written.

        Writes the manifest (``shard_files`` plus :data:`RUN_OUTPUTS`) first, so the card and stats
        are the run's files from the moment they exist.
        """
        want = set(shard_files)
        have = self.data_files()
        want_data = {f for f in want if f.startswith(f"{schema.DATA_DIR}/")}  # drops/ files are the run's too
        extra, missing = have - want_data, want_data - have
        if extra or missing:
            parts = []
            if extra:
                parts.append(f"files no shard of this run wrote: {_names(extra)}")
            if missing:
                parts.append(f"files its shards wrote that are gone: {_names(missing)}")
            raise OutputFolderError(
                f"{str(self.out_dir / schema.DATA_DIR)!r} does not hold exactly this run's files ({'; '.join(parts)}); "
                "the card would describe other data than the folder serves: remove the foreign files (or rerun "
                "with --overwrite to redo the run)"
            )
        listed = self.manifest()
        foreign = [n for n in RUN_OUTPUTS if (self.out_dir / n).exists() and n not in listed]
        if foreign:
            raise OutputFolderError(
                f"output folder {str(self.out_dir)!r} holds {', '.join(foreign)} that this run did not write; "
                "move them away or use another folder (they are never replaced)"
            )
        self.write_manifest(want | set(RUN_OUTPUTS))


def changed_inputs(inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(path, why)`` for every file of a shard's recorded inputs that changed (see :func:`input_change`)."""
    at = int(inputs.get("recorded_at_ns", 0))
    out = []
    for path, recorded in sorted(inputs.get("files", {}).items()):
        why = input_change(path, recorded, at)
        if why is not None:
            out.append((path, why))
    return out


def record_inputs(paths: Iterable[str], started_ns: int) -> dict[str, Any]:
    """The identities of ``paths`` (see :func:`file_identity`), as stored in ``inputs/shard-*.json``."""
    return {"recorded_at_ns": started_ns, "files": {p: file_identity(p) for p in sorted(set(paths))}}
