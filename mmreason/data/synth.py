"""A deterministic procedural visual-reasoning benchmark with grounded rationales.

Every sample is a function of ``(config, split, index)`` alone: a scene of
``min_objects``–``max_objects`` flat shapes (:mod:`mmreason.data.scenes`), a
question, its answer, a rationale whose steps carry the box of the object they
inspect, and for ``seg`` the target mask. Tasks take turns by index
(round-robin over ``config.tasks``).

Answers are balanced by construction: each question first draws its answer
uniformly (yes/no, a count 0..max_objects, a colour, shape or size word, a
direction, an option letter, a target object) and then builds the scene that
makes it true, so a model cannot score by guessing the majority answer.

Answer formats: ``exist``/``compare`` "yes"/"no"; ``count`` a digit;
``attribute`` a colour, shape or size word; ``relation`` "left", "right",
"above" or "below"; ``multihop`` a colour or shape word; ``mcq`` a letter
"A".."D" with four options in ``choices``; ``seg`` the target object named as
"the small blue circle", its mask returned beside the record.

Held-out compositions: :data:`HELDOUT_PAIRS` are six (colour, shape) pairs.
Train, val and test questions never name one of them, and an object a question
singles out (the target of attribute, multihop and seg questions) never is one;
such objects may still appear in any scene. Every heldout question names at
least one held-out pair, so heldout uses only question forms that name a pair:
exist, count ("how many red diamonds"), attribute ("what size is the red
diamond"), relation, compare ("more red diamonds than blue squares"),
multihop and seg by reference, and mcq built on count or multihop.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image

from mmreason.data import scenes
from mmreason.data.scenes import COLOURS, PLURALS, SHAPES, SIZES
from mmreason.data.schema import validate_record

log = logging.getLogger(__name__)

ALL_TASKS = ("exist", "count", "attribute", "relation", "compare", "multihop", "mcq", "seg")
SPLITS = ("train", "val", "test", "heldout")
RATIONALE_STYLES = ("short", "long")
HELDOUT_PAIRS = (
    ("red", "diamond"), ("green", "triangle"), ("blue", "cross"),
    ("yellow", "circle"), ("purple", "square"), ("orange", "triangle"),
)
LETTERS = "ABCD"

_COLOURS = tuple(COLOURS)
_PAIRS = tuple((c, s) for c in _COLOURS for s in SHAPES)
_OPEN_PAIRS = tuple(p for p in _PAIRS if p not in HELDOUT_PAIRS)
_ATTRS = tuple((c, s, z) for c in _COLOURS for s in SHAPES for z in SIZES)
_RELATION = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_BACKGROUND = {False: "plain", True: "noisy"}
_YES_NO = {True: "yes", False: "no"}
# The nearest object is at least this much closer than the runner-up, so "closest" is clear-cut.
_NEAR_RATIO = 1.3
_TOKEN = re.compile(r"\w+|[^\w\s]")

# Every sentence the generator emits comes from here, so vocabulary() can list its words.
_T = {
    "q_exist": "is there {a} {pair}?",
    "q_count": "how many {noun} are there?",
    "q_colour": "what colour is the {size} {shape}?",
    "q_shape": "what shape is the {size} {colour} object?",
    "q_size": "what size is the {pair}?",
    "q_relation": "where is the {pair} relative to the {pair2}?",
    "q_compare": "are there more {noun} than {noun2}?",
    "q_near_colour": "what colour is the shape closest to the {pair}?",
    "q_near_shape": "what shape is the object closest to the {pair}?",
    "q_seg_pair": "segment the {pair}.",
    "q_seg_colour": "segment the other shape with the same colour as the {size} {shape}.",
    "q_seg_near": "segment the shape closest to the {pair}.",
    "q_seg_shape": "segment the other object with the same shape as the {pair}.",
    "n_shapes": "{word} shapes",
    "d_object": "{words} object",
    "s_match": "the {name} at the {pos} is {a} {pair}.",
    "s_colour_only": "the {name} at the {pos} is {colour} but not {a} {shape}.",
    "s_shape_only": "the {name} at the {pos} is {a} {shape} but not {colour}.",
    "s_nothing": "no object is {colour} or {a} {shape}.",
    "s_counts_as": "the {name} at the {pos} counts as {k}.",
    "s_none_is": "none of the objects is {desc}.",
    "s_member": "the {name} at the {pos} is one of the {noun}.",
    "s_number": "the number of {noun} is {k}.",
    "s_only": "the only {desc} is at the {pos}.",
    "s_at": "the {pair} is at the {pos}.",
    "s_closest": "the closest object to it is the {name} at the {pos}.",
    "s_farther": "the {name} at the {pos} is farther away.",
    "s_ref_colour": "the {size} {shape} is {colour} and is at the {pos}.",
    "s_other": "the only other {desc} is the {name} at the {pos}.",
    "r_there_is": "there is {a} {pair}",
    "r_there_is_no": "there is no {pair}",
    "r_number": "the number of {noun} is {k}",
    "r_it_is": "it is {desc}",
    "r_relation": "the {pair} is mostly {rel} the {pair2}",
    "r_more": "{k} is more than {k2}",
    "r_not_more": "{k} is not more than {k2}",
    "r_closest": "the closest object is {desc}",
    "r_this_is": "this is the {name}",
    "r_option": "{reason}, which is option {letter}",
    "answer_object": "the {name}",
    "final": "{reason}, so the answer is {answer}.",
    "l_intro": "the image shows {k} objects on a {background} background, and no two of them overlap.",
    "l_plan": "first every object is described with where it is, then these objects are used to answer the question.",
    "l_object": "object {k} is {a} {name} at the {pos}.",
    "l_relative": "it is {rel} object {k}.",
    "l_sizes": "counting by size gives {k} small and {k2} large.",
    "l_question": "now the question: {question}",
    "l_check": "checking these steps against the object descriptions above confirms that the answer is {answer}.",
}


def _say(template: str, /, **fields) -> str:
    """A template filled in, as a sentence (capitalised)."""
    text = _T[template].format(**fields)
    return text[0].upper() + text[1:]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _name(obj: dict) -> str:
    return f"{obj['size']} {obj['colour']} {obj['shape']}"


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


# The sentence forms, public for code that parses or rewrites rationales in them (mmreason.diagnostics).
TEMPLATES = MappingProxyType(_T)


def say(template: str, /, **fields) -> str:
    """A template of :data:`TEMPLATES` filled in as the generator writes it (capitalised)."""
    return _say(template, **fields)


def article(word: str) -> str:
    """The article ("a" or "an") the generator puts before ``word``."""
    return _a(word)


def criterion(kind: str, value) -> tuple[Callable[[tuple], bool], str, str]:
    """(matches a (colour, shape, size) triple, plural noun, singular description) of a count or
    compare question's ``meta["query"]`` form and value; a pair may come as a JSON list."""
    return _predicate(kind, tuple(value) if kind == "pair" else value)


