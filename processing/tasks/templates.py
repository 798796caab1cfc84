"""Question and answer phrasings of the six tasks, as data.

Each task has several :class:`Template` s. A template's ``form`` says which kind of question it is,
so the task code chooses among phrasings without knowing their text:

* ``grounding``: ``single`` (one instance of the label) or ``multi`` (every instance);
* ``referring`` and ``counting``: ``plain``;
* relation tasks: ``choice`` ("which of {a} and {b} ...": the answer names one of them),
  ``yesno`` ("is {a} ... {b}?") and ``side`` ("is {a} ... or ... {b}?": the answer is the side word
  of the predicate that holds, see :data:`SIDE_WORDS`). ``asks`` is the predicate a ``choice`` or
  ``yesno`` question asks about.

Slots filled by the task step: ``{a}``, ``{b}`` (object mentions, e.g. ``the cup`` or
``the cup at [12, 40, 230, 500]``; the label alone only with ``VerifyConfig.label_alone_mentions``
when it names one boxed thing), ``{answer}`` (the mention of
the right object), ``{yes_no}``, ``{side}``, ``{label}``, ``{labels}`` (plural), ``{count}``,
``{box}`` (a region as ``[x1, y1, x2, y2]``, ints in 0..1000) and ``{json}`` (the Qwen3-VL grounding
answer ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cup"}]``). The objects of a row are listed in the
order in which ``{a}`` / ``{b}`` first appear in the question (:attr:`Template.roles`).

Example:
    >>> t = TEMPLATES["near_far"][0]
    >>> t.form, t.asks, t.roles
    ('choice', 'nearer_than', ('a', 'b'))
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, field

FORMS = ("single", "multi", "plain", "choice", "yesno", "side")
OPPOSITE = {"nearer_than": "farther_than", "farther_than": "nearer_than", "left_of": "right_of", "right_of": "left_of"}
SIDE_WORDS = {"nearer_than": "closer", "farther_than": "farther", "left_of": "left", "right_of": "right"}
ROLE_SLOTS = ("a", "b")


@dataclass(frozen=True)
class Template:
    """One phrasing: a question, an answer, its ``form`` and (relations) the predicate it ``asks``."""

    question: str
    answer: str
    form: str = "plain"
    asks: str | None = None
    roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"template form must be one of {FORMS}, got {self.form!r} in {self.question!r}")
        if self.form in ("choice", "yesno") and self.asks not in OPPOSITE:
            raise ValueError(f"a {self.form!r} template must ask one of {tuple(OPPOSITE)}, got {self.asks!r}")
        names = [name for _, name, _, _ in string.Formatter().parse(self.question) if name]
        object.__setattr__(self, "roles", tuple(dict.fromkeys(n for n in names if n in ROLE_SLOTS)))


T = Template
TEMPLATES: dict[str, list[Template]] = {
    "grounding": [
        T("Locate the {label} in the image and output its bounding box.", "{json}", "single"),
        T("Where is the {label}? Answer with a bounding box in JSON.", "{json}", "single"),
        T("Find the {label} and give its box as [x1, y1, x2, y2] on a 0-1000 scale.", "{json}", "single"),
        T("Detect the {label} in this picture.", "{json}", "single"),
        T("Locate every {label} in the image and output their bounding boxes.", "{json}", "multi"),
        T("Find all {labels} in this picture. Answer with bounding boxes in JSON.", "{json}", "multi"),
        T("Detect each {label} and list the boxes as [x1, y1, x2, y2] on a 0-1000 scale.", "{json}", "multi"),
        T("Where are the {labels} in the image?", "{json}", "multi"),
    ],
    "referring": [
        T("What is the object in the region {box}?", "{label}", "plain"),
        T("Name the object inside the box {box}.", "{label}", "plain"),
        T("Which category does the object at {box} belong to?", "{label}", "plain"),
        T("Describe the object in region {box} with its category name.", "It is labeled {label}.", "plain"),
    ],
    "counting": [
        T("How many {labels} are there in the image?", "{count}", "plain"),
        T("Count the {labels} in this picture.", "There are {count}.", "plain"),
        T("What is the number of {labels} visible in the image?", "{count}", "plain"),
        T("How many instances of {label} can you see?", "{count}", "plain"),
    ],
    "near_far": [
        T("Which is closer to the camera, {a} or {b}?", "{answer}.", "choice", "nearer_than"),
        T("Between {a} and {b}, which one is nearer to the viewer?", "{answer}.", "choice", "nearer_than"),
        T("Which is farther from the camera, {a} or {b}?", "{answer}.", "choice", "farther_than"),
        T("Between {a} and {b}, which one is farther away?", "{answer}.", "choice", "farther_than"),
        T("Is {a} closer to the camera than {b}?", "{yes_no}.", "yesno", "nearer_than"),
        T("Is {a} farther from the camera than {b}?", "{yes_no}.", "yesno", "farther_than"),
        T("Is {a} closer or farther from the camera than {b}?", "{side}.", "side"),
    ],
    "left_right": [
        T("Which is more to the left in the image, {a} or {b}?", "{answer}.", "choice", "left_of"),
        T("Which is more to the right in the image, {a} or {b}?", "{answer}.", "choice", "right_of"),
        T("Is {a} to the left of {b} in the image?", "{yes_no}.", "yesno", "left_of"),
        T("From the camera's viewpoint, is {a} on the right side of {b}?", "{yes_no}.", "yesno", "right_of"),
        T("Is {a} to the left or to the right of {b} in the image?", "To the {side}.", "side"),
    ],
    # {b} is always the person whose viewpoint is used; left/right are theirs, not the camera's.
    "perspective": [
        T("From the perspective of {b}, is {a} on their left or on their right?", "On their {side}.", "side"),
        T("Imagine you are {b}. Is {a} to your left or to your right?", "To my {side}.", "side"),
        T("From the perspective of {b}, is {a} on their left?", "{yes_no}.", "yesno", "left_of"),
        T("Imagine you are {b}. Is {a} on your right?", "{yes_no}.", "yesno", "right_of"),
        T("From the viewpoint of {b}, is {a} to their right?", "{yes_no}.", "yesno", "right_of"),
        T("Standing where {b} is and looking where they look, is {a} on the left?", "{yes_no}.", "yesno", "left_of"),
    ],
}
del T


def relation_fact(template: Template, a, b, pred_a: str) -> tuple[tuple, dict[str, object]]:
    """What a relation ``template`` states about objects ``a`` (slot ``{a}``) and ``b`` when
    ``a <pred_a> b`` holds: the fact ``(subject, predicate, object)`` and the answer slot
    (``answer``: the object to mention, ``yes_no`` or ``side``).

    >>> t = TEMPLATES["near_far"][2]  # "Which is farther from the camera, {a} or {b}?"
    >>> relation_fact(t, "cup", "car", "nearer_than")
    (('car', 'farther_than', 'cup'), {'answer': 'car'})
    """
    if template.form == "choice":
        x, y = (a, b) if pred_a == template.asks else (b, a)  # "x <asks> y" holds
        return (x, template.asks, y), {"answer": x}
    if template.form == "yesno":
        return (a, pred_a, b), {"yes_no": "Yes" if template.asks == pred_a else "No"}
    return (a, pred_a, b), {"side": SIDE_WORDS[pred_a]}

_IRREGULAR = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "foot": "feet",
    "tooth": "teeth", "mouse": "mice", "goose": "geese", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "glasses": "glasses", "scissors": "scissors", "pants": "pants", "jeans": "jeans", "shorts": "shorts",
    "sneakers": "sneakers", "skis": "skis", "knife": "knives", "leaf": "leaves", "shelf": "shelves",
}


@functools.lru_cache(maxsize=1 << 16)  # a vocabulary is small; rows ask for the same labels over and over
def display_label(label: str) -> str:
    """A label as it reads inside a sentence: lower case, acronyms kept (``"TV"``, ``"Traffic Light"``)."""
    return " ".join(w if (w.isupper() and len(w) > 1) else w.lower() for w in label.split())


@functools.lru_cache(maxsize=1 << 16)
def plural(label: str) -> str:
    """English plural of a (display) label; good enough for category names.

    >>> plural("traffic light"), plural("bus"), plural("person"), plural("strawberry")
    ('traffic lights', 'buses', 'people', 'strawberries')
    """
    head, _, last = label.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR:
        word = _IRREGULAR[low]
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def sentence(text: str) -> str:
    """Upper-case the first character (slots such as ``{a}`` may open a sentence)."""
    return text[:1].upper() + text[1:]
