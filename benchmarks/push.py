"""Push benchmark: ``push`` vs ``HfApi.upload_folder`` of the same files to the loopback Hub, side by side.

Prints, in one run, on a dataset folder it generates in a temp folder (``--tasks`` x ``--shards``
Parquet files of about ``--shard-mb`` MB, a card with one config per task, stats.json):

1. seconds of a first push with ``push`` (plan against the repo, batched commits) and with
   ``upload_folder`` (one commit, what huggingface_hub does without Xet), and their ratio;
2. seconds of a second push of the unchanged folder (``push`` lists the repo and uploads nothing;
   ``upload_folder`` hashes and asks the server again), and their ratio.

Both go through the real huggingface_hub client to ``tests/hub_server.py`` on 127.0.0.1 (LFS
uploads), so the numbers are the client's work plus loopback I/O, not a network's.

    python benchmarks/push.py
    python benchmarks/push.py --tasks 6 --shards 16 --shard-mb 4
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TASKS = ("grounding", "referring", "counting", "near_far", "left_right", "perspective")


def make_folder(root: Path, tasks: int, shards: int, shard_mb: float, seed: int = 0) -> Path:
    from spatialforge.builders.card import write_card

    rng = np.random.default_rng(seed)
    rows_per_shard = max(1, int(shard_mb * 2**20 / 256))
    rows = {}
    for task in TASKS[:tasks]:
        (root / "data" / task).mkdir(parents=True)
        for s in range(shards):
            text = rng.integers(0, 2**63, (rows_per_shard, 4), dtype=np.int64).astype(str)
            table = pa.table({"id": [f"{task}-{s}-{i}" for i in range(rows_per_shard)],
                              "question": ["".join(r) for r in text], "answer": ["".join(r[::-1]) for r in text]})
            pq.write_table(table, root / "data" / task / f"shard-{s:05d}-of-{shards:05d}.parquet", compression="none")
        rows[task] = rows_per_shard * shards
    write_card(root, {"rows_per_task": rows, "config": {"tasks": list(rows)}})
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mb", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from hub_server import hub_server
    from huggingface_hub import HfApi

    from spatialforge.processing.hub.push import published_files, push

    with tempfile.TemporaryDirectory(prefix="sf-bench-push-") as tmp:
        folder = make_folder(Path(tmp) / "ds", args.tasks, args.shards, args.shard_mb)
        files, _ = published_files(folder)
        size = sum((folder / f).stat().st_size for f in files)
        print(f"folder: {len(files)} files, {size / 2**20:.1f} MiB")
        # One server each: the loopback Hub stores LFS objects once for all repos, so a second repo of the same
        # files would upload nothing.
        with hub_server(Path(tmp) / "hub-a") as hub_a, hub_server(Path(tmp) / "hub-b", patch_clients=False) as hub_b:
            api = HfApi(endpoint=hub_b.endpoint, token=hub_b.token)
            times: dict[str, list[float]] = {"push": [], "upload_folder": []}
            for _ in range(2):  # first push, then a push of the unchanged folder
                start = time.perf_counter()
                push(folder, "bench", token=hub_a.token, progress=False)
                times["push"].append(time.perf_counter() - start)
                start = time.perf_counter()
                api.create_repo("bench", repo_type="dataset", exist_ok=True)
                api.upload_folder(folder_path=folder, repo_id=f"{hub_b.user}/bench", repo_type="dataset",
                                  allow_patterns=files)
                times["upload_folder"].append(time.perf_counter() - start)
            for i, what in enumerate(("first push", "unchanged folder")):
                p, u = times["push"][i], times["upload_folder"][i]
                print(f"{what:<17} push {p:6.2f}s   upload_folder {u:6.2f}s   push/upload_folder {p / u:5.2f}")

if __name__ == "__main__":
    main()
