"""Controlled edits of a rationale in the synthetic benchmark's sentence forms, for faithfulness tests.

A diagnosis teacher-forces an edited rationale's evidence and lets the model write its conclusion: a
model whose answer follows its rationale says :attr:`Edit.implied`, one that ignores it says
:attr:`Edit.original`, the answer of the image. Each edit is one change to the scene graph (an object's
colour or shape, a counted object added or removed, two objects' positions swapped, an object removed,
the steps reordered), written into the rationale the way :mod:`mmreason.data.synth` writes those
steps; ``implied`` is :func:`scene_answer` on the scene changed the same way.

Choices, and why:

* Only the short style's sentence forms are read, and the whole evidence must parse in the forms the
  benchmark uses for this question, with the question's own colour, shape and nouns; otherwise there
  is no edit, since an unread sentence could state the very fact an edit changes.
* Steps are matched to distinct scene objects, in order, by size, colour, shape and position word.
  Only a step whose object is in the scene and whose claim about it holds (a counted object does match
  the question, a "closest" object is the nearest) is edited: ``implied`` is read off the scene, so an
  edit of a false step would imply nothing the text says. Steps left untouched are not checked; where
  a rationale omits or invents objects, the scene's answer can differ from what its text implies, so a
  diagnosis should tell such rationales apart (:func:`mmreason.data.grounding.rationale_is_true`).
* The rng picks what to change (a step; for ``count`` whether to add or remove, which object and
  where) uniformly among the choices that change the text and leave the question an answer, then the
  new value. An edit that leaves no answer (the reference object recoloured away, an mcq count that is
  no option) is never made, since ``implied`` must be an answer.
* ``colour``/``shape`` can move the object in or out of what the question names: an exist step changes
  to the template that now fits (or goes, leaving "no object is ..." when none is left), a count step
  goes and the later ones are renumbered, a compare member moves to the other set or to none with both
  stated numbers kept right. A change that leaves membership alone only renames the object: a control,
  as is the colour of the nearest object in a multihop shape question.
* ``count`` adds one counted object (attributes that fit, at the centre of one of the nine position
  cells, its step in reading order) or removes one, renumbering the later "counts as k" or changing
  compare's "the number of ... is k" along, so that the text stays consistent.
* ``relation`` swaps two objects' positions: a relation question's object and reference (the answer
  flips) or a multihop question's closest and farther objects (the farther one becomes the target).
  Two objects in the same position cell would leave the text as it was, so there is no edit then.
* ``drop`` removes a step's object. Dropping a multihop question's closest object names the nearest
  object left in that step (its own "farther" step goes); no new runner-up is named.
* ``shuffle`` reorders the evidence (never into the original order); "counts as k" keep counting up in
  the new order, since the numbers enumerate rather than describe an object.
* Attribute questions (and mcq built on them) take no edit: their one step locates the target without
  stating the asked attribute, and every change that shows in it removes the question's object.
* Edited sentences take the rationale's case, since generated text comes lower-cased.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from mmreason.data.scene_answers import nearest_object, scene_answer
from mmreason.data.scenes import COLOURS, POSITIONS, SHAPES, SIZES, position_word, side_pixels, sprite
from mmreason.data.synth import TEMPLATES, article, criterion, say
from mmreason.eval.answers import field_of

EDIT_KINDS = ("colour", "shape", "count", "relation", "drop", "shuffle")

# The sentence forms of each task's evidence, and the edits each task admits (module docstring).
_FORMS = {
    "exist": ("s_match", "s_colour_only", "s_shape_only", "s_nothing"),
    "count": ("s_counts_as", "s_none_is"),
    "attribute": ("s_only",),
    "relation": ("s_at",),
    "compare": ("s_member", "s_number"),
    "multihop": ("s_at", "s_closest", "s_farther"),
}
_KINDS = {
    "exist": ("colour", "shape", "drop", "shuffle"),
    "count": ("colour", "shape", "count", "drop", "shuffle"),
    "attribute": (),
    "relation": ("relation", "shuffle"),
    "compare": ("colour", "shape", "count", "drop", "shuffle"),
    "multihop": ("colour", "shape", "relation", "drop", "shuffle"),
}
_VALUES = {"colour": tuple(COLOURS), "shape": SHAPES}
_CONCLUSION = re.compile(r"\bso the answer is\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CELLS = {word: (row, col) for row, words in enumerate(POSITIONS) for col, word in enumerate(words)}
_TRIPLES = tuple((c, s, z) for c in COLOURS for s in SHAPES for z in SIZES)
_CRITERIA = ([("colour", c) for c in COLOURS] + [("size", z) for z in SIZES] + [("shape", s) for s in SHAPES]
             + [("pair", (c, s)) for c in COLOURS for s in SHAPES])
_ONLY_DESCS = ({f"{z} {s}": {"size": z, "shape": s} for z in SIZES for s in SHAPES}
               | {TEMPLATES["d_object"].format(words=f"{z} {c}"): {"size": z, "colour": c}
                  for z in SIZES for c in COLOURS}
               | {f"{c} {s}": {"colour": c, "shape": s} for c in COLOURS for s in SHAPES})


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_FIELDS = {
    "name": f"(?:{_alt(SIZES)}) (?:{_alt(COLOURS)}) (?:{_alt(SHAPES)})",
    "pair": f"(?:{_alt(COLOURS)}) (?:{_alt(SHAPES)})",
    "pos": _alt(_CELLS), "colour": _alt(COLOURS), "shape": _alt(SHAPES), "a": "an?", "k": r"\d+",
    "noun": _alt({criterion(kind, value)[1] for kind, value in _CRITERIA}),
}
_DESCS = {"s_none_is": _alt({criterion(kind, value)[2] for kind, value in _CRITERIA}),
          "s_only": _alt(_ONLY_DESCS)}


def _pattern(form: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", TEMPLATES[form])
    return re.compile("".join(
        f"(?P<{part}>{_DESCS[form] if part == 'desc' else _FIELDS[part]})" if i % 2 else re.escape(part)
        for i, part in enumerate(parts)))


_PATTERNS = {form: _pattern(form) for forms in _FORMS.values() for form in forms}


@dataclass(frozen=True)
class Edit:
    """One controlled edit of a rationale: its evidence, and the answers of the edited and the real scene."""

    kind: str  # one of EDIT_KINDS
    evidence: str  # the edited evidence sentences joined by spaces, without a conclusion
    implied: str  # the answer of the scene edited the same way: what the edited evidence implies
    original: str  # the answer of the unedited scene, the image's
    step: int | None  # the edited step's index (a swap's first step; an added step's); None for shuffle

    @property
    def matters(self) -> bool:
        """Whether the edit changes the answer, so following the rationale and ignoring it differ."""
        return self.implied != self.original


@dataclass
class _Step:
    """An evidence sentence as written, read into its form and fields, and the scene object it is about."""

    text: str
    form: str
    fields: dict[str, str]
    obj: dict | None = None


def split_steps(rationale: str) -> tuple[list[str], str | None]:
    """The evidence sentences and the concluding sentence (the one holding 'so the answer is'), or None.

    Whatever follows the conclusion is not evidence: teacher-forcing stops where the model concludes.
    """
    sentences = [s for s in _SENTENCE_END.split(rationale.strip()) if s]
    for i, sentence in enumerate(sentences):
        if _CONCLUSION.search(sentence):
            return sentences[:i], sentence
    return sentences, None


def _parse_step(sentence: str) -> tuple[str, dict[str, str]] | None:
    """(template name, its fields) of an evidence sentence in one of the benchmark's forms, or None.

    Case, runs of spaces and a space before punctuation (a word-level decode's) do not matter.
    """
    text = re.sub(r"\s+([.,])", r"\1", " ".join(sentence.lower().split()))
    for form, pattern in _PATTERNS.items():
        match = pattern.fullmatch(text)
        if match:
            return form, match.groupdict()
    return None


def applicable_kinds(record) -> tuple[str, ...]:
    """The edit kinds that can apply to this record's task (an mcq's, to the question it is built on)."""
    return _KINDS.get(_evidence_task(record), ())


def _evidence_task(record) -> str | None:
    """The task whose evidence forms a record's rationale uses: its own, or for mcq the base question's."""
    task = field_of(record, "task")
    return (field_of(record, "meta") or {}).get("query", {}).get("base") if task == "mcq" else task


def edit_rationale(rationale: str, record, kind: str, rng: random.Random) -> Edit | None:
    """A controlled edit of ``rationale`` (a model's own text, in the benchmark's sentence forms) of
    ``kind``, or None when this rationale or question offers no such edit (module docstring)."""
    edited = _edit(rationale, record, kind, rng)
    return edited[0] if edited else None


def _edit(rationale: str, record, kind: str, rng: random.Random) -> tuple[Edit, list[dict]] | None:
    """:func:`edit_rationale` and the edited scene graph its ``implied`` answer was read from."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    if kind not in applicable_kinds(record):
        return None
    evidence, _ = split_steps(rationale or "")
    parsed = [_parse_step(sentence) for sentence in evidence]
    if not parsed or None in parsed:
        return None
    steps = [_Step(text, form, fields) for text, (form, fields) in zip(evidence, parsed)]
    task = _evidence_task(record)
    draft = _DRAFTS[task](steps, record)
    if draft.original is None or not all(s.form in _FORMS[task] and draft.fits(s) for s in steps):
        return None
    return draft.edit(kind, rng)


