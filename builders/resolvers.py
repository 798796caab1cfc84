"""Find the image file of a row: one resolver per image source, backed by a persistent index.

A row names its image by ``(source, image_id)``. Each source keeps its files in its own layout::

    objects365/                          OpenImages (any of)               pixmo/
      train/patch16/objects365_v2_00908726.jpg   train/000a1249af2bc5f0.jpg       3f2a...e9      (sha256, no ext)
      val/patch3/objects365_v1_00012345.jpg      open-images-v7/validation/       3f2b...01.png
                                                   data/000a1249af2bc5f0.jpg
                                                 000a1249af2bc5f0.jpg  (flat)

Every resolver maps a file to its keys, and ``image_id`` is a key: the file stem when the suffix is
an image extension (``IMAGE_EXTS``, any case: ``img.v3.jpg`` -> ``img.v3``); Pixmo and user sources
also take the full file name, so files without an image extension count too (``bare.v3`` ->
``bare.v3``; ``img.v3.jpg`` -> also ``img.v3.jpg``). An id with a folder (``sub/img.v3``) matches
the same keys under that folder. Looking a key up never walks the directory: the first use
of a root scans it once (``os.scandir``) into a SQLite index under
``$SPATIALFORGE_CACHE/index/`` (default ``~/.cache/spatialforge/index/``), named by a hash of the
root's real path and the resolver kind.

**When the index is rebuilt.** The index stores the mtime of the root and of every directory below
it. Adding, removing or renaming a file changes its parent directory's mtime, so the index is
rebuilt when any stored directory has a different mtime or is gone. Rewriting a file in place keeps
the directory mtime: the index still points to the right path, and the stored image checks (below)
see the change.

**Stored image checks.** The cheap check of an image (header + trailer, :func:`inspect_image`) is
remembered in the same index file, keyed by relative path, size, mtime (ns) and the pixel limit.
A later scan of the root costs one ``stat()`` per image; only files whose size or mtime changed
(rewritten, replaced, truncated) are opened again. A rebuilt index keeps the checks of the files
it still holds. Outcomes of I/O errors (permission denied, EIO) are never stored.

**Duplicates.** Two files with the same key under one root (e.g. ``a.jpg`` and ``a.png``, or a bare
``a.v1`` and ``a.v1.png``): the lexicographically smallest relative path wins, always; the number of
such keys is logged.

**Symlinks.** Clusters often keep a source's splits on other disks
(``objects365/train -> /mnt/disk2/o365/train``), so a symlinked directory under the root is
followed: its files are indexed under the path through the link (``train/patch0/x.jpg``) and served
as ``<root>/train/patch0/x.jpg``. Every real directory is walked once (a set of real paths guards
against cycles): a link whose target was already walked (a second link to the same disk, a link to
a folder inside the root) or holds the link's own folder or the root (``loop -> ..``) is skipped
and counted. Links are followed after the root's own tree, smallest relative path first, so the
path that indexes a folder reachable twice does not depend on the file system's listing order. The
trees an image may live in are the root's real path plus the real paths of the followed directory
links; nothing else is trusted:

* an ``image_id`` that is absolute or contains ``..`` raises ``ValueError`` (checked lexically,
  before any lookup);
* a FILE that is a symlink resolving outside those trees (``evil.jpg -> /etc/passwd``) is indexed
  but refused on use with ``ValueError``, also when it sits inside a followed directory.

Example:
    >>> r = get_resolver("objects365", "/data/objects365")          # doctest: +SKIP
    >>> r.resolve_many(["objects365_v2_00908726"])                  # doctest: +SKIP
    {'objects365_v2_00908726': '/data/objects365/train/patch16/objects365_v2_00908726.jpg'}
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .paths import contained

logger = logging.getLogger(__name__)

IMAGE_EXTS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".jpe"}
)
# 2: directory symlinks are followed; image checks are stored. 3: several keys per file (stem and
# full name), suffixes other than image extensions are part of the key.
INDEX_VERSION = 3
# Ids that would read outside the image trees are a security boundary, not missing images: no
# on_missing_image policy turns them into dropped rows.
REFUSED = "refused under every on_missing_image policy (a security boundary, not a missing image)"
_SQL_CHUNK = 900  # bound parameters per query (old SQLite builds allow 999)
_CHECK_CHUNK = 64  # images per task of the check thread pool
_CHECK_BLOCK = 32_768  # images whose stored checks are read (and new ones written) at once
# Seconds a process waits for another one writing the same index (SQLite busy timeout, build lock).
_LOCK_TIMEOUT = 600
# Stored outcomes of inspect_image: valid while the file keeps its size and mtime and the pixel
# limits are the same (``limits``, see _limits_key).
_CHECKS_TABLE = (
    "CREATE TABLE checks (relpath TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, limits TEXT, "
    "status TEXT, width INTEGER, height INTEGER, detail TEXT)"
)


def cache_root() -> str:
    """Folder of the persistent indexes: ``$SPATIALFORGE_CACHE/index`` or ``~/.cache/spatialforge/index``."""
    base = os.environ.get("SPATIALFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spatialforge")
    return os.path.join(base, "index")


def check_image_id(image_id: str, root: str) -> None:
    """Raise ``ValueError`` if ``image_id`` could name a file outside ``root`` (absolute, ``..``, NUL)."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id must be a non-empty string, got {image_id!r} (root {root!r})")
    contained(image_id, root, note=REFUSED)  # the rule the generator applies too


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


