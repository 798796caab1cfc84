"""A pinned digest of what ``spatialforge demo`` writes for one seed and scene count.

It covers the Parquet bytes and the dataset card of every variant's dataset and the counts of
rows and of dropped candidates by reason. Any change of behaviour changes it: a refactor that
should change nothing must leave it alone; a change that means to alter the output updates the
pin in the same commit, saying why.
"""

import hashlib
import json

from spatialforge.builders.schema import DATA_DIR
from spatialforge.processing.synth.demo import run_demo

SEED, SCENES = 0, 8
PINNED = "5dcffebaca1d73962d1a857a6c572d7f084e33c28607a24a022ff0258a5e5775"


def demo_digest(out) -> tuple[str, list[str]]:
    result = run_demo(out, scenes=SCENES, seed=SEED, load=False)
    h = hashlib.sha256()
    parts = []
    for name in sorted(result.reports):
        folder = out / f"dataset-{name}"
        for path in sorted((folder / DATA_DIR).glob("*/*.parquet")) + [folder / "README.md"]:
            h.update(f"{name}/{path.relative_to(folder)}\0".encode())
            h.update(path.read_bytes())
            parts.append(f"{name}/{path.relative_to(folder)} {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}")
        stats = result.stats[name]
        counts = {key: stats[key] for key in ("records_in", "records_out", "no_objects", "rows_per_task", "candidate_drops")}
        blob = json.dumps(counts, sort_keys=True)
        h.update(blob.encode())
        parts.append(f"{name}/counts {blob}")
    return h.hexdigest(), parts


def test_demo_output_matches_the_pinned_digest(tmp_path):
    digest, parts = demo_digest(tmp_path / "demo")
    assert digest == PINNED, "demo output changed:\n" + "\n".join(parts) + f"\ndigest {digest}"


def test_digest_does_not_depend_on_the_output_folder(tmp_path):
    assert demo_digest(tmp_path / "a")[0] == demo_digest(tmp_path / "b" / "nested")[0]
