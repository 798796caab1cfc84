"""Relation rows of synthetic scenes, every verified candidate (no per-image caps), for the blind-baseline tests."""

from spatialforge.builders.schema import RELATION_TASKS
from spatialforge.processing.perception.facing import FacingFromKeypoints
from spatialforge.processing.synth.scenes import VARIANTS, variant_record
from spatialforge.processing.tasks.step import TaskStep


def relation_rows(scenes, variant: str = "exact") -> list[dict]:
    step = TaskStep(tasks=RELATION_TASKS, seed=0, max_per_task=dict.fromkeys(RELATION_TASKS), on_invalid_row="error")
    facing = FacingFromKeypoints()
    out = []
    for s in scenes:
        out += step.process(facing.process(variant_record(s, VARIANTS[variant]))).rows
    return out


def by_task(rows, task):
    return [r for r in rows if r["task"] == task]
