"""Run a pipeline over shards on one machine, resumably.

The input (a reader's sorted items) is cut into ``num_shards`` contiguous shards; shard ``k`` always
holds the same items and is written to files named after it, whatever the number of workers, so
the output bytes do not depend on ``workers``. Each shard's run ends with a completion marker::

    out/.spatialforge/run.json                  what was run (a rerun must match it)
    out/.spatialforge/inputs/shard-00003.json   the input files that shard read (size, mtime, cheap hash)
    out/.spatialforge/markers/shard-00003.json  that shard's stats and files; written after its Parquet files

A killed run is rerun with the same command: shards with a marker are skipped, unless an input file
they read changed since (a depth map rewritten in place, an image replaced: those shards are redone,
each named in the log), files of shards without one (half-written ``*.tmp*`` files, or Parquet files
renamed before the kill) are removed and those shards run again. At the end, ``data/`` is checked to
hold exactly the files the markers list, and the markers' stats are merged into ``stats.json`` and
the dataset card. One run at a time holds the folder's lock, and a folder holding no run is written
only when empty (see :mod:`~..output.run_folder`).

Steps tell which files they read through a set attribute ``inputs_used`` (paths; a path looked up
and not found is recorded as absent, so a file added later redoes the shard too).

Workers are processes started with ``spawn`` (safe with torch and threads) in a
``ProcessPoolExecutor``; ``workers=1`` runs in
this process. Steps are built inside each worker by ``build()`` (a picklable callable, e.g.
``functools.partial(build_steps, config)``) once, so models load once per worker; the counters of
every step are reset before each shard, so stats are per shard. A shard runs with the cycle
collector tuned for many short-lived objects per record (:func:`~spatialforge.processing.base.steady_gc`).

Example:
    >>> from functools import partial
    >>> executor = LocalExecutor(partial(build_steps, cfg), out_dir="out/", num_shards=8, workers=2)  # doctest: +SKIP
    >>> stats = executor.run()                                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..base import Step, StepStats, run_pipeline, steady_gc
from ..output.parquet import TMP_SUFFIX, shard_name
from ..output.run_folder import RUN_FILE, STATE_DIR, RunFolder, atomic_json, changed_inputs, record_inputs

logger = logging.getLogger(__name__)

MARKERS_DIR = "markers"
INPUTS_DIR = "inputs"
_COUNTERS = ("objects_dropped", "notes", "rows_per_task", "candidate_drops")  # per-shard counters of steps
_PROGRESS_EVERY = 0.5  # seconds between progress messages from a worker


class ShardFailed(RuntimeError):
    """A shard's steps raised (the cause is chained) or its worker process died."""

    def __init__(self, shard: int, err: BaseException) -> None:
        super().__init__(f"shard {shard} failed: {err!r}")
        self.shard = shard
        self.error = err

    def __reduce__(self):  # pickled with its arguments (Ray sends it from a worker to the driver)
        return type(self), (self.shard, self.error)