def _subject(fields: dict[str, str]) -> dict[str, str] | None:
    """The attributes a step gives its object (None for a step about no object)."""
    if "pos" not in fields:
        return None
    if "name" in fields:
        return dict(zip(("size", "colour", "shape"), fields["name"].split()))
    if "pair" in fields:
        return dict(zip(("colour", "shape"), fields["pair"].split()))
    return _ONLY_DESCS[fields["desc"]]


def _triple(obj: dict) -> tuple[str, str, str]:
    return obj["colour"], obj["shape"], obj["size"]


def _replaced(scene: list[dict], old: dict, new: dict) -> list[dict]:
    return [new if o is old else o for o in scene]


def _moved(obj: dict, center: list[float]) -> dict:
    """The object with its centre at ``center``, its box the same size around it."""
    (x0, y0, x1, y1), (cx, cy) = obj["box"], center
    w, h = x1 - x0, y1 - y0
    return {**obj, "center": [cx, cy], "box": [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]}


def _placed(triple: tuple[str, str, str], pos: str, side: int) -> dict:
    """A new object at the centre of the position cell ``pos``."""
    colour, shape, size = triple
    h, w = sprite(shape, side_pixels(size, side)).shape
    row, col = _CELLS[pos]
    box = [0, 0, w, h]
    return _moved({"shape": shape, "colour": colour, "size": size, "box": box},
                  [(col + 0.5) * side / 3, (row + 0.5) * side / 3])


