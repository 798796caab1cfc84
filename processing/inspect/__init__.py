"""Look at generated QA: FiftyOne export / import (:mod:`.fiftyone`) and preview images (:mod:`.preview`).

Both read a generated dataset (a Hub-ready folder, a Parquet / JSONL file or glob, or a Hub repo
id) and join its rows to their images through the loader's resolvers (``--image-dir SOURCE=DIR``),
see :func:`.rows.load_qa`.
"""
