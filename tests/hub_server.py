"""A Hugging Face Hub on loopback, for tests that drive the real ``huggingface_hub`` and ``datasets`` clients.

Usage: ``from hub_server import hub  # noqa: F401`` in a test module gives a function-scoped ``hub`` fixture
(a running :class:`HubServer` with both clients pointed at it); ``with hub_server(tmp_path) as hub:`` does the same
in any scope. Then ``HfApi(endpoint=hub.endpoint, token=hub.token)``, ``load_dataset(repo_id)``,
``Dataset.push_to_hub(repo_id)`` all talk to ``hub.endpoint`` (http://127.0.0.1:PORT); repos and LFS objects live
under ``hub.root``. Unknown requests get a 404 and are listed in ``hub.unhandled`` (assert it is empty).

Endpoints (read from the installed clients; Xet is off, so uploads go through LFS): ``/api/whoami-v2``,
``/api/agent-harnesses`` (empty),
``/api/repos/create|delete``, ``/api/validate-yaml``, ``/api/{models,datasets,spaces}/{repo}`` and its
``/revision/{rev}``, ``/tree/{rev}/{path}`` (recursive, expand, ``Link`` pagination), ``/paths-info/{rev}``,
``/preupload/{rev}``, ``/commit/{rev}`` (NDJSON), ``/refs``, ``/commits/{rev}``, ``/branch/{name}``; the LFS batch API
``{repo}.git/info/lfs/objects/batch`` with upload and verify URLs on this server; ``{repo}/resolve/{rev}/{path}``
(HEAD, GET, Range, ETag, X-Repo-Commit, X-Linked-Etag/-Size for LFS files). Not spoken: pull requests
(``create_pr=True``), Xet, tags, gated repos. Stdlib only, plus pyyaml (a project dependency) for the card check.

Faults: ``HubServer(..., initial_faults=Faults(seed=0, error_rate=0.2, drop_rate=0.1, slow_rate=0.1))`` (or ``hub.faults =
Faults(...)`` while running) answers some requests with a 5xx or a 429, drops the connection halfway through reading
the request body (or before answering, for requests without one), or answers late. Which request gets which fault is
decided by the seed and the request itself (method, path, how many times it was seen), not by thread timing, and a
request retried ``max_per_request`` times is served normally, so clients that retry always get through.
``hub.injected`` lists the faults served.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

logger = logging.getLogger(__name__)

REPO_TYPES = ("model", "dataset", "space")
# URL prefix of each repo type on the Hub (models have none), as in huggingface_hub.constants.
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The Hub lists 1000 tree entries per page, 50 when expanded (see HfApi._iter_repo_tree_pages).
TREE_PAGE_SIZE = 1000
TREE_PAGE_SIZE_EXPANDED = 50
# Files at least this large go to LFS whatever their name, like on the Hub.
LFS_SIZE_THRESHOLD = 10 * 2**20
# A subset of the .gitattributes the Hub writes into every new repo: these patterns are what make the
# server answer "lfs" to preupload for Parquet/Arrow shards and images.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.gz", "*.h5", "*.lz4", "*.msgpack", "*.npy", "*.npz",
        "*.onnx", "*.parquet", "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar", "*.tflite", "*.zip", "*.zst",
        "*tfevents*", "*.jpg", "*.jpeg", "*.png", "*.webp", "*.mp3", "*.wav", "*.mp4",
    )
)
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a blob (what the Hub calls a file's ``oid`` / ``blobId``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, ``X-Error-Code`` header and a JSON ``error``."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


# --------------------------------------------------------------------------------------------------------------------
# Storage: content-addressed blobs on disk plus one JSON file per repo holding refs and full-snapshot commits.
# --------------------------------------------------------------------------------------------------------------------
class HubStore:
    """Repos under ``root/repos/<type>s/<namespace>/<name>.json``, file contents under ``root/objects/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(exist_ok=True)
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._repos: dict[tuple[str, str], dict[str, Any]] = {}

    # -- blobs ------------------------------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_object(self, sha256: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{64}", sha256)) and self.object_path(sha256).is_file()

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{next(self._counter)}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    # -- repos ------------------------------------------------------------------------------------------------------
    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def _save(self, repo: dict[str, Any]) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{next(self._counter)}")
        tmp.write_text(json.dumps(repo, indent=1))
        os.replace(tmp, path)

    def get_repo(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id!r}", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str, url: str) -> dict[str, Any]:
        with self.lock:
            if (repo_type, repo_id) in self._repos:
                # The Hub's 409 carries the repo url: create_repo(exist_ok=True) reads it.
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", url=url)
            repo = {"type": repo_type, "id": repo_id, "private": private, "createdAt": _now(), "refs": {},
                    "commits": {}}
            self._repos[(repo_type, repo_id)] = repo
            self.commit(repo, "main", [("file", ".gitattributes", DEFAULT_GITATTRIBUTES.encode())],
                        title="initial commit", author=author)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.get_repo(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
            self._repo_file(repo_type, repo_id).unlink(missing_ok=True)

    def resolve_revision(self, repo: dict[str, Any], revision: str) -> str:
        """Branch name or full commit sha -> commit sha."""
        if revision in repo["refs"]:
            return repo["refs"][revision]
        if _COMMIT_SHA.match(revision) and revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files_at(self, repo: dict[str, Any], revision: str) -> tuple[str, dict[str, dict[str, Any]]]:
        sha = self.resolve_revision(repo, revision)
        return sha, repo["commits"][sha]["files"]

    def commit(
        self,
        repo: dict[str, Any],
        branch: str,
        operations: list[tuple[str, str, Any]],
        *,
        title: str,
        description: str = "",
        author: str,
        parent_commit: str | None = None,
    ) -> str:
        """Apply ``(kind, path, payload)`` operations on top of ``branch`` and return the new commit sha.

        kind is ``file`` (payload = bytes), ``lfsFile`` (payload = sha256 of an uploaded object),
        ``deletedFile`` or ``deletedFolder`` (payload unused).
        """
        with self.lock:
            head = repo["refs"].get(branch)
            if head is None and repo["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, f"A commit has happened since. Please refresh and try again. "
                                    f"(parentCommit={parent_commit}, head={head})")
            files = dict(repo["commits"][head]["files"]) if head else {}
            for kind, path, payload in operations:
                if kind == "file":
                    files[path] = {"sha256": self.put_bytes(payload), "size": len(payload), "lfs": False,
                                   "oid": git_blob_sha1(payload)}
                elif kind == "lfsFile":
                    if not self.has_object(payload):
                        raise HubError(422, f"LFS object {payload} of {path!r} was not uploaded before the commit")
                    size = self.object_path(payload).stat().st_size
                    pointer = lfs_pointer(payload, size)
                    files[path] = {"sha256": payload, "size": size, "lfs": True, "oid": git_blob_sha1(pointer),
                                   "pointerSize": len(pointer)}
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path!r}", "EntryNotFound")
                elif kind == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A file with this name doesn't exist: folder {path!r}",
                                       "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unknown commit operation key {kind!r} for path {path!r}")
            seed = json.dumps([repo["id"], head, sorted(files), title, next(self._counter), _now()])
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo["commits"][sha] = {"parents": [head] if head else [], "title": title, "message": description,
                                    "date": _now(), "author": author, "files": files}
            repo["refs"][branch] = sha
            self._save(repo)
            return sha

    def history(self, repo: dict[str, Any], sha: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Commits from ``sha`` back to the first one (linear history)."""
        while sha:
            commit = repo["commits"][sha]
            yield sha, commit
            sha = commit["parents"][0] if commit["parents"] else ""


# --------------------------------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------------------------------
ERROR_STATUSES = (500, 502, 503, 504, 429)


@dataclass
class Faults:
    """Which requests fail, and how; deterministic from ``seed`` and each request's identity.

    For the ``n``-th request (0-based) with a given method and path (query left out), one draw of
    ``random.Random(f"{seed}|{method}|{path}|{n}")`` picks: an error (``error_rate``: a status of
    :data:`ERROR_STATUSES`, 429 with ``Retry-After: 0``), a dropped connection (``drop_rate``: half the request
    body is read, then the socket is closed without an answer), a slow answer (``slow_rate``: ``slow_seconds``
    before handling), or none. Requests seen ``max_per_request`` times or more are never faulted.
    Only paths containing one of ``paths`` are eligible (all when empty).
    """

    seed: int = 0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.2
    max_per_request: int = 2
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.error_rate + self.drop_rate + self.slow_rate > 1:
            raise ValueError(f"fault rates must sum to at most 1, got {self.error_rate, self.drop_rate, self.slow_rate}")
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def pick(self, method: str, path: str) -> tuple[str, int] | None:
        """``("error", status)``, ``("drop", 0)``, ``("slow", 0)`` or None for this request."""
        if self.paths and not any(p in path for p in self.paths):
            return None
        with self._lock:
            n = self._seen.get((method, path), 0)
            self._seen[(method, path)] = n + 1
        if n >= self.max_per_request:
            return None
        rng = random.Random(f"{self.seed}|{method}|{path}|{n}")
        u = rng.random()
        if u < self.error_rate:
            return "error", rng.choice(ERROR_STATUSES)
        if u < self.error_rate + self.drop_rate:
            return "drop", 0
        if u < self.error_rate + self.drop_rate + self.slow_rate:
            return "slow", 0
        return None


# --------------------------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------------------------
def _is_lfs_path(path: str, gitattributes: str) -> bool:
    """Whether ``path`` matches a ``filter=lfs`` line of a .gitattributes (patterns without '/' match the basename)."""
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].startswith("#") or "filter=lfs" not in parts[1:]:
            continue
        pattern = parts[0]
        target = path if "/" in pattern else path.rsplit("/", 1)[-1]
        if fnmatch.fnmatchcase(target, pattern.lstrip("/").replace("**/", "*")):
            return True
    return False


def _front_matter(text: str) -> dict[str, Any] | None:
    """YAML block at the top of a README, as a dict (None if there is none). Raises ValueError if malformed."""
    import yaml  # noqa: PLC0415  (pyyaml is a project dependency; imported here to keep import of this module cheap)

    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise ValueError(f"YAML of the card does not parse: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"YAML of the card must be a mapping, got {type(data).__name__}")
    return data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries a Content-Length
    timeout = 30  # idle keep-alive connections let their thread end instead of blocking forever
    server: _HubHTTPServer

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        logger.debug("hub %s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _iter_body(self) -> Iterator[bytes]:
        """Request body in chunks, from Content-Length or chunked transfer encoding (httpx streams file uploads)."""
        if self._body_read:
            return
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise HubError(400, "Truncated chunked request body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    raise HubError(400, "Truncated request body")
                remaining -= len(chunk)
                yield chunk

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"null")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Request body is not JSON: {err}") from err

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def _send_json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> None:
        self._send(status, json.dumps(data).encode(), headers, content_type)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message, **err.extra}, err.status, headers)

    def _dispatch(self) -> None:
        self._body_read = False
        self._status = 0
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        # Split the raw path first, then unquote each segment: revisions and tree paths arrive quoted with safe=""
        # (e.g. "refs%2Fpr%2F1", "data%2Fnear_far") and must stay one segment.
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        try:
            if self._inject_fault(url.path):
                return
            if not self.server.route(self):
                self.server.note_unhandled(self.command, self.path)
                self._body()
                raise HubError(404, f"hub_server does not implement {self.command} {url.path}", "NotImplemented")
        except HubError as err:
            with contextlib.suppress(OSError):  # the client may be gone (killed mid-request)
                self._send_error(err)
        except (BrokenPipeError, ConnectionResetError) as err:  # the client went away: nothing to answer
            logger.debug("hub_server: client gone during %s %s: %r", self.command, self.path, err)
            self.close_connection = True
        except Exception as err:  # noqa: BLE001  a test server must answer (and log) its own bugs, not hang the client
            logger.exception("hub_server failed on %s %s", self.command, self.path)
            self.server.note_error(f"{self.command} {self.path}: {err!r}")
            with contextlib.suppress(OSError):
                self._send_error(HubError(500, f"hub_server error: {err!r}"))
        finally:
            with contextlib.suppress(HubError, OSError, ValueError):
                for _ in self._iter_body():  # leave the connection ready for the next request
                    pass
            self.server.note_request(self.command, self.path, self._status)

    def _inject_fault(self, path: str) -> bool:
        """Apply the fault :class:`Faults` picks for this request; True if the request must not be handled."""
        faults = self.server.faults
        fault = faults.pick(self.command, path) if faults is not None else None
        if fault is None:
            return False
        kind, status = fault
        self.server.note_fault(kind, status, self.command, path)
        if kind == "slow":
            time.sleep(faults.slow_seconds)
            return False
        if kind == "error":
            self._body()  # read the request first, as a real server would, so the connection stays usable
            headers = {"Retry-After": "0"} if status == 429 else {}
            self._send_json({"error": f"hub_server: injected fault {status}"}, status, headers)
            return True
        # drop: read half of the body (a connection lost mid-upload), then close without an answer
        length = int(self.headers.get("Content-Length") or 0)
        with contextlib.suppress(OSError):
            if length:
                self.rfile.read(length // 2)
            self.connection.shutdown(socket.SHUT_RDWR)
        self._body_read = True  # nothing more to drain
        self.close_connection = True
        return True

    # -- auth ---------------------------------------------------------------------------------------------------------
    def user(self, required: bool) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "Authorization header is missing: pass a token")
            return None
        if token != self.server.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.server.user


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: HubStore, user: str, token: str, page_size: int | None, faults: Faults | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store, self.user, self.token = store, user, token
        self.page_size = page_size
        self.faults = faults
        self.injected: list[tuple[str, int, str, str]] = []
        self.uploads: list[str] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[str] = []
        self.errors: list[str] = []
        self._log_lock = threading.Lock()

    def note_request(self, method: str, path: str, status: int) -> None:
        with self._log_lock:
            self.requests.append((method, path, status))

    def note_upload(self, oid: str) -> None:
        with self._log_lock:
            self.uploads.append(oid)

    def note_fault(self, kind: str, status: int, method: str, path: str) -> None:
        with self._log_lock:
            self.injected.append((kind, status, method, path))

    def note_unhandled(self, method: str, path: str) -> None:
        logger.warning("hub_server: unhandled request %s %s (answered 404)", method, path)
        with self._log_lock:
            self.unhandled.append(f"{method} {path}")

    def note_error(self, message: str) -> None:
        with self._log_lock:
            self.errors.append(message)

    # -- routing ----------------------------------------------------------------------------------------------------
    def route(self, h: _Handler) -> bool:
        s, method = h.segments, h.command
        if s[:1] == ["api"]:
            if s == ["api", "whoami-v2"] and method == "GET":
                return self.whoami(h)
            if s == ["api", "agent-harnesses"] and method == "GET":  # client telemetry registry: an empty one
                h._send_json({"standardEnvVars": [], "harnesses": {}})
                return True
            if s[1:3] == ["repos", "create"] and method == "POST":
                return self.create_repo(h)
            if s[1:3] == ["repos", "delete"] and method == "DELETE":
                return self.delete_repo(h)
            if s[1:] == ["validate-yaml"] and method == "POST":
                return self.validate_yaml(h)
            if len(s) >= 4 and s[1] in ("models", "datasets", "spaces"):
                return self.repo_api(h, s[1][:-1], f"{s[2]}/{s[3]}", s[4:])
            return False
        if s[:1] == ["lfs-objects"] and len(s) == 3:
            return self.lfs_object(h, s[1], s[2])
        repo_type = "model"
        if s[:1] in (["datasets"], ["spaces"]):
            repo_type, s = s[0][:-1], s[1:]
        if len(s) >= 2 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"]:
            return self.lfs_batch(h, repo_type, f"{s[0]}/{s[1][:-4]}")
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            rev, rest = s[3], s[4:]
            if rev == "refs" and len(rest) >= 3:  # unquoted special ref, e.g. resolve/refs/pr/1/file
                rev, rest = "/".join([rev, *rest[:2]]), rest[2:]
            return self.resolve(h, repo_type, f"{s[0]}/{s[1]}", rev, "/".join(rest))
        return False

    def repo_api(self, h: _Handler, repo_type: str, repo_id: str, rest: list[str]) -> bool:
        method = h.command
        if not rest and method == "GET":
            return self.repo_info(h, repo_type, repo_id, "main")
        verb, args = rest[0], rest[1:]
        rev = args[0] if args else "main"
        if verb == "revision" and args and method == "GET":
            return self.repo_info(h, repo_type, repo_id, "/".join(args))
        if verb == "tree" and method == "GET":
            return self.tree(h, repo_type, repo_id, rev, "/".join(args[1:]).strip("/"))
        if verb == "paths-info" and args and method == "POST":
            return self.paths_info(h, repo_type, repo_id, rev)
        if verb == "preupload" and args and method == "POST":
            return self.preupload(h, repo_type, repo_id, rev)
        if verb == "commit" and args and method == "POST":
            return self.commit(h, repo_type, repo_id, rev)
        if verb == "refs" and not args and method == "GET":
            return self.refs(h, repo_type, repo_id)
        if verb == "commits" and method == "GET":
            return self.commits(h, repo_type, repo_id, rev)
        if verb == "branch" and args and method == "POST":
            return self.create_branch(h, repo_type, repo_id, "/".join(args))
        return False

    def _readable_repo(self, h: _Handler, repo_type: str, repo_id: str) -> dict[str, Any]:
        user = h.user(required=False)
        repo = self.store.get_repo(repo_type, repo_id)
        if repo["private"] and user is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id!r}", "RepoNotFound")
        return repo

    def _writable_repo(self, h: _Handler, repo_type: str, repo_id: str) -> dict[str, Any]:
        h.user(required=True)
        return self.store.get_repo(repo_type, repo_id)

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"

    # -- account and repo lifecycle ---------------------------------------------------------------------------------
    def whoami(self, h: _Handler) -> bool:
        name = h.user(required=True)
        h._send_json({
            "type": "user", "id": "0" * 24, "name": name, "fullname": name, "email": f"{name}@example.org",
            "emailVerified": True, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
        })
        return True

    def create_repo(self, h: _Handler) -> bool:
        user = h.user(required=True)
        body = h._json_body() or {}
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name, namespace = body.get("name"), body.get("organization") or user
        if not name or "/" in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        private = body.get("private") or body.get("visibility") == "private"
        repo_id = f"{namespace}/{name}"
        self.store.create_repo(repo_type, repo_id, bool(private), user, self._repo_url(repo_type, repo_id))
        h._send_json({"url": self._repo_url(repo_type, repo_id), "name": repo_id, "id": repo_id})
        return True

    def delete_repo(self, h: _Handler) -> bool:
        user = h.user(required=True)
        body = h._json_body() or {}
        repo_type = body.get("type") or "model"
        self.store.delete_repo(repo_type, f"{body.get('organization') or user}/{body.get('name')}")
        h._send_json({})
        return True

    def validate_yaml(self, h: _Handler) -> bool:
        body = h._json_body() or {}
        try:
            meta = _front_matter(body.get("content") or "")
            configs = (meta or {}).get("configs", [])
            if not isinstance(configs, list) or not all(isinstance(c, dict) and "config_name" in c for c in configs):
                raise ValueError(f"configs must be a list of mappings with a config_name, got {configs!r}")
        except ValueError as err:
            h._send_json({"errors": [{"message": str(err)}], "warnings": []}, 400)
            return True
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        h._send_json({"errors": [], "warnings": warnings})
        return True

    def create_branch(self, h: _Handler, repo_type: str, repo_id: str, branch: str) -> bool:
        repo = self._writable_repo(h, repo_type, repo_id)
        body = h._json_body() or {}
        with self.store.lock:
            if branch in repo["refs"]:
                raise HubError(409, f"Reference already exists: {branch}")
            repo["refs"][branch] = self.store.resolve_revision(repo, body.get("startingPoint") or "main")
            self.store._save(repo)
        h._send_json({})
        return True

    # -- reading ----------------------------------------------------------------------------------------------------
    def repo_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        sha, files = self.store.files_at(repo, revision)
        blobs = h.query.get("blobs", [""])[0].lower() in ("1", "true")
        siblings = []
        for path in sorted(files):
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry.update(self._blob_info(files[path], key_oid="blobId"))
            siblings.append(entry)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": sha, "lastModified": repo["commits"][sha]["date"], "createdAt": repo["createdAt"],
            "private": repo["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, "usedStorage": sum(f["size"] for f in files.values()),
        }
        if "README.md" in files:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                card = _front_matter(self.store.object_path(files["README.md"]["sha256"]).read_text("utf-8"))
                if card:
                    info["cardData"] = card
        h._send_json(info)
        return True

    @staticmethod
    def _blob_info(f: dict[str, Any], key_oid: str = "oid") -> dict[str, Any]:
        info: dict[str, Any] = {key_oid: f["oid"], "size": f["size"]}
        if f["lfs"]:
            info["lfs"] = ({"sha256": f["sha256"], "size": f["size"], "pointerSize": f["pointerSize"]}
                           if key_oid == "blobId" else
                           {"oid": f["sha256"], "size": f["size"], "pointerSize": f["pointerSize"]})
        return info

    def _last_commit(self, repo: dict[str, Any], sha: str, path: str, is_dir: bool) -> dict[str, str]:
        """Most recent commit (from ``sha`` back) that changed ``path`` (or anything under it, for a folder)."""
        def view(files: dict[str, Any]) -> Any:
            if not is_dir:
                return files.get(path, {}).get("oid")
            return sorted((p, f["oid"]) for p, f in files.items() if p.startswith(path + "/"))

        found_sha, found = sha, repo["commits"][sha]
        current = view(found["files"])
        for csha, commit in self.store.history(repo, sha):
            if view(commit["files"]) != current:
                break
            found_sha, found = csha, commit
        return {"id": found_sha, "title": found["title"], "date": found["date"]}

    def _entries(self, repo: dict[str, Any], sha: str, files: dict[str, Any], folder: str, recursive: bool,
                 expand: bool) -> list[dict[str, Any]]:
        """Tree entries under ``folder`` (folders and files, sorted by path), in the Hub's JSON shape."""
        prefix = folder + "/" if folder else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way down
                dpath = prefix + "/".join(parts[:i])
                entries.setdefault(dpath, {"type": "directory", "path": dpath})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, **self._blob_info(files[path])}
        for e in entries.values():
            if e["type"] == "directory":
                listing = sorted((p, f["oid"]) for p, f in files.items() if p.startswith(e["path"] + "/"))
                e["oid"] = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
            if expand:
                e["lastCommit"] = self._last_commit(repo, sha, e["path"], e["type"] == "directory")
        return [entries[p] for p in sorted(entries)]

    def tree(self, h: _Handler, repo_type: str, repo_id: str, revision: str, folder: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        sha, files = self.store.files_at(repo, revision)
        if folder and not any(p.startswith(folder + "/") for p in files):
            raise HubError(404, f"Folder {folder!r} does not exist at revision {revision}", "EntryNotFound")
        recursive = h.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = h.query.get("expand", ["false"])[0].lower() in ("1", "true")
        entries = self._entries(repo, sha, files, folder, recursive, expand)
        size = self.page_size or (TREE_PAGE_SIZE_EXPANDED if expand else TREE_PAGE_SIZE)
        start = int(h.query.get("cursor", ["0"])[0] or 0)
        page, headers = entries[start:start + size], {}
        if start + size < len(entries):
            # Pin the next pages to the commit listed first, as the Hub's cursor does.
            base = urlsplit(h.path).path.split("/tree/")[0]
            tail = "/".join(s for s in [sha, folder] if s)
            query = urlencode({"recursive": str(recursive).lower(), "expand": str(expand).lower(),
                               "cursor": start + size})
            headers["Link"] = f'<{self.endpoint}{base}/tree/{tail}?{query}>; rel="next"'
        h._send_json(page, headers=headers)
        return True

    def paths_info(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        sha, files = self.store.files_at(repo, revision)
        raw = h._body().decode()
        if h.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(raw or "{}")
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(raw, keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() in ("1", "true")
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in files:
                entry = {"type": "file", "path": path, **self._blob_info(files[path])}
                if expand:
                    entry["lastCommit"] = self._last_commit(repo, sha, path, False)
                out.append(entry)
            elif path and any(p.startswith(path + "/") for p in files):
                parent = path.rsplit("/", 1)[0] if "/" in path else ""
                out.extend(e for e in self._entries(repo, sha, files, parent, False, expand) if e["path"] == path)
        h._send_json(out)
        return True

    def refs(self, h: _Handler, repo_type: str, repo_id: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(repo["refs"].items())]
        h._send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})
        return True

    def commits(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        sha = self.store.resolve_revision(repo, revision)
        h._send_json([
            {"id": c_sha, "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": c["author"]}]}
            for c_sha, c in self.store.history(repo, sha)
        ])
        return True

    def resolve(self, h: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self._readable_repo(h, repo_type, repo_id)
        sha, files = self.store.files_at(repo, revision)
        f = files.get(path)
        if f is None:
            raise HubError(404, f"Entry not found: {path!r} at revision {revision}", "EntryNotFound")
        size = f["size"]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{f["sha256"] if f["lfs"] else f["oid"]}"'}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["sha256"]}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        range_header = h.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match is None or match.groups() == ("", ""):
                raise HubError(400, f"Unsupported Range header {range_header!r}")
            first, last = match.groups()
            if first == "":  # suffix range: the last N bytes
                start, end = max(size - int(last), 0), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                h._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return True
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(length))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        h._status = status
        if h.command == "GET" and length:
            with open(self.store.object_path(f["sha256"]), "rb") as fh:
                fh.seek(start)
                remaining = length
                while remaining:
                    chunk = fh.read(min(remaining, 1 << 20))
                    h.wfile.write(chunk)
                    remaining -= len(chunk)
        return True

    # -- writing ----------------------------------------------------------------------------------------------------
    def preupload(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self._writable_repo(h, repo_type, repo_id)
        _, files = self.store.files_at(repo, revision)
        attributes = ""
        if ".gitattributes" in files:
            attributes = self.store.object_path(files[".gitattributes"]["sha256"]).read_text("utf-8")
        out = []
        for item in (h._json_body() or {}).get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            lfs = _is_lfs_path(path, attributes) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample
            existing = files.get(path)
            oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["oid"])
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        h._send_json({"files": out, "commitOid": repo["refs"].get(revision)})
        return True

    def commit(self, h: _Handler, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self._writable_repo(h, repo_type, repo_id)
        user = self.user
        if h.query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise HubError(400, "hub_server does not implement create_pr=True (pull requests)")
        header: dict[str, Any] = {}
        operations: list[tuple[str, str, Any]] = []
        for line in h._body().splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise HubError(400, f"Commit payload line is not JSON: {line[:80]!r}") from err
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {value.get('path')!r}")
                operations.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                operations.append(("lfsFile", value["path"], value["oid"]))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append((key, value["path"], None))
            else:
                raise HubError(400, f"Unknown commit line key {key!r}")
        if revision not in repo["refs"]:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        sha = self.store.commit(repo, revision, operations, title=header.get("summary") or "update",
                                description=header.get("description", ""), author=user,
                                parent_commit=header.get("parentCommit"))
        h._send_json({"success": True, "commitOid": sha, "pullRequestUrl": None,
                      "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}"})
        return True

    def lfs_batch(self, h: _Handler, repo_type: str, repo_id: str) -> bool:
        body = h._json_body() or {}
        operation = body.get("operation")
        repo = (self._writable_repo if operation == "upload" else self._readable_repo)(h, repo_type, repo_id)
        auth = {"Authorization": h.headers.get("Authorization", "")}
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", -1))
            out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                out["error"] = {"code": 422, "message": f"Invalid oid {oid!r}: expected a sha256 hex digest"}
            elif operation == "upload":
                if not self.store.has_object(oid):  # no "actions" = already stored, the client skips it
                    href = f"{self.endpoint}/lfs-objects/{oid}/{size}"
                    out["actions"] = {"upload": {"href": href, "header": {}},
                                      "verify": {"href": f"{href}?verify=1&repo={repo['id']}", "header": auth}}
            elif operation == "download":
                if self.store.has_object(oid):
                    out["actions"] = {"download": {"href": f"{self.endpoint}/lfs-objects/{oid}/{size}",
                                                   "header": {}}}
                else:
                    out["error"] = {"code": 404, "message": f"Object {oid} does not exist"}
            else:
                raise HubError(400, f"Unknown LFS batch operation {operation!r}")
            objects.append(out)
        h._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                     content_type="application/vnd.git-lfs+json")
        return True

    def lfs_object(self, h: _Handler, oid: str, size_text: str) -> bool:
        """Upload target (PUT), verify (POST ?verify=1) and download (GET) of one LFS object."""
        if not re.fullmatch(r"[0-9a-f]{64}", oid) or not size_text.isdigit():
            raise HubError(400, f"Invalid LFS object url {h.path!r}")
        size, path = int(size_text), self.store.object_path(oid)
        if h.command == "PUT":
            digest, written = hashlib.sha256(), 0
            tmp = path.with_suffix(f".upload{threading.get_ident()}")
            with open(tmp, "wb") as fh:
                for chunk in h._iter_body():
                    digest.update(chunk)
                    written += len(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != oid or written != size:
                tmp.unlink()
                raise HubError(400, f"Uploaded content does not match oid {oid} / size {size} "
                                    f"(got sha256 {digest.hexdigest()}, {written} bytes)")
            os.replace(tmp, path)
            self.note_upload(oid)
            h._send(200, b"", {"ETag": f'"{oid}"'})
            return True
        if h.command == "POST" and h.query.get("verify"):
            h.user(required=True)
            body = h._json_body() or {}
            if not self.store.has_object(oid) or path.stat().st_size != int(body.get("size", -1)):
                raise HubError(404, f"LFS object {oid} of size {body.get('size')} was not uploaded")
            h._send_json({})
            return True
        if h.command in ("GET", "HEAD") and self.store.has_object(oid):
            h._send(200, path.read_bytes(), content_type="application/octet-stream")
            return True
        return False


# --------------------------------------------------------------------------------------------------------------------
# Public API: the server object, a context manager, the client patch and a pytest fixture.
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class HubServer:
    """A running loopback Hub. ``endpoint`` is its base URL, ``token`` the only valid token (user ``user``)."""

    root: Path
    user: str = "sf-tester"
    token: str = "hf_spatialforge_test_token"
    page_size: int | None = None  # tree listing page size; None = the Hub's (1000, or 50 when expanded)
    initial_faults: Faults | None = field(default=None, repr=False)  # see Faults; ``faults`` changes them live
    endpoint: str = field(init=False, default="")
    _httpd: _HubHTTPServer | None = field(init=False, default=None, repr=False)
    _thread: threading.Thread | None = field(init=False, default=None, repr=False)

    def start(self) -> HubServer:
        self._httpd = _HubHTTPServer(HubStore(self.root), self.user, self.token, self.page_size, self.initial_faults)
        self.endpoint = self._httpd.endpoint
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hub-server-{self.endpoint}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); the request log stays readable."""
        if self._thread is not None and self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._thread = None
            _close_client_sessions()  # pooled keep-alive sockets would otherwise hold handler threads open

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """Every request served so far as (method, path, status)."""
        return list(self._httpd.requests) if self._httpd else []

    @property
    def faults(self) -> Faults | None:
        """The faults served from now on (None: none)."""
        return self._httpd.faults if self._httpd else self.initial_faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        if self._httpd is not None:
            self._httpd.faults = value
        self.initial_faults = value

    @property
    def injected(self) -> list[tuple[str, int, str, str]]:
        """Every fault served so far as (kind, status, method, path); status 0 for drops and slow answers."""
        return list(self._httpd.injected) if self._httpd else []

    @property
    def uploads(self) -> list[str]:
        """The sha256 of every LFS object received in full and stored, one entry per upload (PUT), in order."""
        return list(self._httpd.uploads) if self._httpd else []

    @property
    def unhandled(self) -> list[str]:
        """Requests no route matched ("METHOD /path"): endpoints a client needs that this server lacks."""
        return list(self._httpd.unhandled) if self._httpd else []

    @property
    def errors(self) -> list[str]:
        """Server-side exceptions (answered 500)."""
        return list(self._httpd.errors) if self._httpd else []

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        """Commit sha of ``branch``, read from the store (no HTTP)."""
        assert self._httpd is not None, "server was never started"
        return self._httpd.store.get_repo(repo_type, repo_id)["refs"][branch]

    @contextlib.contextmanager
    def patch_clients(self) -> Iterator[HubServer]:
        """Point huggingface_hub and datasets (already imported or not) at this server, then restore everything.

        Both libraries copy HF_ENDPOINT into module constants at import time, so setting the variable is not enough
        inside a running pytest process. We patch the constants they read at call time, set HF_ENDPOINT / HF_TOKEN for
        child processes (and HF_HUB_OFFLINE=0, whatever the session set), turn Xet off, turn off datasets' lookups of
        the parquet export (datasets-server.<host> would not resolve), and drop cached HfFileSystem instances and HTTP
        connections on both ends.
        """
        import datasets.config  # noqa: PLC0415  (heavy; only hub tests pay for it)
        import huggingface_hub.constants as hf_constants  # noqa: PLC0415
        from huggingface_hub import HfFileSystem  # noqa: PLC0415

        patches: list[tuple[Any, str, Any]] = [
            (hf_constants, "ENDPOINT", self.endpoint),
            (hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (hf_constants, "HF_URL_HOSTS", frozenset(hf_constants.HF_URL_HOSTS | {"127.0.0.1"})),
            (hf_constants, "HF_HUB_DISABLE_XET", True),
            (hf_constants, "HF_HUB_OFFLINE", False),
            (datasets.config, "HF_ENDPOINT", self.endpoint),
            (datasets.config, "HUB_DATASETS_URL", self.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
            (datasets.config, "USE_PARQUET_EXPORT", False),
            (datasets.config, "HF_HUB_OFFLINE", False),
        ]
        env = {"HF_ENDPOINT": self.endpoint, "HF_TOKEN": self.token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
        saved_attrs = [(mod, name, getattr(mod, name)) for mod, name, _ in patches if hasattr(mod, name)]
        saved_env = {key: os.environ.get(key) for key in env}
        for mod, name, value in patches:
            if hasattr(mod, name):
                setattr(mod, name, value)
        os.environ.update(env)
        HfFileSystem.clear_instance_cache()
        try:
            yield self
        finally:
            for mod, name, value in saved_attrs:
                setattr(mod, name, value)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            HfFileSystem.clear_instance_cache()
            _close_client_sessions()


def _close_client_sessions() -> None:
    """Close huggingface_hub's pooled HTTP client so no keep-alive socket outlives the server."""
    from huggingface_hub.utils import _http  # noqa: PLC0415

    _http.close_session()


@contextlib.contextmanager
def hub_server(root: str | Path | None = None, *, patch_clients: bool = True, **options: Any) -> Iterator[HubServer]:
    """Run a :class:`HubServer` storing under ``root`` (a temp folder if None), optionally with clients patched.

    ``options`` go to :class:`HubServer` (``user``, ``token``, ``page_size``, ``initial_faults``).
    """
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-server-"))
        server = HubServer(Path(root), **options).start()
        stack.callback(server.stop)
        if patch_clients:
            stack.enter_context(server.patch_clients())
        yield server


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    """A fresh loopback Hub with huggingface_hub and datasets pointed at it for the test's duration."""
    with hub_server(tmp_path / "hub") as server:
        yield server
    if server.errors:
        pytest.fail(f"hub_server raised during the test: {server.errors}")