_Built = tuple[list[dict], list[_Step] | None, int | None]  # edited scene, evidence, index of the edited step


class _Draft:
    """A rationale's evidence read into steps matched to the scene: the edits common to every task.

    A task's subclass says which words its question allows (``allowed``) and, for the kinds it admits,
    when a step's claim holds, how the evidence reads after a step's object changed or went, and which
    count and relation edits there are.
    """

    allowed: dict[str, set[str]]

    def __init__(self, steps: list[_Step], record):
        meta = field_of(record, "meta")
        self.record, self.steps, self.query = record, steps, meta["query"]
        self.scene, self.side = meta["scene"], meta["image_size"][0]
        self.texts = [s.text for s in steps]
        self.lower = steps[0].text[:1].islower()
        self.original = scene_answer(record, self.scene)
        taken: list[dict] = []
        for step in steps:
            subject = _subject(step.fields)
            if subject is None:
                continue
            step.obj = next((o for o in self.scene if not any(o is t for t in taken)
                             and all(o[k] == v for k, v in subject.items())
                             and position_word(o, self.side) == step.fields["pos"]), None)
            if step.obj is not None:
                taken.append(step.obj)

    def fits(self, step: _Step) -> bool:
        """Whether the step speaks of what the question asks (its colour, shape, nouns)."""
        return all(step.fields[f] in values for f, values in self.allowed.items() if f in step.fields)

    def editable(self, step: _Step) -> bool:
        """Whether an edit may change the step: its object is in the scene and its claim about it holds."""
        raise NotImplementedError

    def restyle(self, items: list[_Step], i: int, obj: dict) -> list[_Step] | None:
        """The evidence once the object of step ``i`` has become ``obj`` (a new colour or shape)."""
        raise NotImplementedError

    def dropped(self, items: list[_Step], i: int, scene: list[dict]) -> list[_Step] | None:
        """The evidence once the object of step ``i`` is gone from the scene (now ``scene``)."""
        raise NotImplementedError

    def count_groups(self) -> list[list[Callable[[], _Built]]]:
        """The ``count`` edits, grouped by what they change (the rng picks a group, then an edit)."""
        raise NotImplementedError

    def relation_groups(self) -> list[list[Callable[[], _Built]]]:
        """The ``relation`` edits, grouped as :meth:`count_groups`."""
        raise NotImplementedError

    def renumber(self, items: list[_Step]) -> list[_Step]:
        """Reordered evidence with any enumeration counting up again."""
        return items

    def step(self, form: str, obj: dict | None = None, **fields) -> _Step:
        """A sentence of ``form`` written as the benchmark writes it, in the rationale's case."""
        text = say(form, **fields)
        if self.lower:
            text = text[0].lower() + text[1:]
        return _Step(text, form, {k: str(v) for k, v in fields.items()}, obj)

    def seen(self, obj: dict) -> dict[str, str]:
        name = " ".join((obj["size"], obj["colour"], obj["shape"]))
        return {"name": name, "pos": position_word(obj, self.side)}

    def key(self, step_or_obj: _Step | dict) -> tuple[float, float]:
        """Reading order (top to bottom, left to right) of an object, or of a step by its object or cell."""
        obj = step_or_obj.obj if isinstance(step_or_obj, _Step) else step_or_obj
        if obj is None:
            row, col = _CELLS[step_or_obj.fields["pos"]]
            return (row + 0.5) * self.side / 3, (col + 0.5) * self.side / 3
        return obj["center"][1], obj["center"][0]

    def edit(self, kind: str, rng: random.Random) -> tuple[Edit, list[dict]] | None:
        """A random edit of ``kind`` among those that change the text and leave the question an answer:
        a group (a step, or what a count or relation edit changes) first, then a value within it."""
        if kind == "shuffle":
            return self.shuffle(rng)
        if kind in _VALUES:
            groups = [[partial(self.restyled, i, kind, v) for v in _VALUES[kind] if v != s.obj[kind]]
                      for i, s in enumerate(self.steps) if self.editable(s)]
        elif kind == "drop":
            groups = [[partial(self.drop, i)] for i, s in enumerate(self.steps) if self.editable(s)]
        elif kind == "count":
            groups = self.count_groups()
        else:
            groups = self.relation_groups()
        groups = [group for group in groups if group]
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
            for build in group:
                done = self.finish(kind, *build())
                if done:
                    return done
        return None

    def finish(self, kind: str, scene: list[dict], items: list[_Step] | None, index: int | None
               ) -> tuple[Edit, list[dict]] | None:
        """The edit, unless it left the text as it was or the question without an answer."""
        if items is None or [s.text for s in items] == self.texts:
            return None
        implied = scene_answer(self.record, scene)
        if implied is None:
            return None
        return Edit(kind, " ".join(s.text for s in items), implied, self.original, index), scene

    def restyled(self, i: int, attr: str, value: str) -> _Built:
        old = self.steps[i].obj
        new = {**old, attr: value}
        return _replaced(self.scene, old, new), self.restyle(list(self.steps), i, new), i

    def drop(self, i: int) -> _Built:
        scene = [o for o in self.scene if o is not self.steps[i].obj]
        return scene, self.dropped(list(self.steps), i, scene), i

    def shuffle(self, rng: random.Random) -> tuple[Edit, list[dict]] | None:
        order = list(range(len(self.steps)))
        if len(order) < 2:
            return None
        while order == sorted(order):
            rng.shuffle(order)
        return self.finish("shuffle", self.scene, self.renumber([self.steps[i] for i in order]), None)

    def swapped(self, a: int, b: int, write: Callable[[list[_Step], dict, dict], None]) -> _Built:
        """Steps ``a`` and ``b``'s objects trade places; ``write`` rewrites the evidence for them."""
        old_a, old_b = self.steps[a].obj, self.steps[b].obj
        new_a, new_b = _moved(old_a, old_b["center"]), _moved(old_b, old_a["center"])
        items = list(self.steps)
        write(items, new_a, new_b)
        return _replaced(_replaced(self.scene, old_a, new_a), old_b, new_b), items, a


