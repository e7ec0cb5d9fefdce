"""The canonical sample record every shard, converter and model family shares.

A record is JSON next to its image in a WebDataset tar (``{key}.json``); this
module turns a decoded dict into a :class:`Record` or raises :class:`RecordError`
naming the sample key, the field and what was expected.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

KNOWN_TASKS = (
    "exist", "count", "attribute", "relation", "compare", "multihop", "mcq", "seg", "vqa",
)


class RecordError(ValueError):
    """A record does not match the canonical schema."""

    def __init__(self, key: str, field_name: str, expected: str, got: Any):
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"sample {key!r}: field {field_name!r} must be {expected}, got {shown}")
        self.key, self.field, self.expected = key, field_name, expected


@dataclass
class Step:
    """One step of the visual rationale: what it says and the box it looks at."""

    text: str
    box: list[float] | None = None


@dataclass
class Turn:
    """An earlier exchange of a conversation: the user's question and the assistant's reply."""

    question: str
    answer: str
    rationale: str | None = None


TURN_FIELDS = ("question", "answer", "rationale")


@dataclass
class Record:
    """One sample; ``turns`` are a conversation's exchanges before ``question`` and ``answer``."""

    question: str
    answer: str
    task: str = "vqa"
    choices: list[str] | None = None
    rationale: str | None = None
    steps: list[Step] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)

    def to_json(self) -> dict:
        """The stored form; single-turn records keep the layout they had before conversations existed."""
        out = asdict(self)
        if not self.turns:
            del out["turns"]
        return out


def is_finite_number(value: Any) -> bool:
    """A number a float can hold: not a bool, NaN, infinity or an int beyond float range."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _check_box(key: str, name: str, box: Any, image_size: tuple[int, int] | None) -> list[float] | None:
    if box is None:
        return None
    expected = "null or [x0, y0, x1, y1] of finite numbers with x0 <= x1 and y0 <= y1"
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_finite_number(v) for v in box):
        raise RecordError(key, name, expected, box)
    x0, y0, x1, y1 = (float(v) for v in box)
    if x0 > x1 or y0 > y1:
        raise RecordError(key, name, expected, box)
    if image_size is not None:
        w, h = image_size
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise RecordError(key, name, f"a box inside the {w}x{h} image", box)
    return [x0, y0, x1, y1]


def _check_turns(key: str, raw: Any) -> list[Turn]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RecordError(key, "turns", "null or a list of {question, answer, rationale} objects", raw)
    expected = "an object with a non-empty string 'question', a string 'answer', a null or string 'rationale'"
    turns = []
    for i, turn in enumerate(raw):
        if (not isinstance(turn, dict) or set(turn) - set(TURN_FIELDS)
                or not isinstance(turn.get("question"), str) or not turn["question"].strip()
                or not isinstance(turn.get("answer"), str)
                or not isinstance(turn.get("rationale"), (str, type(None)))):
            raise RecordError(key, f"turns[{i}]", expected, turn)
        turns.append(Turn(turn["question"], turn["answer"], turn.get("rationale")))
    return turns


def validate_record(obj: Any, key: str = "?", image_size: tuple[int, int] | None = None) -> Record:
    """Check a decoded record and return it as a :class:`Record`.

    ``image_size`` (width, height), when given, also checks that step boxes lie
    inside the image.
    """
    if not isinstance(obj, dict):
        raise RecordError(key, "<record>", "a JSON object", obj)
    for name in ("question", "answer"):
        value = obj.get(name)
        if not isinstance(value, str) or (name == "question" and not value.strip()):
            raise RecordError(key, name, "a non-empty string" if name == "question" else "a string", value)
    task = obj.get("task", "vqa")
    if not isinstance(task, str) or not task:
        raise RecordError(key, "task", f"a non-empty string such as one of {KNOWN_TASKS}", task)
    choices = obj.get("choices")
    if choices is not None and (
        not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)
    ):
        raise RecordError(key, "choices", "null or a non-empty list of strings", choices)
    rationale = obj.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        raise RecordError(key, "rationale", "null or a string", rationale)
    raw_steps = obj.get("steps") or []
    if not isinstance(raw_steps, list):
        raise RecordError(key, "steps", "a list of {text, box} objects", raw_steps)
    steps = []
    for i, step in enumerate(raw_steps):
        if not isinstance(step, dict) or not isinstance(step.get("text"), str):
            raise RecordError(key, f"steps[{i}]", "an object with a string 'text' and a 'box'", step)
        steps.append(Step(step["text"], _check_box(key, f"steps[{i}].box", step.get("box"), image_size)))
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(key, "meta", "a JSON object", meta)
    return Record(
        question=obj["question"], answer=obj["answer"], task=task, choices=choices,
        rationale=rationale, steps=steps, meta=meta, turns=_check_turns(key, obj.get("turns")),
    )
