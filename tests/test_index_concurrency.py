"""Processes started at once share one persistent image index (DDP ranks, DataLoader workers)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import sqlite3

import pytest
from _loader_fixtures import make_jpeg

from spatialforge.builders.resolvers import get_resolver

N_IMAGES = 300


def _rank(root: str, cache: str, barrier, out) -> None:
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("spatialforge").addHandler(Keep())
    barrier.wait()  # every process builds, checks and stores at the same moment
    try:
        r = get_resolver("mine", root, cache_dir=cache)
        paths = r.resolve_many([f"img{k:04d}" for k in range(N_IMAGES)])
        statuses = [s.status for _, s in r.check_many(paths, threads=2)]
        out.put((len(paths), statuses.count("ok"), warnings, None))
    except Exception as err:  # reported to the parent, which fails the test with it
        out.put((0, 0, warnings, f"{type(err).__name__}: {err}"))


@pytest.mark.parametrize("run", range(2))
def test_ranks_started_at_once_share_the_index(tmp_path, run):
    root = tmp_path / "imgs"
    for k in range(N_IMAGES):
        make_jpeg(str(root / f"img{k:04d}.jpg"), (24, 16))
    cache = str(tmp_path / "index")
    ctx = mp.get_context("spawn")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(str(root), cache, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for found, ok, warnings, error in results:
        assert error is None
        assert (found, ok) == (N_IMAGES, N_IMAGES)
        assert warnings == []  # in particular no "could not store ... readonly database"
    index = get_resolver("mine", str(root), cache_dir=cache).index_path
    with sqlite3.connect(index) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checks WHERE status='ok'").fetchone()[0] == N_IMAGES