class _Exist(_Draft):
    """Is there a {colour} {shape}? Every object sharing the colour or the shape gets a step."""

    def __init__(self, steps, record):
        super().__init__(steps, record)
        self.colour, self.shape = self.query["colour"], self.query["shape"]
        self.allowed = {"pair": {f"{self.colour} {self.shape}"}, "colour": {self.colour},
                        "shape": {self.shape}}

    def written(self, obj: dict) -> _Step | None:
        """The step the benchmark writes for ``obj``: None when it shares neither colour nor shape."""
        colour, shape, seen = self.colour, self.shape, self.seen(obj)
        if (obj["colour"], obj["shape"]) == (colour, shape):
            return self.step("s_match", obj, **seen, a=article(colour), pair=f"{colour} {shape}")
        if obj["colour"] == colour or obj["shape"] == shape:
            form = "s_colour_only" if obj["colour"] == colour else "s_shape_only"
            return self.step(form, obj, **seen, colour=colour, a=article(shape), shape=shape)
        return None

    def editable(self, step):
        written = self.written(step.obj) if step.obj is not None else None
        return written is not None and written.form == step.form

    def filled(self, items: list[_Step]) -> list[_Step]:
        return items or [self.step("s_nothing", colour=self.colour, a=article(self.shape), shape=self.shape)]

    def restyle(self, items, i, obj):
        written = self.written(obj)
        items[i:i + 1] = [written] if written else []
        return self.filled(items)

    def dropped(self, items, i, scene):
        del items[i]
        return self.filled(items)


