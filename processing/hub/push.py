"""Push a generated dataset folder to a Hub dataset repo: only the dataset, resumable, through faults.

What is published (:func:`published_files`)::

    README.md                   the card as written (license, citation, ``configs:``, ``dataset_info``)
    stats.json                  counts and drop reasons, without local paths
    data/<task>/*.parquet       the shards (``.jsonl`` too)

and nothing else: ``.spatialforge/`` (annotation cache, shard markers, ``run.json`` with absolute
local paths, and with ``--source hf`` a copy of every image) stays local, like any other file of
the folder. Every left-out file is counted by reason in the log.

Before anything is uploaded, :func:`push` checks the folder (a finished run; a card whose every
config matches files with rows, so plain ``load_dataset(repo_id, config)`` works afterwards; no
local path in a published text file), then the token (``whoami``: a clear error naming
``hf auth login`` / ``--token``), then the repo (created if missing, in the user's namespace or one
of their organizations; the branch of ``revision`` created from ``main`` if missing).

How it uploads. ``huggingface_hub`` 2.x folds large-folder uploads into ``upload_folder``'s Xet
pipeline; without Xet (a server that does not speak it, or ``HF_HUB_DISABLE_XET=1``) that is a
single commit of everything, and a kill or a lost connection loses all of it. So the push plans
against the repo's tree (a file whose sha256 / git blob id matches the remote one is not sent
again) and commits in batches (``files_per_commit``, ``bytes_per_commit``) with
``HfApi.create_commit``, whose pre-upload step uploads the LFS / Xet content first. A rerun after a
kill therefore uploads only what is missing: committed batches are unchanged files, and content
uploaded but not committed is skipped by the LFS batch API (no upload action for a stored object)
or deduplicated by Xet. Shards the repo holds under ``data/`` that the folder no longer has (an
older run with other ``--num-shards``) are deleted in the last commit, since the card's globs
would read them; other remote files are left alone. The card goes last, so a half-pushed repo never
declares configs whose files are missing.

Example:
    >>> push("sf-o365", "me/sf-o365", private=True)    # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import json
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ...builders.card import PREVIEWS_DIR

logger = logging.getLogger(__name__)

T = TypeVar("T")

CARD = "README.md"
STATS = "stats.json"
DATA_DIR = "data"
DATA_SUFFIXES = (".parquet", ".jsonl")
TEXT_SUFFIXES = (".md", ".json", ".jsonl", ".txt", ".yaml", ".yml", ".csv")
STATE_DIR = ".spatialforge"  # the executor's run state (processing.executor.STATE_DIR)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
LOGIN_HINT = "run `hf auth login` or pass --token"


class PushError(Exception):
    """A push that cannot (or must not) go ahead; the message is one line naming the file, repo or flag."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient Hub errors with exponential backoff and full jitter.

    Transient: HTTP 408, 429 and 5xx answers, and connections refused, reset or dropped mid-request
    (transport errors). Anything else (401, 403, 404, a refused commit) fails at once.

    Why: the Hub answers 429 and 5xx under load, and long uploads lose connections. Retrying at
    once, or after the same fixed delay, makes every client that failed together retry together
    and hit the overloaded server again at the same instant; exponential backoff gives it room and
    full jitter (a delay drawn uniformly in ``[0, min(max_delay, base_delay * 2**attempt)]``, as
    in AWS's "Exponential Backoff And Jitter") spreads the retries out. A ``Retry-After`` header is
    honored as a lower bound. Attempts are bounded so a real outage ends in an error instead of a
    hang; the push is resumable, so rerunning it later loses nothing. ``huggingface_hub`` already
    retries the LFS transfers themselves (``http_backoff``); this covers the calls it does not
    (pre-upload, commit, tree listing, repo checks).
    """

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    seed: int | None = None  # seeds the jitter (tests); None: fresh randomness

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"delays must be >= 0, got base_delay={self.base_delay!r}, max_delay={self.max_delay!r}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        wait = rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(wait, retry_after or 0.0)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "Timeout")):
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(out)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(err: BaseException) -> float | None:
    response = getattr(err, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is worth retrying (see :class:`RetryPolicy`)."""
    status = _status(err)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(err, _transport_errors())


class Retrier:
    """Runs calls under a :class:`RetryPolicy`, counting the retries."""

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy
        self.rng = random.Random(policy.seed)
        self.sleep = sleep
        self.retries: Counter = Counter()  # what -> retries

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.policy.max_attempts):
            try:
                return fn()
            except Exception as err:  # noqa: BLE001  classified just below; anything not transient is re-raised
                if not is_transient(err) or attempt + 1 == self.policy.max_attempts:
                    raise
                wait = self.policy.delay(attempt, self.rng, _retry_after(err))
                self.retries[what] += 1
                logger.warning("%s failed (%s: %s); retry %d of %d in %.1fs", what, type(err).__name__,
                               _one_line(err), attempt + 1, self.policy.max_attempts - 1, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


# -- what is published ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalFile:
    """One published file: its path in the repo, where its bytes come from, and their hashes."""

    path_in_repo: str
    source: Path
    size: int
    sha256: str
    content: bytes | None = None  # published instead of the file's bytes (stats.json made path-free)

    def git_sha1(self) -> str:
        """Git blob id, what the Hub reports for a file not in LFS (computed only for those)."""
        data = self.content if self.content is not None else self.source.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def published_files(folder: str | os.PathLike) -> tuple[list[str], Counter]:
    """The files of ``folder`` that are published (relative POSIX paths, sorted) and the left-out
    ones counted by reason (``run_state`` for ``.spatialforge/``, ``temporary``, ``not_dataset``)."""
    root = Path(folder)
    keep: list[str] = []
    left_out: Counter = Counter()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if parts[0] == STATE_DIR:
            left_out["run_state"] += 1
        elif ".tmp" in path.name or path.name.endswith((".part", ".lock")):
            left_out["temporary"] += 1
        elif rel in (CARD, STATS):
            keep.append(rel)
        elif parts[0] == PREVIEWS_DIR and len(parts) == 2 and path.suffix in (".png", ".json"):
            keep.append(rel)  # the card embeds the previews (spatialforge preview)
        elif (parts[0] == DATA_DIR and len(parts) >= 3 and path.suffix in DATA_SUFFIXES
              and not any(p.startswith(".") for p in parts)):
            keep.append(rel)
        else:
            left_out["not_dataset"] += 1
    return keep, left_out


def _sha256(data_or_path: bytes | Path) -> tuple[int, str]:
    """``(size, sha256)`` of bytes or a file."""
    if isinstance(data_or_path, bytes):
        return len(data_or_path), hashlib.sha256(data_or_path).hexdigest()
    digest = hashlib.sha256()
    with open(data_or_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return data_or_path.stat().st_size, digest.hexdigest()


def _front_matter(text: str, name: str) -> dict[str, Any]:
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        raise PushError(f"{name} has no YAML header (--- ... ---): plain load_dataset would not know the configs")
    try:
        # the C loader when PyYAML has it: a card's dataset_info block is large
        meta = yaml.load(match.group(1), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as err:
        raise PushError(f"the YAML header of {name} does not parse: {_one_line(err)}") from err
    if not isinstance(meta, dict):
        raise PushError(f"the YAML header of {name} is not a mapping")
    return meta


def _rows_in(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def check_card(root: Path, files: list[str]) -> dict[str, int]:
    """Check ``README.md`` of ``root``: every config's ``data_files`` match published files holding
    rows (a config without rows fails plain ``load_dataset``, huggingface/datasets#8401); warn when
    the license or the citation is missing. Returns rows per config."""
    name = str(root / CARD)
    if CARD not in files:
        raise PushError(f"{name} does not exist: a dataset folder needs its card (spatialforge generate writes it)")
    text = (root / CARD).read_text(encoding="utf-8")
    meta = _front_matter(text, name)
    configs = meta.get("configs") or []
    if not configs:
        raise PushError(f"{name} declares no configs: the folder holds no rows to publish")
    if not meta.get("license"):
        logger.warning("%s has no license in its YAML header", name)
    if "@" not in text or "bibtex" not in text.lower():
        logger.warning("%s has no BibTeX citation", name)
    rows: dict[str, int] = {}
    for config in configs:
        cname = config.get("config_name", "?")
        patterns: list[str] = []
        for entry in config.get("data_files") or []:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            patterns += [paths] if isinstance(paths, str) else list(paths or [])
        matched = [f for f in files if f.startswith(DATA_DIR + "/") and any(fnmatch.fnmatchcase(f, p) for p in patterns)]
        if not matched:
            raise PushError(f"config {cname!r} of {name} matches no file ({', '.join(patterns) or 'no data_files'})")
        rows[cname] = sum(_rows_in(root / f) for f in matched)
        if rows[cname] == 0:
            raise PushError(
                f"config {cname!r} of {name} has no rows, and plain load_dataset fails on an empty split "
                "(huggingface/datasets#8401): rerun the same `spatialforge generate` command to rewrite the card"
            )
    return rows


def check_run_finished(root: Path) -> None:
    """Refuse a folder whose pipeline run is unfinished (fewer shard markers than shards)."""
    run_file = root / STATE_DIR / "run.json"
    if not run_file.is_file():
        return
    num_shards = int(json.loads(run_file.read_text(encoding="utf-8")).get("num_shards", 0))
    done = len(list((root / STATE_DIR / "markers").glob("shard-*.json")))
    if done < num_shards:
        raise PushError(f"the run in {str(root)!r} is unfinished ({done} of {num_shards} shards): rerun the same "
                        "`spatialforge generate` command to finish it, then push")


def local_paths(root: Path) -> list[str]:
    """Local path prefixes that must not appear in a published file: the folder, its parent, the home folder."""
    out = {str(root.resolve()), str(root.absolute()), str(root.resolve().parent) + os.sep}
    home = os.path.expanduser("~")
    if home not in ("", "~", os.sep):
        out.add(home.rstrip(os.sep) + os.sep)
    return sorted(out, key=len, reverse=True)


def plan_files(folder: str | os.PathLike) -> tuple[list[LocalFile], Counter]:
    """Everything :func:`push` checks locally, then the published files with their hashes."""
    from ...builders.card import stats_json

    root = Path(folder)
    if not root.is_dir():
        raise PushError(f"dataset folder {str(folder)!r} does not exist (or is not a folder)")
    check_run_finished(root)
    files, left_out = published_files(root)
    check_card(root, files)
    forbidden = local_paths(root)
    out = []
    for rel in files:
        source = root / rel
        content = None
        if rel == STATS:  # folders written before stats.json became path-free get the published form
            text = source.read_text(encoding="utf-8")
            try:
                public = stats_json(json.loads(text))
            except json.JSONDecodeError as err:
                raise PushError(f"{source} is not JSON: {_one_line(err)}") from err
            content = public.encode() if public != text else None
        if source.suffix in TEXT_SUFFIXES and rel.split("/")[0] != DATA_DIR:
            text = content.decode() if content is not None else source.read_text(encoding="utf-8", errors="replace")
            leaked = next((p for p in forbidden if p in text), None)
            if leaked is not None:
                raise PushError(f"{source} holds the local path {leaked!r}; a published file must not: remove it")
        size, sha256 = _sha256(content if content is not None else source)
        out.append(LocalFile(rel, source, size, sha256, content))
    if left_out:
        logger.info("left out of the push: %s", ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())))
    return out, left_out


# -- the push ------------------------------------------------------------------------------------
@dataclass
class PushResult:
    """What a push did; ``uploaded`` / ``unchanged`` / ``deleted`` are paths in the repo."""

    repo_id: str
    revision: str
    commit: str | None  # head of ``revision`` after the push
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commits: int = 0
    uploaded_bytes: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        retries = sum(self.retries.values())
        return (f"{self.repo_id}@{self.revision}: {len(self.uploaded)} files uploaded ({self.uploaded_bytes:,} bytes, "
                f"{self.commits} commits), {len(self.unchanged)} unchanged, {len(self.deleted)} stale shards deleted, "
                f"{sum(self.left_out.values())} local files left out (run state and others), {retries} retries")


def _check_token(api: Any, token: str | None, retry: Retrier) -> dict[str, Any]:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PushError(f"no Hugging Face token: {LOGIN_HINT}")
    try:
        who = retry("whoami", lambda: api.whoami(token=token))
    except Exception as err:
        if _status(err) == 401:
            raise PushError(f"the token was refused by {api.endpoint} (401 Unauthorized): {LOGIN_HINT}") from err
        raise
    role = (((who.get("auth") or {}).get("accessToken") or {}).get("role"))
    if role == "read":
        raise PushError(f"the token of {who.get('name')!r} is read-only: {LOGIN_HINT} with a write token")
    return who


def _check_repo(api: Any, repo_id: str, who: dict[str, Any], private: bool, revision: str, retry: Retrier) -> str:
    """Make sure the dataset repo and the branch exist (create them if not); return the full repo id."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if "/" not in repo_id:
        repo_id = f"{who['name']}/{repo_id}"
    namespace = repo_id.split("/")[0]
    try:
        info = retry("repo info", lambda: api.dataset_info(repo_id))
        if private and not info.private:
            logger.warning("%s exists and is public: --private only applies to a repo the push creates", repo_id)
    except RepositoryNotFoundError:
        names = {who.get("name")} | {o.get("name") for o in who.get("orgs") or []}
        if namespace not in names:
            raise PushError(f"dataset repo {repo_id!r} does not exist and cannot be created: {namespace!r} is neither "
                            f"your user ({who.get('name')!r}) nor one of your organizations") from None
        retry("create repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
        logger.info("created dataset repo %s (%s)", repo_id, "private" if private else "public")
    if revision != "main":
        try:
            retry("revision", lambda: api.dataset_info(repo_id, revision=revision))
        except RevisionNotFoundError:
            retry("create branch", lambda: api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True))
            logger.info("created branch %s of %s", revision, repo_id)
    return repo_id


def _remote_files(api: Any, repo_id: str, revision: str, retry: Retrier) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    entries = retry("list files", lambda: list(api.list_repo_tree(repo_id, recursive=True, revision=revision,
                                                                  repo_type="dataset")))
    return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _same(local: LocalFile, remote: Any) -> bool:
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.size == local.size and remote.blob_id == local.git_sha1()


def _batches(files: list[LocalFile], max_files: int, max_bytes: int) -> Iterable[list[LocalFile]]:
    batch: list[LocalFile] = []
    size = 0
    for f in files:
        if batch and (len(batch) >= max_files or size + f.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        yield batch


def _addition(cls: Any, f: LocalFile) -> Any:
    """``CommitOperationAdd`` of ``f``, given the sha256 the plan computed (the LFS path would read the file again)."""
    op = cls(f.path_in_repo, f.content if f.content is not None else str(f.source))
    op.upload_info.sha256 = bytes.fromhex(f.sha256)
    return op


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload SpatialForge dataset",
    files_per_commit: int = 100,
    bytes_per_commit: int = 10 * 2**30,
    upload_threads: int = 5,
    retry: RetryPolicy | None = None,
    progress: bool = True,
    endpoint: str | None = None,
) -> PushResult:
    """Publish the dataset of ``folder`` to the dataset repo ``repo_id`` (see the module docstring).

    Args:
        folder: a dataset folder written by ``spatialforge generate`` (card, stats, ``data/``).
        repo_id: ``namespace/name`` (or ``name``: the token's user).
        private: create the repo private (only when the push creates it).
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        token: a Hub token with write access; default: the saved one (``hf auth login``) or ``HF_TOKEN``.
        files_per_commit, bytes_per_commit: the most files / bytes one commit carries.
        upload_threads: concurrent LFS uploads within a commit.
        retry: how transient errors are retried (:class:`RetryPolicy`).
        progress: show progress bars.
        endpoint: the Hub's URL (default: ``HF_ENDPOINT`` or huggingface.co).

    Returns:
        :class:`PushResult`. Raises :class:`PushError` for anything the user must fix.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from tqdm.auto import tqdm

    if files_per_commit < 1 or bytes_per_commit < 1 or upload_threads < 1:
        raise ValueError(f"files_per_commit, bytes_per_commit and upload_threads must be >= 1, got "
                         f"{files_per_commit!r}, {bytes_per_commit!r}, {upload_threads!r}")
    revision = revision or "main"
    files, left_out = plan_files(folder)  # every local check first: nothing leaves the machine before they pass
    retrier = Retrier(retry or RetryPolicy())
    api = HfApi(endpoint=endpoint, token=token)
    who = _check_token(api, token, retrier)
    repo_id = _check_repo(api, repo_id, who, private, revision, retrier)
    remote = _remote_files(api, repo_id, revision, retrier)
    result = PushResult(repo_id=repo_id, revision=revision, commit=None, left_out=dict(left_out))
    todo = [f for f in files if not _same(f, remote.get(f.path_in_repo))]
    result.unchanged = [f.path_in_repo for f in files if f not in todo]
    local = {f.path_in_repo for f in files}
    stale = sorted(p for p in remote if p.startswith(DATA_DIR + "/") and p not in local)
    # The card last: a half-pushed repo never declares configs whose files are not there yet.
    todo.sort(key=lambda f: (f.path_in_repo in (CARD, STATS), f.path_in_repo == CARD, f.path_in_repo))
    batches = list(_batches(todo, files_per_commit, bytes_per_commit))
    if stale and not batches:
        batches = [[]]
    logger.info("pushing %s to %s@%s: %d files to upload in %d commits, %d unchanged, %d stale to delete",
                folder, repo_id, revision, len(todo), len(batches), len(result.unchanged), len(stale))
    bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, desc=f"push {repo_id}", disable=not progress)
    try:
        for i, batch in enumerate(batches):
            last = i + 1 == len(batches)
            operations: list[Any] = [_addition(CommitOperationAdd, f) for f in batch]
            if last:
                operations += [CommitOperationDelete(p) for p in stale]
            message = commit_message if len(batches) == 1 else f"{commit_message} (part {i + 1} of {len(batches)})"
            info = retrier(f"commit {i + 1} of {len(batches)}", lambda ops=operations, msg=message: api.create_commit(
                repo_id, operations=ops, commit_message=msg, repo_type="dataset", revision=revision,
                num_threads=upload_threads))
            result.commit = info.oid
            result.commits += 1
            result.uploaded += [f.path_in_repo for f in batch]
            result.uploaded_bytes += sum(f.size for f in batch)
            bar.update(sum(f.size for f in batch))
            bar.set_postfix(commits=result.commits)
    finally:
        bar.close()
    result.deleted = stale
    if result.commit is None:
        result.commit = retrier("repo info", lambda: api.dataset_info(repo_id, revision=revision).sha)
    result.retries = dict(retrier.retries)
    logger.info("pushed: %s", result.summary())
    return result
