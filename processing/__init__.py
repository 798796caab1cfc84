"""The SpatialForge generation pipeline: images (+ source annotations) -> verified spatial QA rows.

Data flow, one :class:`~.records.Record` per image, each stage in its own folder::

    readers/       source annotations and images -> Record (pixel boxes on the EXIF-transposed grid)
       |             coco.py (Objects365), openimages.py, pixmo.py, folder.py, hf.py, fiftyone.py
    perception/    what the source lacks: detection.py (boxes), depth_files.py / depth_models.py
       |             (depth), pose.py + facing.py (which way a person faces)
    tasks/         six task generators + verification: step.py runs grounding.py, referring.py,
       |             counting.py, near_far.py, left_right.py, perspective.py; verify.py holds the
       |             thresholds and named checks, templates.py the phrasings
    output/        parquet.py: rows -> data/<task>/*.parquet; the card comes from builders/card.py

Around them: ``base.py`` (the step protocol: ``Step.run(records, rank, world_size)``),
``records.py`` (the record and its vision types), ``pipeline.py`` (config -> list of steps -> run),
``executors/`` (run the same list over shards: ``local.py``), ``synth/`` (synthetic scenes with known
truth, the evaluator and the demo) and ``cli/`` (the ``spatialforge`` command, one module per group
of verbs). The row schema the steps fill is declared once in :mod:`spatialforge.builders.schema`.
"""