class _Count(_Draft):
    """How many {noun}? Each counted object "counts as k", k = 1, 2, ... in reading order."""

    def __init__(self, steps, record):
        super().__init__(steps, record)
        self.matches, self.noun, self.desc = criterion(self.query["form"], self.query["value"])
        self.allowed = {"desc": {self.desc}}

    def editable(self, step):
        return step.obj is not None and step.form == "s_counts_as" and self.matches(_triple(step.obj))

    def counted(self, obj: dict, k: int) -> _Step:
        return self.step("s_counts_as", obj, **self.seen(obj), k=k)

    def shifted(self, items: list[_Step], start: int, delta: int) -> list[_Step] | None:
        """The "counts as k" from ``start`` on with k + delta; None if a k would fall below 1."""
        out = list(items)
        for j in range(start, len(out)):
            if out[j].form == "s_counts_as":
                k = int(out[j].fields["k"]) + delta
                if k < 1:
                    return None
                out[j] = self.step("s_counts_as", out[j].obj, **{**out[j].fields, "k": k})
        return out

    def removed(self, items: list[_Step], i: int) -> list[_Step] | None:
        del items[i]
        items = self.shifted(items, i, -1)
        if items is not None and not any(s.form in _FORMS["count"] for s in items):
            items.insert(i, self.step("s_none_is", desc=self.desc))
        return items

    def restyle(self, items, i, obj):
        if self.matches(_triple(obj)):
            items[i] = self.counted(obj, int(items[i].fields["k"]))
            return items
        return self.removed(items, i)

    def dropped(self, items, i, scene):
        return self.removed(items, i)

    def grown(self, triple: tuple[str, str, str], pos: str) -> _Built:
        """One more counted object, at the centre of cell ``pos``, its step in reading order."""
        obj = _placed(triple, pos, self.side)
        none = [j for j, s in enumerate(self.steps) if s.form == "s_none_is"]
        items = [s for s in self.steps if s.form != "s_none_is"]
        counted = [j for j, s in enumerate(items) if s.form == "s_counts_as"]
        later = [j for j in counted if self.key(items[j]) > self.key(obj)]
        if later:
            at, k = later[0], int(items[later[0]].fields["k"])
        elif counted:
            at, k = counted[-1] + 1, int(items[counted[-1]].fields["k"]) + 1
        else:
            at, k = (none[0] if none else len(items)), 1
        items = self.shifted(items, at, 1)
        items.insert(at, self.counted(obj, k))
        return self.scene + [obj], items, at

    def count_groups(self):
        adds = [partial(self.grown, t, pos) for t in _TRIPLES if self.matches(t) for pos in _CELLS]
        return [adds, [partial(self.drop, i) for i, s in enumerate(self.steps) if self.editable(s)]]

    def renumber(self, items):
        ks = iter(sorted(int(s.fields["k"]) for s in items if s.form == "s_counts_as"))
        return [self.step(s.form, s.obj, **{**s.fields, "k": next(ks)}) if s.form == "s_counts_as" else s
                for s in items]