@dataclass
class SynthConfig:
    """What the benchmark generates; together with split and index it fixes every sample."""

    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 7
    tasks: tuple[str, ...] = ALL_TASKS
    rationale_style: str = "short"
    noise: bool = False
    seed: int = 0

    def __post_init__(self):
        self.tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"SynthConfig.tasks has unknown task(s) {unknown}; expected a non-empty "
                             f"selection of {ALL_TASKS}")
        if self.rationale_style not in RATIONALE_STYLES:
            raise ValueError(f"SynthConfig.rationale_style is {self.rationale_style!r}; "
                             f"expected one of {RATIONALE_STYLES}")
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"SynthConfig.image_size is {self.image_size!r}; expected an integer >= 32")
        if not 2 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(f"SynthConfig has min_objects={self.min_objects}, max_objects="
                             f"{self.max_objects}; expected 2 <= min_objects <= max_objects <= 9")


@dataclass
class _Question:
    question: str
    answer: str
    scene: list[dict]
    steps: list[tuple[str, dict | None]]
    reason: str
    query: dict
    target: dict | None = None
    choices: list[str] | None = None


class _Ctx:
    """The random choices of one sample, under its split's held-out rule."""

    def __init__(self, config: SynthConfig, split: str, rng: random.Random):
        self.config, self.rng = config, rng
        self.heldout = split == "heldout"

    def pair(self) -> tuple[str, str]:
        return self.rng.choice(HELDOUT_PAIRS if self.heldout else _OPEN_PAIRS)

    def two_pairs(self) -> tuple[tuple[str, str], tuple[str, str]]:
        if not self.heldout:
            first, second = self.rng.sample(_OPEN_PAIRS, 2)
            return first, second
        held = self.rng.choice(HELDOUT_PAIRS)
        other = self.rng.choice([p for p in _PAIRS if p != held])
        return (held, other) if self.rng.random() < 0.5 else (other, held)

    def may_single_out(self, colour: str, shape: str) -> bool:
        return self.heldout or (colour, shape) not in HELDOUT_PAIRS

    def attrs(self, ok: Callable[[tuple], bool]) -> tuple[str, str, str]:
        return self.rng.choice([a for a in _ATTRS if ok(a)])

    def near_miss(self, colour: str, shape: str) -> tuple[str, str, str]:
        """An object sharing exactly one of colour and shape, so the pair must be read whole."""
        return self.attrs(lambda a: (a[0] == colour) != (a[1] == shape))

    def n_objects(self, at_least: int) -> int:
        return self.rng.randint(max(self.config.min_objects, at_least), self.config.max_objects)

    def fill(self, specs: list, n: int, ok: Callable[[tuple], bool]) -> list:
        return specs + [self.attrs(ok) for _ in range(n - len(specs))]

    def place(self, specs: list, constraint=None, fixed: int = 0) -> list[dict]:
        return scenes.place_objects(specs, self.config.image_size, self.rng, constraint, fixed)

    def seen(self, obj: dict) -> dict:
        return {"name": _name(obj), "pos": scenes.position_word(obj, self.config.image_size)}


