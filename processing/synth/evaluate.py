"""Precision of generated QA rows against known truth (synthetic scenes, or any truth in that form).

Every row is judged from its structured answer (``objects``, ``fact``, ``count``), never from its
text. Row objects are matched to truth objects by label (case-insensitive) and box IoU on the
``0..1000`` grid; a row whose objects match nothing is wrong (``unmatched``).

Truth definitions (what "correct" means, per task):

* ``near_far``: camera-space depth (``z``) of the center of each solid's bounding volume; the fact
  "A nearer_than B" holds when ``z_A < z_B``. A pair is *ambiguous* when the solids' ``z`` extents
  overlap (then nearness depends on which point one looks at); the count is reported.
* ``left_right``: image ``x`` of each solid's projected 3D center (camera frame); ambiguous when
  the unoccluded silhouettes overlap horizontally.
* ``perspective``: the object's center in the person's own frame, from the person's yaw: "A
  left_of P" holds when A lies on P's left (negative lateral offset along P's right vector).
  Ambiguous when the lateral offset is below ``ambiguous_lateral`` meters.
* ``counting``: number of visible instances of the label in the image (at least
  ``MIN_VISIBLE_PIXELS`` pixels seen), annotated or not: those the annotations leave out because
  they are small or occluded count too.
* ``grounding``: the answer boxes match, one to one at IoU >= ``min_iou``, every visible instance
  of the label (one box for a question about "the" label: then the label must be unique).
* ``referring``: the label of the visible truth object the region matches.
* relation tasks also need every object the question names by label alone ("the cup", no box) to
  be the only visible instance of its label.

Perception rows are also judged against the annotated boxes they were made from: that is a
consistency check (``TaskReport.consistency``), true by construction, not a precision.

Example:
    >>> report = evaluate([], {})
    >>> report["near_far"].rows
    0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...builders.schema import TASKS, normalize_bbox
from ..records import box_iou
from ..tasks.verify import box_text

MIN_VISIBLE_PIXELS = 60  # an instance showing at least this many pixels can be made out (and counted) in the image
MIN_IOU = 0.5  # a row object is the truth object it overlaps most, at the detection standard IoU 0.5
AMBIGUOUS_LATERAL = 0.2  # meters: perspective pairs closer than this to the person's axis are ambiguous
MAX_FAILURES = 20  # failures kept verbatim per task for the report


@dataclass
class TaskReport:
    """Counts of one task: rows judged, correct, and (when drops are known) candidates."""

    task: str
    rows: int = 0
    correct: int = 0
    unmatched: int = 0  # rows whose objects match no truth object (counted as wrong)
    ambiguous: int = 0  # rows about pairs whose truth depends on the definition (counted, judged anyway)
    ambiguous_wrong: int = 0
    excluded: int = 0  # rows left out of the counts by ``min_fill`` (not judged)
    dropped: int = 0  # candidates the generator dropped (from record drops, when given)
    over_cap: int = 0  # of which passed every check but exceeded the per-image cap
    consistent: int = 0  # perception rows that match the annotations they were made from (true by construction)
    drop_reasons: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        return self.rows - self.correct

    @property
    def precision(self) -> float | None:
        return self.correct / self.rows if self.rows else None

    @property
    def consistency(self) -> float | None:
        """Perception tasks: share of rows that agree with the annotated boxes (a consistency check:
        the rows were made from them); ``precision`` judges them against every visible instance."""
        return self.consistent / self.rows if self.rows and self.task in PERCEPTION_TASKS else None

    @property
    def accepted(self) -> int:
        """Rows the generator wrote (judged or excluded)."""
        return self.rows + self.excluded

    @property
    def candidates(self) -> int:
        return self.accepted + self.dropped

    @property
    def yield_(self) -> float | None:
        """Accepted rows / candidates."""
        return self.accepted / self.candidates if self.candidates else None

    @property
    def pass_rate(self) -> float | None:
        """Share of candidates that passed verification (accepted or only capped)."""
        return (self.accepted + self.over_cap) / self.candidates if self.candidates else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "rows": self.rows,
            "correct": self.correct,
            "wrong": self.wrong,
            "unmatched": self.unmatched,
            "ambiguous": self.ambiguous,
            "ambiguous_wrong": self.ambiguous_wrong,
            "excluded": self.excluded,
            "precision": self.precision,
            "consistency": self.consistency,
            "candidates": self.candidates,
            "yield": self.yield_,
            "pass_rate": self.pass_rate,
            "drop_reasons": dict(sorted(self.drop_reasons.items())),
            "failures": self.failures,
        }


PERCEPTION_TASKS = ("grounding", "referring", "counting")


class _ImageTruth:
    """Truth of one image with the boxes of its visible instances (``annotated``: of the annotated
    ones only) on the 0..1000 grid, for matching."""

    def __init__(self, truth: Mapping[str, Any], annotated: bool = False) -> None:
        self.truth = truth
        self.width, self.height = int(truth["width"]), int(truth["height"])
        if annotated:
            self.objects = [o for o in truth["objects"] if o.get("annotated", True) and o.get("box") is not None]
        else:  # truth without pixel counts: its annotated objects are what is visible
            self.objects = [o for o in truth["objects"] if o.get("box") is not None and (
                o["visible_pixels"] >= MIN_VISIBLE_PIXELS if "visible_pixels" in o else o.get("annotated", True))]
        self.labels = [str(o["label"]).lower() for o in self.objects]
        self.boxes = np.array([normalize_bbox(o["box"], self.width, self.height) for o in self.objects], float).reshape(-1, 4)
        cam = truth.get("camera") or {}
        self.fx, self.cx = cam.get("fx"), cam.get("cx")

    def match(self, obj: Mapping[str, Any], min_iou: float, same_label: bool = True) -> int | None:
        """Index of the truth object ``obj`` (a row object) is, or None."""
        if not self.objects:
            return None
        iou = box_iou(np.array([obj["bbox"]], float), self.boxes)[0]
        if same_label:
            label = str(obj["label"]).lower()
            iou = np.where([lab == label for lab in self.labels], iou, -1.0)
        k = int(iou.argmax())
        return k if iou[k] >= min_iou else None

    def u_center(self, k: int) -> float:
        x, _, z = self.objects[k]["center_cam"]
        if self.fx is None:
            raise ValueError(f"image {self.truth.get('image_id')!r}: truth lacks camera intrinsics for left_right")
        return self.fx * x / z + self.cx


def evaluate(
    rows: Iterable[Mapping[str, Any]],
    truth: Mapping[str, Mapping[str, Any]],
    drops: Mapping[str, int] | None = None,
    min_iou: float = MIN_IOU,
    ambiguous_lateral: float = AMBIGUOUS_LATERAL,
    min_fill: float = 0.0,
) -> dict[str, TaskReport]:
    """Judge ``rows`` against ``truth`` (``image_id -> truth``, see :func:`synth.Scene.truth`).

    ``drops`` (``"task/reason" -> count``, as records count them) adds candidate counts, hence yield.
    ``min_fill`` > 0 leaves out (and counts as ``excluded``) relation rows about an object that
    covers less than that share of its own box (thin or open shapes: umbrellas, lamp posts), to
    measure precision on the objects a box-based depth estimate is meant for.
    Rows of images without truth raise ``KeyError`` naming the image.
    """
    reports = {task: TaskReport(task) for task in TASKS}
    cache: dict[str, tuple[_ImageTruth, _ImageTruth]] = {}
    for row in rows:
        task = row["task"]
        rep = reports.setdefault(task, TaskReport(task))
        image_id = row["image_id"]
        if image_id not in cache:
            if image_id not in truth:
                raise KeyError(f"row {row.get('id')!r} refers to image {image_id!r}, which has no truth")
            cache[image_id] = (_ImageTruth(truth[image_id]), _ImageTruth(truth[image_id], annotated=True))
        visible, annotated = cache[image_id]
        ok, ambiguous, detail = _JUDGES[task](row, visible, min_iou, ambiguous_lateral)
        if task in PERCEPTION_TASKS:
            rep.consistent += bool(_JUDGES[task](row, annotated, min_iou, ambiguous_lateral)[0])
        elif ok:
            unclear = _ambiguous_mention(row, visible)
            if unclear is not None:
                ok, detail = False, {**detail, "ambiguous_mention": unclear}
        if min_fill > 0 and min(detail.get("fills", [1.0])) < min_fill:
            rep.excluded += 1
            continue
        rep.rows += 1
        rep.correct += bool(ok)
        rep.unmatched += detail.get("unmatched", False)
        rep.ambiguous += bool(ambiguous)
        rep.ambiguous_wrong += bool(ambiguous and not ok)
        if not ok and len(rep.failures) < MAX_FAILURES:
            rep.failures.append({"id": row.get("id"), "image_id": image_id, **detail})
    for reason, n in (drops or {}).items():
        task, _, why = str(reason).partition("/")
        if task in reports and why:
            reports[task].dropped += int(n)
            reports[task].drop_reasons[why] += int(n)
            if why in ("over_cap", "rebalanced"):  # passed verification: capped per image or rebalanced
                reports[task].over_cap += int(n)
    return reports


Verdict = tuple[bool, bool, dict[str, Any]]


def _ambiguous_mention(row, t: _ImageTruth) -> str | None:
    """A label a relation question names without its box ("the cup") while more than one instance
    of it can be seen, or None."""
    question = row.get("question")
    if question is None:  # structured answers only: nothing is named by text
        return None
    for obj in row["objects"]:
        if box_text(obj["bbox"]) not in question and t.labels.count(str(obj["label"]).lower()) > 1:
            return str(obj["label"])
    return None


def _pair(row, t: _ImageTruth, min_iou: float) -> tuple[int | None, int | None]:
    fact, objs = row["fact"], row["objects"]
    return t.match(objs[fact["subject"]], min_iou), t.match(objs[fact["object"]], min_iou)


def _near_far(row, t: _ImageTruth, min_iou: float, _lat: float) -> Verdict:
    a, b = _pair(row, t, min_iou)
    if a is None or b is None:
        return False, False, {"unmatched": True, "objects": row["objects"]}
    oa, ob = t.objects[a], t.objects[b]
    holds = "nearer_than" if oa["depth"] < ob["depth"] else "farther_than"
    (a0, a1), (b0, b1) = oa["z_range"], ob["z_range"]
    ambiguous = not (a1 <= b0 or b1 <= a0)
    detail = {
        "predicate": row["fact"]["predicate"],
        "truth": holds,
        "depth_subject": oa["depth"],
        "depth_object": ob["depth"],
        "z_range_subject": oa["z_range"],
        "z_range_object": ob["z_range"],
        "instances": [oa.get("instance"), ob.get("instance")],
        "fills": [oa.get("fill", 1.0), ob.get("fill", 1.0)],
        "verification": row.get("verification"),
    }
    return row["fact"]["predicate"] == holds, ambiguous, detail


def _left_right(row, t: _ImageTruth, min_iou: float, _lat: float) -> Verdict:
    a, b = _pair(row, t, min_iou)
    if a is None or b is None:
        return False, False, {"unmatched": True, "objects": row["objects"]}
    ua, ub = t.u_center(a), t.u_center(b)
    holds = "left_of" if ua < ub else "right_of"
    (a0, a1), (b0, b1) = t.objects[a]["u_range"], t.objects[b]["u_range"]
    ambiguous = not (a1 <= b0 or b1 <= a0)
    detail = {"predicate": row["fact"]["predicate"], "truth": holds, "u_subject": ua, "u_object": ub,
              "instances": [t.objects[a].get("instance"), t.objects[b].get("instance")], "verification": row.get("verification"),
              "fills": [t.objects[a].get("fill", 1.0), t.objects[b].get("fill", 1.0)]}  # fmt: skip
    return row["fact"]["predicate"] == holds, ambiguous, detail


def _perspective(row, t: _ImageTruth, min_iou: float, ambiguous_lateral: float) -> Verdict:
    a, p = _pair(row, t, min_iou)
    if a is None or p is None:
        return False, False, {"unmatched": True, "objects": row["objects"]}
    person = t.objects[p]
    if "right_world" not in person:
        return False, False, {"unmatched": True, "reason": "frame object is not a person with a known yaw"}
    rel = np.asarray(t.objects[a]["center_world"], float) - np.asarray(person["position_world"], float)
    lateral = float(rel @ np.asarray(person["right_world"], float))
    ahead = float(rel @ np.asarray(person["forward_world"], float))
    holds = "left_of" if lateral < 0 else "right_of"
    detail = {"predicate": row["fact"]["predicate"], "truth": holds, "lateral_m": lateral, "ahead_m": ahead,
              "person_facing": person.get("facing"), "yaw_to_camera_deg": person.get("yaw_to_camera_deg"),
              "instances": [t.objects[a].get("instance"), person.get("instance")], "verification": row.get("verification"),
              "fills": [t.objects[a].get("fill", 1.0), person.get("fill", 1.0)]}  # fmt: skip
    return row["fact"]["predicate"] == holds, abs(lateral) < ambiguous_lateral, detail


def _counting(row, t: _ImageTruth, _iou: float, _lat: float) -> Verdict:
    label = str(row["objects"][0]["label"]).lower() if row["objects"] else None
    if label is None:
        return False, False, {"unmatched": True, "reason": "counting row names no label in objects"}
    want = t.labels.count(label)
    return row["count"] == want, False, {"label": label, "count": row["count"], "truth": want}


def _grounding(row, t: _ImageTruth, min_iou: float, _lat: float) -> Verdict:
    objs = row["objects"]
    labels = {str(o["label"]).lower() for o in objs}
    if len(labels) != 1:
        return False, False, {"reason": f"grounding row mixes labels {sorted(labels)}"}
    label = labels.pop()
    truth_idx = [k for k, lab in enumerate(t.labels) if lab == label]
    detail = {"label": label, "answer_boxes": len(objs), "truth_boxes": len(truth_idx)}
    if len(objs) != len(truth_idx):
        return False, False, detail
    iou = box_iou(np.array([o["bbox"] for o in objs], float), t.boxes[truth_idx])
    # One-to-one: greedy by IoU is exact here since matches must exceed 0.5 (boxes of one label can't
    # both overlap one truth box above 0.5 unless they overlap each other).
    used: set[int] = set()
    for i in np.argsort(-iou.max(1)):
        j = next((int(j) for j in np.argsort(-iou[i]) if int(j) not in used), None)
        if j is None or iou[i, j] < min_iou:
            return False, False, {**detail, "unmatched": True, "best_iou": float(iou[i].max())}
        used.add(j)
    return True, False, detail


def _referring(row, t: _ImageTruth, min_iou: float, _lat: float) -> Verdict:
    obj = row["objects"][0]
    k = t.match(obj, min_iou, same_label=False)
    if k is None:
        return False, False, {"unmatched": True, "objects": row["objects"]}
    return t.labels[k] == str(obj["label"]).lower(), False, {"label": obj["label"], "truth": t.labels[k]}


_JUDGES = {
    "near_far": _near_far,
    "left_right": _left_right,
    "perspective": _perspective,
    "counting": _counting,
    "grounding": _grounding,
    "referring": _referring,
}


def format_report(reports: Mapping[str, TaskReport], title: str | None = None) -> str:
    """A fixed-width table per task: rows, candidates, yield (rows / candidates), pass rate
    (candidates passing verification, before per-image caps), precision, wrong, ambiguous."""
    lines = [title] if title else []
    lines.append(f"{'task':<12} {'rows':>6} {'cands':>6} {'yield':>6} {'pass':>6} {'precision':>9} {'wrong':>6} {'ambig':>6} {'consist':>7}")

    def fmt(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    for task, rep in reports.items():
        y, pr = (fmt(rep.yield_, 3), fmt(rep.pass_rate, 3)) if rep.dropped else ("-", "-")
        lines.append(
            f"{task:<12} {rep.rows:>6} {rep.candidates if rep.dropped else '-':>6} {y:>6} {pr:>6} "
            f"{fmt(rep.precision, 4):>9} {rep.wrong:>6} {rep.ambiguous:>6} {fmt(rep.consistency, 4):>7}"
        )
    return "\n".join(lines)