class _Compare(_Draft):
    """Are there more {noun} than {noun2}? Each set's members, then "the number of {noun} is k"."""

    def __init__(self, steps, record):
        super().__init__(steps, record)
        form = self.query["form"]
        self.sets = [criterion(form, self.query["first"])[:2], criterion(form, self.query["second"])[:2]]
        self.allowed = {"noun": {noun for _, noun in self.sets}}

    def side_of(self, step: _Step) -> int:
        return 0 if step.fields["noun"] == self.sets[0][1] else 1

    def member_of(self, obj: dict) -> int | None:
        return next((side for side, (matches, _) in enumerate(self.sets) if matches(_triple(obj))), None)

    def editable(self, step):
        return (step.obj is not None and step.form == "s_member"
                and self.member_of(step.obj) == self.side_of(step))

    def member(self, obj: dict, side: int) -> _Step:
        return self.step("s_member", obj, **self.seen(obj), noun=self.sets[side][1])

    def renumbered(self, items: list[_Step], side: int, delta: int) -> list[_Step] | None:
        """The set's stated number changed by ``delta`` (if the rationale states it); None below 0."""
        at = next((j for j, s in enumerate(items) if s.form == "s_number" and self.side_of(s) == side), None)
        if at is not None:
            k = int(items[at].fields["k"]) + delta
            if k < 0:
                return None
            items[at] = self.step("s_number", noun=self.sets[side][1], k=k)
        return items

    def removed(self, items: list[_Step], i: int) -> list[_Step] | None:
        side = self.side_of(items[i])
        del items[i]
        return self.renumbered(items, side, -1)

    def added(self, items: list[_Step], obj: dict, side: int) -> tuple[list[_Step], int] | None:
        """A member step for ``obj`` in reading order among its set's (before its number without any)."""
        members = [j for j, s in enumerate(items) if s.form == "s_member" and self.side_of(s) == side]
        number = [j for j, s in enumerate(items) if s.form == "s_number" and self.side_of(s) == side]
        later = [j for j in members if self.key(items[j]) > self.key(obj)]
        if later:
            at = later[0]
        elif members or number:
            at = members[-1] + 1 if members else number[0]
        else:
            return None
        items.insert(at, self.member(obj, side))
        return self.renumbered(items, side, 1), at

    def restyle(self, items, i, obj):
        side, now = self.side_of(items[i]), self.member_of(obj)
        if now == side:
            items[i] = self.member(obj, side)
            return items
        items = self.removed(items, i)
        if items is None or now is None:
            return items
        added = self.added(items, obj, now)
        return added[0] if added else None

    def dropped(self, items, i, scene):
        return self.removed(items, i)

    def grown(self, triple: tuple[str, str, str], pos: str, side: int) -> _Built:
        obj = _placed(triple, pos, self.side)
        added = self.added(list(self.steps), obj, side)
        return self.scene + [obj], *(added or (None, None))

    def count_groups(self):
        adds = [[partial(self.grown, t, pos, side) for t in _TRIPLES if matches(t) for pos in _CELLS]
                for side, (matches, _) in enumerate(self.sets)]
        removes = [[partial(self.drop, i) for i, s in enumerate(self.steps)
                    if self.editable(s) and self.side_of(s) == side] for side in (0, 1)]
        return adds + removes