def _exist(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    colour, shape = ctx.pair()
    yes = rng.random() < 0.5
    specs = [(colour, shape, rng.choice(SIZES))] if yes else []
    if rng.random() < 0.5:
        specs.append(ctx.near_miss(colour, shape))
    scene = ctx.place(ctx.fill(specs, ctx.n_objects(2), lambda a: a[:2] != (colour, shape)))
    pair, steps = f"{colour} {shape}", []
    for obj in scenes.reading_order(o for o in scene if o["colour"] == colour or o["shape"] == shape):
        if obj["colour"] == colour and obj["shape"] == shape:
            text = _say("s_match", **ctx.seen(obj), a=_a(colour), pair=pair)
        elif obj["colour"] == colour:
            text = _say("s_colour_only", **ctx.seen(obj), colour=colour, a=_a(shape), shape=shape)
        else:
            text = _say("s_shape_only", **ctx.seen(obj), colour=colour, a=_a(shape), shape=shape)
        steps.append((text, obj))
    if not steps:
        steps.append((_say("s_nothing", colour=colour, a=_a(shape), shape=shape), None))
    reason = _T["r_there_is"].format(a=_a(colour), pair=pair) if yes else _T["r_there_is_no"].format(pair=pair)
    return _Question(_say("q_exist", a=_a(colour), pair=pair), _YES_NO[yes], scene, steps, reason,
                     {"form": "pair", "colour": colour, "shape": shape})


def _predicate(kind: str, value) -> tuple[Callable[[tuple], bool], str, str]:
    """(matches, plural noun, singular description) of a count/compare criterion."""
    if kind == "colour":
        return (lambda a: a[0] == value), _T["n_shapes"].format(word=value), value
    if kind == "size":
        return (lambda a: a[2] == value), _T["n_shapes"].format(word=value), value
    if kind == "shape":
        return (lambda a: a[1] == value), PLURALS[value], f"{_a(value)} {value}"
    colour, shape = value
    return (lambda a: a[:2] == value), f"{colour} {PLURALS[shape]}", f"{_a(colour)} {colour} {shape}"


def _criterion(ctx: _Ctx) -> tuple[str, object]:
    """A count/compare criterion; held-out questions must name a pair."""
    kind = "pair" if ctx.heldout else ctx.rng.choice(("colour", "shape", "size", "pair"))
    return kind, {"colour": _COLOURS, "shape": SHAPES, "size": SIZES}.get(kind)


def _members(scene: list[dict], matches) -> list[dict]:
    return scenes.reading_order(o for o in scene if matches((o["colour"], o["shape"], o["size"])))


def _count(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    k = rng.randint(0, ctx.config.max_objects)
    kind, values = _criterion(ctx)
    value = ctx.pair() if kind == "pair" else rng.choice(values)
    matches, noun, desc = _predicate(kind, value)
    specs = [ctx.attrs(matches) for _ in range(k)]
    scene = ctx.place(ctx.fill(specs, ctx.n_objects(k), lambda a: not matches(a)))
    members = _members(scene, matches)
    steps = [(_say("s_counts_as", **ctx.seen(o), k=i), o) for i, o in enumerate(members, 1)]
    if not members:
        steps.append((_say("s_none_is", desc=desc), None))
    return _Question(_say("q_count", noun=noun), str(k), scene, steps,
                     _T["r_number"].format(noun=noun, k=k), {"form": kind, "value": list(value) if kind == "pair" else value})


def _attribute(ctx: _Ctx, answer: str | None = None) -> _Question:
    rng = ctx.rng
    if answer is None:
        answer = rng.choice(SIZES if ctx.heldout else _COLOURS + SHAPES + SIZES)
    size = answer if answer in SIZES else rng.choice(SIZES)
    if answer in COLOURS:
        colour = answer
        shape = rng.choice([s for s in SHAPES if ctx.may_single_out(colour, s)])
        key, near = (lambda a: a[1:] == (shape, size)), (lambda a: a[1] == shape and a[2] != size)
        question, desc = _say("q_colour", size=size, shape=shape), f"{size} {shape}"
        form, said = "colour", colour
    elif answer in SHAPES:
        shape = answer
        colour = rng.choice([c for c in _COLOURS if ctx.may_single_out(c, shape)])
        key, near = (lambda a: (a[0], a[2]) == (colour, size)), (lambda a: a[0] == colour and a[2] != size)
        question = _say("q_shape", size=size, colour=colour)
        desc, form, said = _T["d_object"].format(words=f"{size} {colour}"), "shape", f"{_a(shape)} {shape}"
    else:
        colour, shape = ctx.pair()
        key, near = (lambda a: a[:2] == (colour, shape)), (lambda a: (a[0] == colour) != (a[1] == shape))
        question, desc = _say("q_size", pair=f"{colour} {shape}"), f"{colour} {shape}"
        form, said = "size", size
    specs = [(colour, shape, size)]
    if rng.random() < 0.5:
        specs.append(ctx.attrs(near))
    scene = ctx.place(ctx.fill(specs, ctx.n_objects(2), lambda a: not key(a)))
    target = scene[0]
    steps = [(_say("s_only", desc=desc, pos=ctx.seen(target)["pos"]), target)]
    return _Question(question, answer, scene, steps, _T["r_it_is"].format(desc=said),
                     {"form": form, "colour": colour, "shape": shape, "size": size}, target=target)


def _relation(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    where = rng.choice(scenes.DIRECTIONS)
    first, second = ctx.two_pairs()
    specs = [(*second, rng.choice(SIZES)), (*first, rng.choice(SIZES))]
    specs = ctx.fill(specs, ctx.n_objects(2), lambda a: a[:2] not in (first, second))
    reach = ctx.config.image_size / 8

    def constraint(i, cx, cy, placed):
        if i != 1:
            return None
        dx, dy = cx - placed[0]["center"][0], cy - placed[0]["center"][1]
        along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[where]
        return (along >= reach) & (along >= 2 * np.abs(across))

    scene = ctx.place(specs, constraint, fixed=2)
    ref, obj = scene[0], scene[1]
    p1, p2 = " ".join(first), " ".join(second)
    steps = [(_say("s_at", pair=p1, pos=ctx.seen(obj)["pos"]), obj),
             (_say("s_at", pair=p2, pos=ctx.seen(ref)["pos"]), ref)]
    reason = _T["r_relation"].format(pair=p1, rel=_RELATION[where], pair2=p2)
    return _Question(_say("q_relation", pair=p1, pair2=p2), where, scene, steps, reason,
                     {"form": "pairs", "object": list(first), "reference": list(second)})


def _compare(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    yes = rng.random() < 0.5
    kind, values = _criterion(ctx)
    x, y = ctx.two_pairs() if kind == "pair" else rng.sample(values, 2)
    n = ctx.n_objects(2)
    splits = [(a, b) for a in range(n + 1) for b in range(n + 1 - a)
              if (a > b) == yes and (kind != "size" or a + b == n)]
    a, b = rng.choice(splits)
    (mx, noun_x, _), (my, noun_y, _) = _predicate(kind, x), _predicate(kind, y)
    specs = [ctx.attrs(mx) for _ in range(a)] + [ctx.attrs(my) for _ in range(b)]
    scene = ctx.place(ctx.fill(specs, n, lambda t: not mx(t) and not my(t)))
    steps = []
    for matches, noun, k in ((mx, noun_x, a), (my, noun_y, b)):
        steps += [(_say("s_member", **ctx.seen(o), noun=noun), o) for o in _members(scene, matches)]
        steps.append((_say("s_number", noun=noun, k=k), None))
    reason = _T["r_more" if yes else "r_not_more"].format(k=a, k2=b)
    return _Question(_say("q_compare", noun=noun_x, noun2=noun_y), _YES_NO[yes], scene, steps,
                     reason, {"form": kind, "first": list(x) if kind == "pair" else x,
                      "second": list(y) if kind == "pair" else y})


def _nearest_scene(ctx: _Ctx, ref: tuple, target: tuple) -> tuple[list[dict], list]:
    """A scene whose object nearest to ``ref`` is ``target``, by a clear margin; ref is unique."""
    specs = ctx.fill([ref, target], ctx.n_objects(2), lambda a: a[:2] != ref[:2])
    reach = 0.4 * ctx.config.image_size

    def constraint(i, cx, cy, placed):
        if i == 0:
            return None
        rx, ry = placed[0]["center"]
        d = np.hypot(cx - rx, cy - ry)
        return d <= reach if i == 1 else d >= _NEAR_RATIO * scenes.distance(placed[1], placed[0])

    scene = ctx.place(specs, constraint, fixed=2)
    ref_obj, target_obj = scene[0], scene[1]
    steps = [(_say("s_at", pair=f"{ref[0]} {ref[1]}", pos=ctx.seen(ref_obj)["pos"]), ref_obj),
             (_say("s_closest", **ctx.seen(target_obj)), target_obj)]
    if len(scene) > 2:
        runner = min(scene[2:], key=lambda o: scenes.distance(o, ref_obj))
        steps.append((_say("s_farther", **ctx.seen(runner)), runner))
    return scene, steps


def _multihop(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    answer = rng.choice(_COLOURS + SHAPES)
    ref = ctx.pair()
    if answer in COLOURS:
        colour, shape = answer, rng.choice(
            [s for s in SHAPES if (answer, s) != ref and ctx.may_single_out(answer, s)])
        question, said, form = _say("q_near_colour", pair=" ".join(ref)), answer, "colour"
    else:
        shape, colour = answer, rng.choice(
            [c for c in _COLOURS if (c, answer) != ref and ctx.may_single_out(c, answer)])
        question, said, form = _say("q_near_shape", pair=" ".join(ref)), f"{_a(answer)} {answer}", "shape"
    scene, steps = _nearest_scene(ctx, (*ref, rng.choice(SIZES)), (colour, shape, rng.choice(SIZES)))
    return _Question(question, answer, scene, steps, _T["r_closest"].format(desc=said),
                     {"form": form, "reference": list(ref)}, target=scene[1])


def _mcq(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    base = rng.choice(("count", "multihop") if ctx.heldout else ("attribute", "count", "multihop"))
    if base == "attribute":
        q = _attribute(ctx, rng.choice(_COLOURS + SHAPES))
        pool = _COLOURS if q.answer in COLOURS else SHAPES
    elif base == "count":
        q, pool = _count(ctx), tuple(str(k) for k in range(ctx.config.max_objects + 1))
    else:
        q = _multihop(ctx)
        pool = _COLOURS if q.answer in COLOURS else SHAPES
    n_options = min(len(LETTERS), len(pool))
    choices = rng.sample([p for p in pool if p != q.answer], n_options - 1)
    correct = rng.randrange(n_options)
    choices.insert(correct, q.answer)
    letter = LETTERS[correct]
    q.query = {**q.query, "base": base, "option": q.answer}
    q.reason = _T["r_option"].format(reason=q.reason, letter=letter)
    q.answer, q.choices = letter, choices
    return q


def _seg(ctx: _Ctx) -> _Question:
    rng = ctx.rng
    form = rng.choice(("pair", "near", "shape") if ctx.heldout else ("pair", "colour", "near", "shape"))
    size = rng.choice(SIZES)
    if form == "pair":
        colour, shape = ctx.pair()
        specs = [(colour, shape, size)] + ([ctx.near_miss(colour, shape)] if rng.random() < 0.5 else [])
        scene = ctx.place(ctx.fill(specs, ctx.n_objects(2), lambda a: a[:2] != (colour, shape)))
        question = _say("q_seg_pair", pair=f"{colour} {shape}")
        steps = [(_say("s_only", desc=f"{colour} {shape}", pos=ctx.seen(scene[0])["pos"]), scene[0])]
        target, query = scene[0], {"form": form, "colour": colour, "shape": shape}
    elif form == "colour":
        colour = rng.choice(_COLOURS)
        shapes = [s for s in SHAPES if ctx.may_single_out(colour, s)]
        shape = rng.choice(shapes)
        ref_size, ref_shape = rng.choice([(z, s) for z in SIZES for s in shapes if (s, z) != (shape, size)])
        specs = [(colour, ref_shape, ref_size), (colour, shape, size)]
        scene = ctx.place(ctx.fill(specs, ctx.n_objects(2),
                                   lambda a: a[0] != colour and (a[2], a[1]) != (ref_size, ref_shape)))
        question = _say("q_seg_colour", size=ref_size, shape=ref_shape)
        steps = [(_say("s_ref_colour", size=ref_size, shape=ref_shape, colour=colour,
                       pos=ctx.seen(scene[0])["pos"]), scene[0]),
                 (_say("s_other", desc=_T["d_object"].format(words=colour), **ctx.seen(scene[1])), scene[1])]
        target, query = scene[1], {"form": form, "size": ref_size, "shape": ref_shape}
    elif form == "near":
        ref = ctx.pair()
        colour, shape = rng.choice([p for p in _PAIRS if p != ref and ctx.may_single_out(*p)])
        scene, steps = _nearest_scene(ctx, (*ref, rng.choice(SIZES)), (colour, shape, size))
        question, target = _say("q_seg_near", pair=" ".join(ref)), scene[1]
        query = {"form": form, "reference": list(ref)}
    else:
        ref_colour, shape = ctx.pair()
        colour = rng.choice([c for c in _COLOURS if c != ref_colour and ctx.may_single_out(c, shape)])
        specs = [(ref_colour, shape, rng.choice(SIZES)), (colour, shape, size)]
        scene = ctx.place(ctx.fill(specs, ctx.n_objects(2), lambda a: a[1] != shape))
        question = _say("q_seg_shape", pair=f"{ref_colour} {shape}")
        steps = [(_say("s_at", pair=f"{ref_colour} {shape}", pos=ctx.seen(scene[0])["pos"]), scene[0]),
                 (_say("s_other", desc=shape, **ctx.seen(scene[1])), scene[1])]
        target, query = scene[1], {"form": form, "reference": [ref_colour, shape]}
    answer = _T["answer_object"].format(name=_name(target))
    return _Question(question, answer, scene, steps, _T["r_this_is"].format(name=_name(target)), query,
                     target=target)


_GENERATORS = {
    "exist": _exist, "count": _count, "attribute": _attribute, "relation": _relation,
    "compare": _compare, "multihop": _multihop, "mcq": _mcq, "seg": _seg,
}


def _sample_seed(seed: int, split: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _long_rationale(scene: list[dict], config: SynthConfig, question: str, steps: list[str],
                    answer: str) -> str:
    """Describe every object and where it is, then reason: 100–400 words for up to 9 objects."""
    parts = [_say("l_intro", k=len(scene), background=_BACKGROUND[config.noise]), _say("l_plan")]
    for i, obj in enumerate(scene, 1):
        pos = scenes.position_word(obj, config.image_size)
        parts.append(_say("l_object", k=i, a=_a(obj["size"]), name=_name(obj), pos=pos))
        if i > 1:
            parts.append(_say("l_relative", rel=_RELATION[scenes.direction(obj, scene[i - 2])], k=i - 1))
    small = sum(o["size"] == "small" for o in scene)
    parts.append(_say("l_sizes", k=small, k2=len(scene) - small))
    parts.append(_say("l_question", question=question))
    parts += steps
    parts.append(_say("l_check", answer=answer))
    return " ".join(parts)


def make_sample(config: SynthConfig, split: str, index: int
                ) -> tuple[str, Image.Image, dict, Image.Image | None]:
    """(key, RGB image, canonical record, seg mask or None), a pure function of (config, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"sample index must be a non-negative integer, got {index!r}")
    seed = _sample_seed(config.seed, split, index)
    task = config.tasks[index % len(config.tasks)]
    q = _GENERATORS[task](_Ctx(config, split, random.Random(seed)))
    scene = scenes.reading_order(q.scene)
    steps = [{"text": text, "box": obj["box"] if obj else None} for text, obj in q.steps]
    steps.append({"text": _say("final", reason=q.reason, answer=q.answer),
                  "box": q.target["box"] if q.target else None})
    texts = [s["text"] for s in steps]
    if config.rationale_style == "long":
        rationale = _long_rationale(scene, config, q.question, texts, q.answer)
    else:
        rationale = " ".join(texts)
    key = f"{split}-{index:07d}"
    record = {
        "question": q.question, "answer": q.answer, "choices": q.choices, "rationale": rationale,
        "steps": steps, "task": task,
        "meta": {"scene": scene, "split": split, "query": q.query,
                 "image_size": [config.image_size, config.image_size]},
    }
    validate_record(record, key, image_size=(config.image_size, config.image_size))
    noise_rng = np.random.default_rng(seed) if config.noise else None
    image = scenes.render(scene, config.image_size, config.noise, noise_rng)
    mask = scenes.object_mask(scene, scene.index(q.target), config.image_size) if task == "seg" else None
    return key, image, record, mask


def vocabulary() -> list[str]:
    """Every token (``\\w+`` or a punctuation mark, lower-cased) a sample's text can contain."""
    words: set[str] = set()
    for template in _T.values():
        words.update(_tokens(re.sub(r"\{\w+\}", " ", template)))
    values = [*COLOURS, *SHAPES, *PLURALS.values(), *SIZES, *scenes.DIRECTIONS, *_RELATION.values(),
              *(p for row in scenes.POSITIONS for p in row), *_BACKGROUND.values(), *_YES_NO.values(), *LETTERS,
              "a", "an", *(str(d) for d in range(10))]
    for value in values:
        words.update(_tokens(value))
    return sorted(words)