def marker_path(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / STATE_DIR / MARKERS_DIR / f"shard-{shard:05d}.json"


def inputs_path(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / STATE_DIR / INPUTS_DIR / f"shard-{shard:05d}.json"


def _reset(step: Step) -> None:
    step.stats = StepStats(step.name)
    for attr in _COUNTERS:
        if isinstance(getattr(step, attr, None), Counter):
            setattr(step, attr, Counter())
    if isinstance(getattr(step, "written", None), list):
        step.written = []
    if isinstance(getattr(step, "inputs_used", None), set):
        step.inputs_used = set()


def step_report(step: Step) -> dict[str, Any]:
    """A step's stats as a dict, with its extra counters (objects dropped, notes) when it has them."""
    out = step.stats.to_dict()
    for attr in ("objects_dropped", "notes"):
        counter = getattr(step, attr, None)
        if counter:
            out[attr] = dict(sorted(counter.items()))
    return out


def run_shard(steps: list[Step], out_dir: str | os.PathLike, shard: int, num_shards: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``steps`` on one shard, write its inputs and marker, return its stats."""
    for step in steps:
        _reset(step)
    started_ns = time.time_ns()
    start = time.perf_counter()
    n = 0
    no_objects = 0
    # The collector tuned for many short-lived objects per record (see steady_gc: same output).
    with steady_gc() as settle:
        for record in run_pipeline(steps, [], rank=shard, world_size=num_shards):
            n += 1
            if n == 1:
                settle()  # every step has set up by now (models loaded): freeze that too
            no_objects += not len(record.objects)
            if progress is not None:
                progress(1)
    stats = shard_summary(shard, num_shards, [step_report(s) for s in steps], [step_counters(s) for s in steps],
                          n, no_objects, time.perf_counter() - start)
    written = [p for s in steps for p in getattr(s, "written", None) or ()]
    used = [p for s in steps for p in getattr(s, "inputs_used", None) or ()]
    return finish_shard(out_dir, shard, stats, written, used, started_ns)


def finish_shard(out_dir: str | os.PathLike, shard: int, stats: dict[str, Any], written: Iterable[str],
                 used: Iterable[str], started_ns: int) -> dict[str, Any]:
    """Record a finished shard: the files it wrote (in its marker), the input files it read (size,
    mtime, cheap hash), then the marker itself, last, so a marker always means "done"."""
    stats["files"] = sorted({_relative(p, out_dir) for p in written})
    atomic_json(inputs_path(out_dir, shard), record_inputs({os.path.abspath(p) for p in used}, started_ns))
    atomic_json(marker_path(out_dir, shard), stats)
    return stats


def step_counters(step: Step) -> dict[str, dict[str, int]]:
    """The shard-level counters a step keeps (``rows_per_task``, ``candidate_drops``), as dicts."""
    return {attr: dict(getattr(step, attr, None) or {}) for attr in ("rows_per_task", "candidate_drops")}


def shard_summary(shard: int, num_shards: int, reports: list[dict[str, Any]], counters: list[dict[str, dict[str, int]]],
                  records_out: int, no_objects: int, seconds: float) -> dict[str, Any]:
    """A shard's marker: its steps' reports (reader first) and counters, and what reached the end."""
    rows: Counter = Counter()
    drops: Counter = Counter()
    for c in counters:
        rows.update(c.get("rows_per_task", {}))
        drops.update(c.get("candidate_drops", {}))
    return {
        "shard": shard,
        "num_shards": num_shards,
        "records_in": reports[0]["records_in"] if reports else 0,
        "records_out": records_out,
        "no_objects": no_objects,  # records that reached the end without a single box
        "rows_per_task": dict(sorted(rows.items())),
        "candidate_drops": dict(sorted(drops.items())),
        "steps": reports,
        "seconds": round(seconds, 6),
    }


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum reports of one step (:func:`step_report` dicts: counts, timings, drop reasons)."""
    merged: dict[str, Any] = {"name": reports[0]["name"], "records_in": 0, "records_out": 0, "seconds": 0.0}
    for step in reports:
        for key in ("records_in", "records_out", "seconds", "input_wait_seconds"):
            if key in step:
                merged[key] = merged.get(key, 0) + step[key]
        for key in ("dropped", "objects_dropped", "notes"):
            if step.get(key):
                merged[key] = dict(sorted((Counter(merged.get(key, {})) + Counter(step[key])).items()))
    for key in ("seconds", "input_wait_seconds"):
        if key in merged:
            merged[key] = round(merged[key], 6)
    merged.setdefault("dropped", {})
    return merged


def _relative(path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """``path`` relative to ``out_dir`` (posix), for a file a step wrote inside it."""
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir)))
    if rel.parts and rel.parts[0] == "..":
        raise ValueError(f"a step wrote {str(path)!r}, outside the output folder {str(out_dir)!r}")
    return rel.as_posix()


def merge_stats(shards: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum per-shard stats (counts, timings, drop reasons; steps matched by position)."""
    out: dict[str, Any] = {"num_shards": 0, "records_in": 0, "records_out": 0, "no_objects": 0, "seconds": 0.0}
    rows: Counter = Counter()
    drops: Counter = Counter()
    per_step: list[list[dict[str, Any]]] = []
    for s in sorted(shards, key=lambda s: s["shard"]):
        out["num_shards"] = s["num_shards"]
        out["records_in"] += s["records_in"]
        out["records_out"] += s["records_out"]
        out["no_objects"] += s.get("no_objects", 0)
        out["seconds"] += s["seconds"]
        rows.update(s["rows_per_task"])
        drops.update(s["candidate_drops"])
        for i, step in enumerate(s["steps"]):
            if i == len(per_step):
                per_step.append([])
            per_step[i].append(step)
    steps = [merge_reports(reports) for reports in per_step]
    out["seconds"] = round(out["seconds"], 6)
    out["shards_done"] = len(shards)
    out["rows_per_task"] = dict(sorted(rows.items()))
    out["rows_total"] = sum(rows.values())
    out["candidate_drops"] = dict(sorted(drops.items()))
    out["steps"] = steps
    return out


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _diff(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs between two JSON-like dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{key}.{k}" if key else str(k)
            if k not in old or k not in new:
                out.append((sub, old.get(k, _ABSENT), new.get(k, _ABSENT)))
            else:
                out += _diff(old[k], new[k], sub)
        return out
    return [] if old == new else [(key, old, new)]


# -- worker processes ----------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    # A SIGKILLed parent cannot stop its pool: without this, orphans would keep writing while a
    # resumed run works on the same shards.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(progress_queue, parent: int) -> None:
    _worker["queue"] = progress_queue
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _worker_shard(build: Callable[[], list[Step]], out_dir: str, shard: int, num_shards: int) -> dict[str, Any]:
    if "steps" not in _worker:
        _worker["steps"] = build()  # once per worker: models load once
    q = _worker["queue"]
    pending = [0, time.monotonic()]

    def progress(n: int) -> None:
        pending[0] += n
        if time.monotonic() - pending[1] > _PROGRESS_EVERY:
            q.put(pending[0])
            pending[0], pending[1] = 0, time.monotonic()

    stats = run_shard(_worker["steps"], out_dir, shard, num_shards, progress)
    if pending[0]:
        q.put(pending[0])
    return stats


class LocalExecutor:
    """Run a pipeline over ``num_shards`` shards with ``workers`` processes; resumable.

    Args:
        build: picklable callable returning the list of steps (reader first, writer last).
        out_dir: dataset folder (``data/``, ``README.md``, ``stats.json``, ``.spatialforge/``).
        num_shards: how the input is cut (fixes the output files; independent of ``workers``).
        workers: processes; 1 runs in this process.
        fingerprint: JSON-able description of the run (e.g. the config); a rerun into the same
            ``out_dir`` must match it, or fail instead of mixing two different runs.
        overwrite: start from scratch, deleting a previous run's files in ``out_dir`` (only those).
        allow_existing: write into a non-empty folder that holds no run (never replacing its files).
        finalize: callable ``(out_dir, merged_stats) -> None`` run at the end (e.g. ``write_card``).
        progress: show tqdm progress bars.
        prepare: callable run once in this process before any shard, when shards are left to do
            (e.g. converting the annotations once instead of in every worker); it may return the
            number of input items, which gives the progress bar its total.
    """

    def __init__(
        self,
        build: Callable[[], list[Step]],
        out_dir: str | os.PathLike,
        num_shards: int = 1,
        workers: int = 1,
        fingerprint: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        finalize: Callable[[Path, dict[str, Any]], None] | None = None,
        progress: bool = True,
        start_method: str = "spawn",
        prepare: Callable[[], int | None] | None = None,
        allow_existing: bool = False,
    ) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.build = build
        self.out_dir = Path(out_dir)
        self.num_shards = num_shards
        self.workers = workers
        self.fingerprint = dict(fingerprint or {})
        self.overwrite = overwrite
        self.finalize = finalize
        self.progress = progress
        self.start_method = start_method
        self.prepare = prepare
        self.allow_existing = allow_existing
        self.folder = RunFolder(self.out_dir)

    # -- state -----------------------------------------------------------------------------------
    def _prepare(self) -> list[int]:
        """Check or record the run description; return the shards still to do, cleaned up."""
        state = self.out_dir / STATE_DIR
        run_file = state / RUN_FILE
        want = {"num_shards": self.num_shards, "fingerprint": self.fingerprint}
        self.folder.check_start(self.overwrite, self.allow_existing, self._run_files())
        if run_file.is_file():
            have = json.loads(run_file.read_text(encoding="utf-8"))
            want_json = json.loads(json.dumps(want))
            if have != want_json:
                old = {"num_shards": have.get("num_shards"), **have.get("fingerprint", {})}
                new = {"num_shards": self.num_shards, **want_json["fingerprint"]}
                changes = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in _diff(old, new))
                raise ValueError(
                    f"{str(self.out_dir)!r} holds a run with other settings or inputs, so it cannot be resumed. "
                    f"Changed (that run -> this run): {changes}. Pass --overwrite (overwrite=True) to start "
                    "again, or use another output folder."
                )
        else:
            atomic_json(run_file, want)
        done = {s for s in range(self.num_shards) if self._still_done(s)}
        todo = [s for s in range(self.num_shards) if s not in done]
        if done:
            logger.info("resuming: %d of %d shards already done", len(done), self.num_shards)
        self._clean(todo)
        return todo

    def _run_files(self) -> set[str]:
        """Files of the run in ``out_dir`` by its own record: its markers' lists and its shards' names."""
        run_file = self.out_dir / STATE_DIR / RUN_FILE
        if not run_file.is_file():
            return set()
        num_shards = json.loads(run_file.read_text(encoding="utf-8")).get("num_shards")
        shards = range(num_shards) if isinstance(num_shards, int) else range(0)
        out = {p.relative_to(self.out_dir).as_posix() for p in self._shard_files(shards, num_shards)}
        markers = self.out_dir / STATE_DIR / MARKERS_DIR
        for path in sorted(markers.glob("shard-*.json")) if markers.is_dir() else ():
            out.update(json.loads(path.read_text(encoding="utf-8")).get("files", []))
        return out

    def _still_done(self, shard: int) -> bool:
        """A marker, with its file list and its inputs as recorded; a shard whose inputs changed is redone."""
        marker, inputs = marker_path(self.out_dir, shard), inputs_path(self.out_dir, shard)
        if not marker.is_file():
            return False
        if "files" in json.loads(marker.read_text(encoding="utf-8")) and inputs.is_file():
            changed = changed_inputs(json.loads(inputs.read_text(encoding="utf-8")))
            if not changed:
                return True
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            logger.warning("shard %d is redone: its input %s changed (%s)%s", shard, changed[0][0], changed[0][1], more)
        marker.unlink()
        inputs.unlink(missing_ok=True)
        return False

    def _shard_files(self, shards: Iterable[int], num_shards: int) -> list[Path]:
        """Files under ``data/<task>/`` named after ``shards`` of ``num_shards`` (Parquet or tmp files)."""
        data = self.out_dir / "data"
        names = {shard_name(s, num_shards) for s in shards}
        if not names or not data.is_dir():
            return []
        return [path for path in sorted(data.glob("*/*")) if path.name.split(".parquet")[0] in names
                and (path.name.endswith(".parquet") or TMP_SUFFIX in path.name)]

    def _clean(self, shards: list[int]) -> None:
        """Remove files of unfinished shards (tmp files, or renamed files of a shard killed before its marker)."""
        for path in self._shard_files(shards, self.num_shards):
            path.unlink()
        markers = self.out_dir / STATE_DIR / MARKERS_DIR
        if markers.is_dir():
            for path in markers.glob("*.tmp-*"):
                path.unlink()

    def shard_stats(self) -> list[dict[str, Any]]:
        out = []
        for s in range(self.num_shards):
            path = marker_path(self.out_dir, s)
            if path.is_file():
                out.append(json.loads(path.read_text(encoding="utf-8")))
        return out

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the shards that are not done; return the merged stats of all shards.

        Holds the folder's lock throughout; raises :class:`~..output.run_folder.OutputFolderError`
        when another run holds it or the folder is not this run's to write.
        """
        with self.folder:
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        todo = self._prepare()
        if todo:
            from tqdm.auto import tqdm

            from ..readers.base import shard_slice

            items = self.prepare() if self.prepare is not None else None
            # with the number of items known, the images bar has a total and an ETA
            total = None if items is None else sum(len(range(items)[shard_slice(items, s, self.num_shards)]) for s in todo)
            shard_bar = tqdm(total=self.num_shards, initial=self.num_shards - len(todo), desc="shards", unit="shard", disable=not self.progress)
            record_bar = tqdm(total=total, desc="images", unit="img", disable=not self.progress)
            try:
                self._run_todo(todo, shard_bar, record_bar)
            finally:
                record_bar.close()
                shard_bar.close()
        shards = self.shard_stats()
        self.folder.check_finish({f for s in shards for f in s["files"]})
        stats = merge_stats(shards)
        if self.fingerprint:
            stats["config"] = self.fingerprint
        if self.finalize is not None:
            self.finalize(self.out_dir, stats)
        return stats

    def _run_todo(self, todo: list[int], shard_bar, record_bar) -> None:
        """Run the shards ``todo``, each writing its files and marker; update the bars."""
        if self.workers == 1 or len(todo) == 1:
            self._run_here(todo, shard_bar, record_bar)
        else:
            self._run_pool(todo, shard_bar, record_bar)

    def _run_here(self, todo: list[int], shard_bar, record_bar) -> None:
        steps = self.build()
        for shard in todo:
            try:
                stats = run_shard(steps, self.out_dir, shard, self.num_shards, record_bar.update)
            except Exception as err:
                raise ShardFailed(shard, err) from err
            shard_bar.update(1)
            shard_bar.set_postfix(rows=sum(stats["rows_per_task"].values()))

    def _run_pool(self, todo: list[int], shard_bar, record_bar) -> None:
        # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the OOM killer raises
        # BrokenProcessPool here instead of leaving its shard (and this loop) waiting forever.
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context(self.start_method)
        progress_queue = ctx.Queue()

        def drain() -> None:
            while True:
                try:
                    record_bar.update(progress_queue.get_nowait())
                except queue_mod.Empty:
                    return

        processes = min(self.workers, len(todo))
        with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())) as pool:
            futures = {pool.submit(_worker_shard, self.build, str(self.out_dir), shard, self.num_shards): shard for shard in todo}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                    drain()
                    for future in done:
                        try:
                            stats = future.result()
                        except Exception as err:
                            raise ShardFailed(futures[future], err) from err
                        shard_bar.update(1)
                        shard_bar.set_postfix(last_rows=sum(stats["rows_per_task"].values()))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            drain()