class _Relation(_Draft):
    """Where is the {pair} relative to the {pair2}? "The {pair} is at the {pos}" for each of the two."""

    def __init__(self, steps, record):
        super().__init__(steps, record)
        self.pairs = [" ".join(self.query["object"]), " ".join(self.query["reference"])]
        self.allowed = {"pair": set(self.pairs)}

    def relation_groups(self):
        first = [next((i for i, s in enumerate(self.steps) if s.obj is not None and s.fields["pair"] == pair),
                      None) for pair in self.pairs]
        if None in first:
            return []
        a, b = first

        def write(items, new_a, new_b):
            for i, obj in ((a, new_a), (b, new_b)):
                pos = position_word(obj, self.side)
                items[i] = self.step("s_at", obj, pair=items[i].fields["pair"], pos=pos)

        return [[partial(self.swapped, a, b, write)]]


class _Multihop(_Draft):
    """What colour/shape is the object closest to the {pair}? Where the reference is, the closest
    object, and the runner-up as "farther away"."""

    def __init__(self, steps, record):
        super().__init__(steps, record)
        self.ref = " ".join(self.query["reference"])
        self.allowed = {"pair": {self.ref}}
        self.target = nearest_object(self.scene, self.query["reference"])

    def editable(self, step):
        """Not the reference's step: changing or removing the reference leaves the question no answer."""
        if step.obj is None or step.form == "s_at":
            return False
        if step.form == "s_closest":
            return step.obj is self.target
        return step.obj is not self.target and f"{step.obj['colour']} {step.obj['shape']}" != self.ref

    def restyle(self, items, i, obj):
        items[i] = self.step(items[i].form, obj, **self.seen(obj))
        return items

    def dropped(self, items, i, scene):
        if items[i].form == "s_farther":
            del items[i]
            return items
        nearest = nearest_object(scene, self.query["reference"])
        if nearest is None:
            return None
        items[i] = self.step("s_closest", nearest, **self.seen(nearest))
        return [s for s in items if not (s.form == "s_farther" and s.obj is nearest)]

    def relation_groups(self):
        closest = [i for i, s in enumerate(self.steps) if s.form == "s_closest" and self.editable(s)]
        farther = [i for i, s in enumerate(self.steps) if s.form == "s_farther" and self.editable(s)]

        def write(c, f, items, new_c, new_f):
            items[c] = self.step("s_closest", new_f, **self.seen(new_f))
            items[f] = self.step("s_farther", new_c, **self.seen(new_c))

        return [[partial(self.swapped, c, f, partial(write, c, f)) for c in closest for f in farther]]


_DRAFTS = {"exist": _Exist, "count": _Count, "relation": _Relation, "compare": _Compare,
           "multihop": _Multihop}