class ImageIndex:
    """SQLite map ``key -> relative path`` of one root for one resolver kind (see module docstring).

    Picklable: the connection opens lazily in each process (DataLoader workers, ``num_proc`` jobs).
    """

    def __init__(self, root: str, kind: str, path: str):
        self.root = root
        self.kind = kind
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"root": self.root, "kind": self.kind, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._conn, self._pid = None, -1

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # Several ranks / workers write checks into one index: wait for the write lock instead
            # of failing with "database is locked".
            self._conn = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT, check_same_thread=False)
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def lookup_many(self, keys: Iterable[str], column: str = "key") -> dict[str, tuple[str, bool]]:
        """``key -> (relpath, is_outside_root)`` for the keys present in the index."""
        keys = list(keys)
        found: dict[str, tuple[str, bool]] = {}
        if column not in ("key", "relkey"):
            raise ValueError(f"column must be 'key' or 'relkey', got {column!r}")
        conn = self.conn
        for i in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[i : i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {column}, relpath, outside FROM files WHERE {column} IN ({marks})"
            if column == "relkey":  # relkeys are unique only up to duplicates; take the winner
                sql += " ORDER BY relpath DESC"
            for key, rel, outside in conn.execute(sql, chunk):
                found[key] = (rel, bool(outside))
        return found

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def stored_checks(self, relpaths: Iterable[str]) -> dict[str, tuple]:
        """``relpath -> (size, mtime_ns, limits, status, width, height, detail)`` of the stored checks."""
        relpaths = list(relpaths)
        found: dict[str, tuple] = {}
        conn = self.conn
        for i in range(0, len(relpaths), _SQL_CHUNK):
            chunk = relpaths[i : i + _SQL_CHUNK]
            sql = f"SELECT * FROM checks WHERE relpath IN ({','.join('?' * len(chunk))})"
            try:
                found.update((row[0], row[1:]) for row in conn.execute(sql, chunk))
            except sqlite3.OperationalError as err:  # an index written before checks were stored
                if "no such table" not in str(err):
                    raise
                return {}
        return found

    def store_checks(self, rows: list[tuple]) -> None:
        """Remember check outcomes ``(relpath, size, mtime_ns, limits, status, width, height, detail)``.

        The store is a cache: if the index file cannot be written (read-only cache folder, another
        process holding the write lock past the timeout) the outcomes are only logged as not kept.
        """
        if not rows:
            return
        for attempt in range(2):
            conn = self.conn
            try:
                with conn:  # one transaction
                    conn.execute(_CHECKS_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
                    conn.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                return
            except sqlite3.OperationalError as err:
                # SQLITE_READONLY_DBMOVED: another process rebuilt the index (a new file renamed over
                # the one this connection has open); write into the new file instead.
                if attempt == 0 and "readonly" in str(err) and os.access(os.path.dirname(self.path) or ".", os.W_OK):
                    self.close()
                    continue
                logger.warning("could not store %d image checks in %s (%s); they will be redone next time", len(rows), self.path, err)
                return

    def meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None


@dataclass
class IndexStats:
    """What one index build saw."""

    files: int = 0
    duplicates: int = 0  # keys seen more than once (the smallest relative path was kept)
    symlinked_dirs: int = 0  # directory symlinks followed
    skipped_links: int = 0  # directory symlinks not followed: target already walked (cycle, second link)
    outside_links: int = 0  # file symlinks pointing outside the root (refused on use)
    checks_kept: int = 0  # stored image checks carried over from the previous index
    seconds: float = 0.0


class Resolver:
    """Map ``image_id`` -> absolute file path for one source under one root.

    Subclasses specialize through class attributes: which extensions count, whether files without
    an extension count, which directory names hold no images.
    """

    kind = "generic"
    # The shape of this source's image ids (full match of a file's key), for telling a file's source
    # from its name alone (chat-format annotations name image files, not sources); None: any name.
    id_pattern: str | None = None
    extensions: frozenset[str] = IMAGE_EXTS
    allow_no_extension = True  # ``{image_id}.*`` or a bare ``{image_id}``
    skip_dirs: frozenset[str] = frozenset({".git", "__pycache__", ".cache"})

    def __init__(self, root: str, source: str | None = None, cache_dir: str | None = None):
        if not os.path.isdir(root):
            raise ValueError(f"image root for source {source or self.kind!r} is not a directory: {root!r}")
        self.source = source or self.kind
        self.root = os.path.abspath(root)
        self.root_real = os.path.realpath(root)
        digest = hashlib.sha256(f"{INDEX_VERSION}\0{self.kind}\0{self.root_real}".encode()).hexdigest()[:20]
        self.index_path = os.path.join(cache_dir or cache_root(), f"{self.kind}-{digest}.sqlite")
        self._index: ImageIndex | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, root={self.root!r})"

    # -- keys --------------------------------------------------------------------------------
    def keys_for(self, name: str) -> tuple[str, ...]:
        """Index keys of a file name; empty if the file is not an image of this source.

        Only a known image extension is an extension: ``img.v3.jpg`` -> ``("img.v3", "img.v3.jpg")``
        and ``bare.v3`` -> ``("bare.v3",)`` when files without an extension are allowed
        (``splitext`` alone would read ``.v3`` as an extension and lose the bare file).
        """
        stem, ext = os.path.splitext(name)
        keys = (stem,) if ext.lower() in self.extensions else ()
        if self.allow_no_extension and not name.startswith("."):  # hidden files (.DS_Store) are no images
            keys += (name,)
        return keys

    def key_for(self, name: str) -> str | None:
        """The preferred key of a file name (its first of :meth:`keys_for`), or ``None``."""
        keys = self.keys_for(name)
        return keys[0] if keys else None

    @classmethod
    def id_from_name(cls, name: str) -> str | None:
        """The image id a file named ``name`` has in this source's layout (``id_pattern``), or None."""
        if cls.id_pattern is None:
            return None
        stem, ext = os.path.splitext(name)
        key = stem if ext.lower() in cls.extensions else (name if cls.allow_no_extension else None)
        return key if key is not None and re.fullmatch(cls.id_pattern, key) else None

    # -- index -------------------------------------------------------------------------------
    def is_fresh(self) -> bool:
        """True if an index exists and no directory under the root changed since it was built."""
        if not os.path.exists(self.index_path):
            return False
        try:
            conn = sqlite3.connect(self.index_path)
            try:
                version = conn.execute("SELECT value FROM meta WHERE name='version'").fetchone()
                if not version or int(version[0]) != INDEX_VERSION:
                    return False
                for rel, mtime in conn.execute("SELECT reldir, mtime_ns FROM dirs"):
                    try:
                        if os.stat(os.path.join(self.root_real, rel)).st_mtime_ns != mtime:
                            return False
                    except FileNotFoundError:
                        return False
            finally:
                conn.close()
        except sqlite3.DatabaseError as err:
            logger.warning("index %s is unreadable (%s); rebuilding it", self.index_path, err)
            return False
        return True

    def build_index(self, progress: bool = False) -> IndexStats:
        """Scan the root once (``os.scandir``) and write the index atomically."""
        import time

        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        stats = IndexStats()
        # key -> (relpath, realpath if a file symlink, files whose id proper the key is)
        best: dict[str, tuple[str, str | None, int]] = {}
        dirs: list[tuple[str, int]] = []
        # Real paths of the walked directories (the cycle guard) and of the trees images may live in.
        visited: set[str] = {self.root_real}
        trees = [self.root_real]
        stack = [("", self.root_real)]  # (relative path, real path) of directories to walk
        links: list[tuple[str, str, str]] = []  # directory symlinks (rel, target, real parent), followed last
        bar = tqdm(desc=f"Indexing {self.source} images", unit=" files", disable=not progress)
        while stack or links:
            if not stack:
                # Links in order of relative path, each once: a target already walked is skipped.
                links.sort(reverse=True)
                rel, real, parent = links.pop()
                # A target already walked, or one holding the link's own folder or the root
                # (``loop -> ..``), would walk a tree twice or loop: skip it.
                if real in visited or _inside(parent, real) or _inside(self.root_real, real):
                    stats.skipped_links += 1
                    continue
                visited.add(real)
                trees.append(real)
                stats.symlinked_dirs += 1
                stack.append((rel, real))
            rel, real = stack.pop()
            full = os.path.join(self.root_real, rel) if rel else self.root_real
            dirs.append((rel, os.stat(full).st_mtime_ns))
            with os.scandir(full) as it:
                for entry in it:
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    link_target = None
                    if entry.is_symlink():
                        if entry.is_dir():  # follows the link: a directory symlink that is not dangling
                            links.append((child, os.path.realpath(entry.path), real))
                            continue
                        link_target = os.path.realpath(entry.path)
                    elif entry.is_dir():
                        child_real = f"{real}/{entry.name}" if real != "/" else f"/{entry.name}"
                        if entry.name not in self.skip_dirs and child_real not in visited:
                            visited.add(child_real)
                            stack.append((child, child_real))
                        continue
                    keys = self.keys_for(entry.name)
                    if not keys:
                        continue
                    stats.files += 1
                    bar.update(1)
                    for k, key in enumerate(keys):
                        # Duplicates are counted on each file's id proper (its first key: the stem of
                        # x.jpg, not "x.jpg" too), so train/x.jpg and val/x.jpg are one duplicate
                        # whatever the listing order.
                        prev = best.get(key)
                        claims = (prev[2] if prev else 0) + (k == 0)
                        if prev is None or child < prev[0]:
                            best[key] = (child, link_target, claims)
                        else:
                            best[key] = (*prev[:2], claims)
        bar.close()
        # Decided after the walk: a file link may point into a linked tree that is followed later.
        stats.duplicates = sum(max(0, claims - 1) for _, _, claims in best.values())
        kept = {k: (rel, target is not None and not any(_inside(target, t) for t in trees)) for k, (rel, target, _) in best.items()}
        stats.outside_links = len({rel for rel, out in kept.values() if out})  # files, not keys
        os.makedirs(os.path.dirname(self.index_path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.index_path), suffix=".tmp")
        os.close(fd)
        try:
            conn = sqlite3.connect(tmp)
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
            conn.execute("CREATE TABLE dirs (reldir TEXT, mtime_ns INTEGER)")
            conn.execute("CREATE TABLE files (key TEXT PRIMARY KEY, relkey TEXT, relpath TEXT, outside INTEGER)")
            conn.execute(_CHECKS_TABLE)
            conn.executemany("INSERT INTO dirs VALUES (?, ?)", dirs)
            conn.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?)",
                ((k, _relkey(rel, k), rel, int(out)) for k, (rel, out) in kept.items()),
            )
            conn.execute("CREATE INDEX files_relkey ON files (relkey)")
            stats.checks_kept = self._carry_checks(conn)
            meta = {
                "version": INDEX_VERSION,
                "kind": self.kind,
                "root": self.root_real,
                "files": stats.files,
                "duplicates": stats.duplicates,
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            conn.commit()
            conn.close()
            os.replace(tmp, self.index_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        stats.seconds = time.perf_counter() - t0
        if stats.duplicates:
            logger.warning(
                "%d image ids of source %r occur more than once under %s; kept the smallest relative path of each",
                stats.duplicates,
                self.source,
                self.root,
            )
        logger.info("indexed %d %s images under %s in %.1fs", len(kept), self.source, self.root, stats.seconds)
        return stats

    def _carry_checks(self, conn: sqlite3.Connection) -> int:
        """Copy the stored checks of files still indexed from the current index file into ``conn``
        (adding one file to a folder must not cost a re-check of the whole root)."""
        if not os.path.exists(self.index_path):
            return 0
        try:
            conn.execute("ATTACH DATABASE ? AS old", (self.index_path,))
        except sqlite3.DatabaseError as err:
            logger.warning("could not read the previous index %s (%s); image checks start afresh", self.index_path, err)
            return 0
        try:
            conn.execute("INSERT INTO checks SELECT * FROM old.checks WHERE relpath IN (SELECT relpath FROM files)")
            return conn.execute("SELECT COUNT(*) FROM checks").fetchone()[0]
        except sqlite3.DatabaseError as err:  # no checks table, or an unreadable file: nothing to keep
            logger.debug("no image checks carried over from %s: %s", self.index_path, err)
            return 0
        finally:
            conn.commit()
            conn.execute("DETACH DATABASE old")

    @property
    def index(self) -> ImageIndex:
        """The up-to-date index (built on first use, rebuilt when the root changed)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    if not self.is_fresh():
                        # Ranks started at once must not all rebuild and rename over each other (a
                        # connection to a renamed-over file fails with "attempt to write a readonly
                        # database"): one builds under an inter-process lock, the others wait and
                        # then find the index fresh.
                        from filelock import FileLock

                        os.makedirs(os.path.dirname(self.index_path), exist_ok=True)
                        with FileLock(self.index_path + ".lock", timeout=_LOCK_TIMEOUT):
                            if not self.is_fresh():
                                self.build_index()
                    self._index = ImageIndex(self.root_real, self.kind, self.index_path)
        return self._index

    def fingerprint(self) -> str:
        """Hash of the root's real path and its directories' mtimes (changes when files come or go)."""
        h = hashlib.sha256(self.root_real.encode())
        for rel, mtime in self.index.conn.execute("SELECT reldir, mtime_ns FROM dirs ORDER BY reldir"):
            h.update(f"\0{rel}\0{mtime}".encode())
        return h.hexdigest()[:16]

    # -- lookups -----------------------------------------------------------------------------
    def resolve_many(self, image_ids: Iterable[str]) -> dict[str, str]:
        """``image_id -> absolute path`` for the ids found; absent ids are left out.

        Raises ``ValueError`` for ids that would escape the root or land on a symlink out of it.
        """
        plain, nested = [], []
        for image_id in image_ids:
            check_image_id(image_id, self.root)
            (nested if "/" in image_id or "\\" in image_id else plain).append(image_id)
        found = self.index.lookup_many(plain)
        if nested:
            found.update(self.index.lookup_many([i.replace("\\", "/") for i in nested], column="relkey"))
            for image_id in nested:  # map back to the id as written
                alt = image_id.replace("\\", "/")
                if alt != image_id and alt in found:
                    found[image_id] = found.pop(alt)
        out = {}
        for image_id, (rel, outside) in found.items():
            if outside:
                raise ValueError(
                    f"image_id {image_id!r} resolves to {rel!r}, a symlink pointing outside the image root "
                    f"{self.root!r}; {REFUSED}"
                )
            out[image_id] = os.path.join(self.root_real, rel)
        return out

    def resolve(self, image_id: str) -> str | None:
        return self.resolve_many([image_id]).get(image_id)

    # -- checks ------------------------------------------------------------------------------
    def check_many(
        self,
        paths: Mapping[str, str],
        max_pixels: int | None = None,
        threads: int = 8,
        progress: bool = False,
        decode: bool = True,
    ) -> Iterator[tuple[str, ImageStatus]]:
        """``(image_id, status)`` of :func:`inspect_image` for ``paths`` (``image_id -> path`` from
        :meth:`resolve_many`), in the order of ``paths``.

        Files whose size and mtime match a stored check are only ``stat()``-ed; the others are
        inspected (in ``threads`` threads: the work is I/O bound) and their outcomes stored.
        """
        from tqdm.auto import tqdm

        limits = _limits_key(max_pixels, decode)
        prefix = len(self.root_real.rstrip(os.sep)) + 1

        def check_chunk(chunk: list[str], stored: dict[str, tuple]) -> list[tuple[ImageStatus, tuple | None]]:
            out = []
            for image_id in chunk:
                path = paths[image_id]
                rel = path[prefix:]
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    out.append((ImageStatus(MISSING), None))
                    continue
                prev = stored.get(rel)
                if prev is not None and prev[:3] == (st.st_size, st.st_mtime_ns, limits):
                    out.append((ImageStatus(*prev[3:]), None))
                    continue
                status = inspect_image(path, max_pixels, decode)
                row = (rel, st.st_size, st.st_mtime_ns, limits, status.status, status.width, status.height, status.detail)
                out.append((status, row if status.storable else None))
            return out

        # Blocks bound the memory of stored checks read at once (millions of images per root);
        # chunks of ids per thread task, because ThreadPoolExecutor.map ignores chunksize and one
        # future per image costs more than the stat() of an unchanged file.
        ids = list(paths)
        new: list[tuple] = []
        try:
            with ThreadPoolExecutor(max(1, threads)) as pool, tqdm(
                total=len(ids), desc=f"Checking {self.source} images", disable=not progress
            ) as bar:
                for b in range(0, len(ids), _CHECK_BLOCK):
                    block = ids[b : b + _CHECK_BLOCK]
                    stored = self.index.stored_checks(paths[i][prefix:] for i in block)
                    chunks = [block[i : i + _CHECK_CHUNK] for i in range(0, len(block), _CHECK_CHUNK)]
                    for chunk, results in zip(chunks, pool.map(lambda c, s=stored: check_chunk(c, s), chunks)):
                        for image_id, (status, row) in zip(chunk, results):
                            if row is not None:
                                new.append(row)
                            yield image_id, status
                        bar.update(len(chunk))
                    if len(new) >= _CHECK_BLOCK:  # keep progress if a long first scan is interrupted
                        self.index.store_checks(new)
                        new = []
        finally:
            self.index.store_checks(new)


def _relkey(relpath: str, key: str) -> str:
    """Key with its folder (``sub/img.v3`` for key ``img.v3`` of ``sub/img.v3.jpg``): what ids with a
    ``/`` are matched against."""
    folder = relpath.rpartition("/")[0]
    return f"{folder}/{key}" if folder else key


class Objects365Resolver(Resolver):
    """Objects365 v1/v2: ``{train,val}/patch*/objects365_v2_00908726.jpg``; image_id = file stem."""

    kind = "objects365"
    id_pattern = r"objects365_v\d+_\d+"
    allow_no_extension = False


class OpenImagesResolver(Resolver):
    """OpenImages: ``<split>/<ImageID>.jpg``, FiftyOne ``open-images-v7/<split>/data/<ImageID>.jpg`` or flat."""

    kind = "openimages"
    id_pattern = r"[0-9a-f]{16}"  # ImageID
    allow_no_extension = False
    skip_dirs = Resolver.skip_dirs | {"labels", "metadata"}  # FiftyOne zoo side folders (CSV/JSON)


class PixmoResolver(Resolver):
    """Pixmo: files named by the image's sha256, with any image extension or none."""

    kind = "pixmo"
    id_pattern = r"[0-9a-f]{64}"  # sha256 of the image bytes
    allow_no_extension = True


RESOLVERS: dict[str, type[Resolver]] = {
    "objects365": Objects365Resolver,
    "openimages": OpenImagesResolver,
    "pixmo": PixmoResolver,
}
"""Resolver class per known source; any other source name uses :class:`Resolver` (``{image_id}.*``)."""


def source_of_file(name: str) -> tuple[str, str] | None:
    """``(source, image_id)`` of a file name in a known source's layout, e.g.
    ``objects365_v2_00908726.jpg`` -> ``("objects365", "objects365_v2_00908726")``; None if no layout fits.

    >>> source_of_file("000a1249af2bc5f0.jpg")
    ('openimages', '000a1249af2bc5f0')
    """
    for source, cls in RESOLVERS.items():
        image_id = cls.id_from_name(name)
        if image_id is not None:
            return source, image_id
    return None


def get_resolver(source: str, root: str, cache_dir: str | None = None) -> Resolver:
    """The resolver of ``source`` for images under ``root`` (generic rule for unknown sources)."""
    return RESOLVERS.get(source, Resolver)(root, source=source, cache_dir=cache_dir)


# -- per-image checks ------------------------------------------------------------------------------
OK, MISSING, ZERO_BYTE, NOT_IMAGE, TRUNCATED, CORRUPT, TOO_MANY_PIXELS = (
    "ok",
    "missing",
    "zero_byte",
    "not_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
)
UNREADABLE: tuple[str, ...] = (ZERO_BYTE, NOT_IMAGE, TRUNCATED, CORRUPT, TOO_MANY_PIXELS)


@dataclass(frozen=True)
class ImageStatus:
    """Outcome of the cheap check of one image file (header + trailer, no decode)."""

    status: str  # ok | missing | zero_byte | not_image | truncated | corrupt | too_many_pixels
    width: int | None = None  # EXIF-transposed size from the header (what datasets.Image decodes to)
    height: int | None = None
    detail: str = ""
    # False for outcomes of I/O errors (permission denied, EIO): they say nothing about the file's
    # content, so they are never stored (a chmod does not change the mtime).
    storable: bool = field(default=True, compare=False, repr=False)


def _limits_key(max_pixels: int | None, decode: bool = True) -> str:
    """What a check outcome depends on: the pixel limits, ours and PIL's own (it raises above twice
    its), and whether the pixels were decoded."""
    from PIL import Image

    return f"{Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels}/{Image.MAX_IMAGE_PIXELS}" + ("/decode" if decode else "")


def inspect_image(path: str | None, max_pixels: int | None = None, decode: bool = True) -> ImageStatus:
    """Validity check: file size, ``PIL.Image.open`` header, EXIF orientation, trailer bytes, and
    (``decode=True``, or when the trailer looks wrong) a full decode of the pixels.

    The trailer alone cannot tell a file cut short from one with bytes after its end marker (common
    from phones: the image decodes), nor see corrupt scan data (``corrupt``: the decoder fails in
    the middle). ``max_pixels`` defaults to PIL's ``Image.MAX_IMAGE_PIXELS``; larger images are
    refused as decompression bombs without being decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return ImageStatus(MISSING)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return ImageStatus(MISSING)
    if size == 0:
        return ImageStatus(ZERO_BYTE, detail="file is empty")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
                orientation = im.getexif().get(0x0112, 1) if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "MPO") else 1
    except Image.DecompressionBombError as err:
        return ImageStatus(TOO_MANY_PIXELS, detail=str(err))
    except (UnidentifiedImageError, SyntaxError, struct.error, ValueError, OSError) as err:
        # PIL's format errors carry no errno; an errno means the system failed to read the file.
        io_error = isinstance(err, OSError) and err.errno is not None
        return ImageStatus(NOT_IMAGE, detail=f"{type(err).__name__}: {err}", storable=not io_error)
    if limit is not None and w * h > limit:
        return ImageStatus(TOO_MANY_PIXELS, w, h, detail=f"{w}x{h}={w * h} pixels > limit {limit}")
    if orientation in (5, 6, 7, 8):  # transposed orientations swap the axes
        w, h = h, w
    trailer = _trailer_problem(path, fmt, size)
    if trailer or decode:
        problem = _decode_problem(path)
        if problem:
            return ImageStatus(TRUNCATED if trailer else CORRUPT, w, h, detail=f"{trailer}; {problem}" if trailer else problem)
    return ImageStatus(OK, w, h)


def _decode_problem(path: str) -> str:
    """Empty string if every pixel of ``path`` decodes; else the decoder's complaint."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
    except (SyntaxError, struct.error, ValueError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def _trailer_problem(path: str, fmt: str | None, size: int) -> str:
    """Empty string if the file ends the way its format says it must; else what is wrong."""
    if fmt not in ("JPEG", "MPO", "PNG", "WEBP"):
        return ""
    with open(path, "rb") as f:
        if fmt == "WEBP":
            f.seek(4)
            declared = struct.unpack("<I", f.read(4))[0] + 8
            return "" if size >= declared else f"RIFF declares {declared} bytes, file has {size}"
        f.seek(max(0, size - 256))
        tail = f.read()
    if fmt == "PNG":
        return "" if b"IEND" in tail[-64:] else "PNG has no IEND chunk at its end"
    # JPEG: the last marker must be EOI (FFD9); some writers pad with zeros after it.
    return "" if b"\xff\xd9" in tail.rstrip(b"\x00\r\n ")[-32:] else "JPEG does not end with EOI (FFD9)"
