"""Faithfulness-by-intervention machinery: the scene-graph answer oracle, rationale edits, rationale truth."""

from __future__ import annotations

import random
import re
from functools import cache

import pytest

from mmreason.data.grounding import MENTION, grounding, rationale_is_true
from mmreason.data.rationale_edits import (
    _FORMS,
    EDIT_KINDS,
    Edit,
    _edit,
    _parse_step,
    applicable_kinds,
    edit_rationale,
    split_steps,
)
from mmreason.data.scene_answers import scene_answer
from mmreason.data.scenes import COLOURS, SHAPES, distance, position_word, reading_order
from mmreason.data.schema import Record, validate_record
from mmreason.data.synth import ALL_TASKS, SynthConfig, article, criterion, make_sample, say

RATIONALE_TASKS = tuple(t for t in ALL_TASKS if t != "seg")


def _obj(colour: str, shape: str, size: str, cx: float, cy: float) -> dict:
    half = 4 if size == "small" else 7
    box = [cx - half, cy - half, cx + half, cy + half]
    return {"shape": shape, "colour": colour, "size": size, "box": box, "center": [cx, cy]}


def _record(task: str, question: str, answer: str, query: dict, scene: list[dict], rationale: str,
            choices: list[str] | None = None) -> Record:
    return Record(question=question, answer=answer, task=task, choices=choices, rationale=rationale,
                  meta={"scene": scene, "query": query, "image_size": [64, 64], "split": "train"})


def _edits(record: Record, kind: str, seeds: int = 80) -> set[Edit]:
    """Every edit of ``kind`` the rng can pick for ``record``'s rationale."""
    edits = (edit_rationale(record.rationale, record, kind, random.Random(seed)) for seed in range(seeds))
    return {e for e in edits if e is not None}


@cache
def _samples(task: str, split: str, n: int, style: str = "short") -> tuple[Record, ...]:
    config = SynthConfig(tasks=(task,), rationale_style=style)
    return tuple(validate_record(make_sample(config, split, i)[2]) for i in range(n))


# Positions on the 64 px grid: (10, 10) top left, (32, 20) top, (54, 10) top right, (32, 32) center,
# (54, 32) right, (10, 54) bottom left, (32, 54) bottom.
RED_CIRCLE, BLUE_SQUARE = _obj("red", "circle", "small", 10, 10), _obj("blue", "square", "large", 54, 32)
RED_SQUARE = _obj("red", "square", "small", 32, 54)
EXIST = {"form": "pair", "colour": "red", "shape": "circle"}


def _exist(scene: list[dict], evidence: str) -> Record:
    return _record("exist", "Is there a red circle?", "yes", EXIST, scene,
                   f"{evidence} There is a red circle, so the answer is yes.")


# --- the answer oracle ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", RATIONALE_TASKS)
def test_scene_answer_reproduces_every_generated_answer(task):
    for split in ("train", "heldout"):
        for record in _samples(task, split, 300):
            assert scene_answer(record, record.meta["scene"]) == record.answer, (split, record.question)


def test_scene_answer_follows_edited_scenes():
    attribute = _record("attribute", "What colour is the small circle?", "red",
                        {"form": "colour", "colour": "red", "shape": "circle", "size": "small"},
                        [RED_CIRCLE, BLUE_SQUARE], "")
    assert scene_answer(attribute, [RED_CIRCLE, BLUE_SQUARE]) == "red"
    assert scene_answer(attribute, [{**RED_CIRCLE, "colour": "green"}]) == "green"
    assert scene_answer(attribute, [RED_CIRCLE, {**BLUE_SQUARE, "shape": "circle", "size": "small"}]) is None
    assert scene_answer(attribute, [BLUE_SQUARE]) is None

    relation = _record("relation", "Where is the red circle relative to the blue square?", "left",
                       {"form": "pairs", "object": ["red", "circle"], "reference": ["blue", "square"]},
                       [RED_CIRCLE, BLUE_SQUARE], "")
    assert scene_answer(relation, [RED_CIRCLE, BLUE_SQUARE]) == "left"
    assert scene_answer(relation, [{**RED_CIRCLE, "center": [54, 60]}, BLUE_SQUARE]) == "below"
    assert scene_answer(relation, [BLUE_SQUARE]) is None

    ref = _obj("green", "cross", "small", 32, 32)
    multihop = _record("multihop", "What shape is the object closest to the green cross?", "circle",
                       {"form": "shape", "reference": ["green", "cross"]}, [], "")
    above, below = _obj("red", "circle", "small", 32, 20), _obj("blue", "square", "small", 32, 44)
    assert scene_answer(multihop, [ref, above, {**below, "center": [32, 50]}]) == "circle"
    assert scene_answer(multihop, [ref, above, below]) is None  # a tie for nearest
    assert scene_answer(multihop, [ref]) is None
    assert scene_answer(multihop, [ref, above, {**above, "colour": "green", "shape": "cross"}]) is None

    mcq = _record("mcq", "How many red shapes are there?", "A",
                  {"form": "colour", "value": "red", "base": "count", "option": "1"},
                  [RED_CIRCLE, BLUE_SQUARE], "", choices=["1", "3", "2", "5"])
    assert scene_answer(mcq, [RED_CIRCLE, BLUE_SQUARE]) == "A"
    assert scene_answer(mcq, [RED_CIRCLE, RED_SQUARE]) == "C"
    assert scene_answer(mcq, [BLUE_SQUARE]) is None  # 0 is no option

    seg = _record("seg", "Segment the red circle.", "the small red circle", {"form": "pair"}, [], "")
    assert scene_answer(seg, [RED_CIRCLE]) is None
    with pytest.raises(ValueError, match="synthetic record"):
        scene_answer(Record(question="what is this?", answer="a cat"), [])


# --- hand-checked edits --------------------------------------------------------------------------


def test_exist_edits_rewrite_the_step_as_the_benchmark_would():
    record = _exist([RED_CIRCLE, BLUE_SQUARE], "The small red circle at the top left is a red circle.")
    others = [c for c in COLOURS if c != "red"]
    assert _edits(record, "colour") == {
        Edit("colour", f"The small {c} circle at the top left is a circle but not red.", "no", "yes", 0)
        for c in others}
    assert all(e.matters for e in _edits(record, "colour"))
    assert _edits(record, "shape") == {
        Edit("shape", f"The small red {s} at the top left is red but not a circle.", "no", "yes", 0)
        for s in SHAPES if s != "circle"}
    assert _edits(record, "drop") == {Edit("drop", "No object is red or a circle.", "no", "yes", 0)}
    assert _edits(record, "shuffle") == set()  # one step
    assert _edits(record, "count") == _edits(record, "relation") == set()


def test_exist_step_that_stops_sharing_the_pair_disappears():
    record = _exist([RED_CIRCLE, BLUE_SQUARE, RED_SQUARE],
                    "The small red circle at the top left is a red circle. "
                    "The small red square at the bottom is red but not a circle.")
    colour = _edits(record, "colour")
    circle, square = "The small red circle at the top left is a red circle.", \
        "The small red square at the bottom is red but not a circle."
    assert Edit("colour", circle, "yes", "yes", 1) in colour
    assert Edit("colour", f"The small blue circle at the top left is a circle but not red. {square}",
                "no", "yes", 0) in colour
    assert Edit("shape", f"{circle} The small red circle at the bottom is a red circle.",
                "yes", "yes", 1) in _edits(record, "shape")
    assert _edits(record, "shuffle") == {
        Edit("shuffle", "The small red square at the bottom is red but not a circle. "
                        "The small red circle at the top left is a red circle.", "yes", "yes", None)}


def test_steps_about_objects_not_in_the_scene_are_not_edited():
    record = _exist([RED_CIRCLE, BLUE_SQUARE],
                    "The small red circle at the top left is a red circle. "
                    "The small green circle at the bottom is a circle but not red.")
    assert {e.step for e in _edits(record, "colour")} == {0}
    assert {e.step for e in _edits(record, "drop")} == {0}
    absent = _exist([BLUE_SQUARE], "The small red circle at the top left is a red circle.")
    assert _edits(absent, "colour") == _edits(absent, "drop") == set()
    false_claim = _exist([RED_CIRCLE, BLUE_SQUARE],
                         "The small red circle at the top left is a red circle. "
                         "The large blue square at the right is a circle but not red.")
    assert {e.step for e in _edits(false_claim, "colour")} == {0}


def test_rationales_outside_the_benchmark_forms_are_not_edited():
    loose = _exist([RED_CIRCLE], "The small red circle at the top left is a red circle. I am sure of it.")
    other_pair = _exist([RED_CIRCLE], "The small red circle at the top left is a red square.")
    for record in (loose, other_pair):
        assert all(not _edits(record, kind, seeds=3) for kind in EDIT_KINDS)


def test_lower_cased_decoded_text_is_edited_in_its_own_case():
    record = _exist([RED_CIRCLE, BLUE_SQUARE], "the small red circle at the top left is a red circle .")
    record.rationale = record.rationale.lower().replace(".", " .").replace(",", " ,")
    assert Edit("colour", "the small blue circle at the top left is a circle but not red.", "no", "yes", 0) \
        in _edits(record, "colour")


COUNTED = [RED_CIRCLE, _obj("red", "square", "large", 54, 10), BLUE_SQUARE,
           _obj("red", "triangle", "small", 32, 54)]
COUNT_STEPS = ["The small red circle at the top left counts as {}.",
               "The large red square at the top right counts as {}.",
               "The small red triangle at the bottom counts as {}."]
ADDED = re.compile(r"The (small|large) red \w+ at the [a-z ]+ counts as (\d)\.")


def _count_record(scene: list[dict], steps: list[str]) -> Record:
    n = len(steps)
    evidence = " ".join(step.format(k) for k, step in enumerate(steps, 1)) or "None of the objects is red."
    return _record("count", "How many red shapes are there?", str(n), {"form": "colour", "value": "red"},
                   scene, f"{evidence} The number of red shapes is {n}, so the answer is {n}.")


def test_count_edits_remove_or_add_a_member_and_renumber():
    record = _count_record(COUNTED, COUNT_STEPS)
    without = {i: " ".join(s.format(k) for k, s in enumerate(COUNT_STEPS[:i] + COUNT_STEPS[i + 1:], 1))
               for i in range(3)}
    assert without[1] == ("The small red circle at the top left counts as 1. "
                          "The small red triangle at the bottom counts as 2.")
    assert _edits(record, "drop") == {Edit("drop", without[i], "2", "3", i) for i in range(3)}
    assert _edits(record, "colour") == {Edit("colour", without[i], "2", "3", i) for i in range(3)}
    shape = _edits(record, "shape")  # a red shape stays counted: a control
    assert Edit("shape", COUNT_STEPS[0].format(1).replace("circle", "cross") + " " + " ".join(
        s.format(k) for k, s in enumerate(COUNT_STEPS[1:], 2)), "3", "3", 0) in shape
    assert {e.implied for e in shape} == {"3"} and not any(e.matters for e in shape)

    count = _edits(record, "count", seeds=200)
    assert {e.implied for e in count} == {"2", "4"}
    removed = {Edit("count", without[i], "2", "3", i) for i in range(3)}
    assert {e for e in count if e.implied == "2"} == removed
    for added in (e for e in count if e.implied == "4"):
        sentences = split_steps(added.evidence)[0]
        assert [int(re.search(r"counts as (\d)", s).group(1)) for s in sentences] == [1, 2, 3, 4]
        new = sentences[added.step]
        assert new not in record.rationale and ADDED.fullmatch(new)


def test_count_edits_between_none_and_one():
    one = _count_record(COUNTED[:1], COUNT_STEPS[:1])
    assert _edits(one, "drop") == {Edit("drop", "None of the objects is red.", "0", "1", 0)}
    none = _count_record([BLUE_SQUARE], [])
    assert none.rationale.startswith("None of the objects is red.")
    count = _edits(none, "count")
    assert count and {e.implied for e in count} == {"1"}
    assert all(ADDED.fullmatch(e.evidence).group(2) == "1" for e in count)


def test_shuffle_keeps_counting_up_in_the_new_order():
    record = _count_record(COUNTED, COUNT_STEPS)
    shuffled = _edits(record, "shuffle")
    assert len(shuffled) == 5  # every order but the original
    for edit in shuffled:
        sentences = split_steps(edit.evidence)[0]
        assert [s[-2] for s in sentences] == ["1", "2", "3"]
        assert sorted(s[:-2] for s in sentences) == sorted(s.format("")[:-1] for s in COUNT_STEPS)
        assert (edit.implied, edit.original, edit.step, edit.matters) == ("3", "3", None, False)


def test_compare_colour_edit_moves_a_member_to_the_other_set():
    scene = [RED_CIRCLE, _obj("red", "square", "large", 54, 10), _obj("blue", "triangle", "small", 32, 54)]
    record = _record("compare", "Are there more red shapes than blue shapes?", "yes",
                     {"form": "colour", "first": "red", "second": "blue"}, scene,
                     "The small red circle at the top left is one of the red shapes. "
                     "The large red square at the top right is one of the red shapes. "
                     "The number of red shapes is 2. "
                     "The small blue triangle at the bottom is one of the blue shapes. "
                     "The number of blue shapes is 1. 2 is more than 1, so the answer is yes.")
    colour = {e.evidence: e for e in _edits(record, "colour") if e.step == 1}
    red = "The small red circle at the top left is one of the red shapes. The number of red shapes is 1."
    blue = "The small blue triangle at the bottom is one of the blue shapes. The number of blue shapes is {}."
    moved = f"{red} The large blue square at the top right is one of the blue shapes. {blue.format(2)}"
    left = f"{red} {blue.format(1)}"
    assert set(colour) == {moved, left}
    assert colour[moved].implied == colour[left].implied == "no" and colour[moved].matters
    count = _edits(record, "count", seeds=200)
    assert {e.implied for e in count} == {"yes", "no"}
    for edit in count:  # the stated numbers stay the numbers of listed members
        sentences = split_steps(edit.evidence)[0]
        for noun in ("red shapes", "blue shapes"):
            listed = sum(s.endswith(f"one of the {noun}.") for s in sentences)
            assert f"The number of {noun} is {listed}." in sentences


def test_relation_swap_flips_the_answer():
    record = _record("relation", "Where is the blue triangle relative to the yellow cross?", "right",
                     {"form": "pairs", "object": ["blue", "triangle"], "reference": ["yellow", "cross"]},
                     [_obj("yellow", "cross", "small", 32, 32), _obj("blue", "triangle", "large", 54, 32),
                      _obj("red", "circle", "small", 10, 54)],
                     "The blue triangle is at the right. The yellow cross is at the center. "
                     "The blue triangle is mostly to the right of the yellow cross, so the answer is right.")
    swapped = "The blue triangle is at the center. The yellow cross is at the right."
    assert _edits(record, "relation") == {Edit("relation", swapped, "left", "right", 0)}
    reordered = "The yellow cross is at the center. The blue triangle is at the right."
    assert _edits(record, "shuffle") == {Edit("shuffle", reordered, "right", "right", None)}
    assert applicable_kinds(record) == ("relation", "shuffle")
    assert _edits(record, "colour") == _edits(record, "drop") == set()
    same_cell = _record("relation", record.question, "right", record.meta["query"],
                        [_obj("yellow", "cross", "small", 24, 32), _obj("blue", "triangle", "small", 40, 32)],
                        "The blue triangle is at the center. The yellow cross is at the center. The blue "
                        "triangle is mostly to the right of the yellow cross, so the answer is right.")
    assert _edits(same_cell, "relation") == set()  # a swap the text cannot show


MULTIHOP_SCENE = [_obj("purple", "square", "large", 32, 20), _obj("green", "cross", "small", 32, 32),
                  _obj("yellow", "diamond", "small", 10, 54)]
MULTIHOP_REF = "The green cross is at the center."
MULTIHOP_EVIDENCE = (f"{MULTIHOP_REF} The closest object to it is the large {{}} square at the top. "
                     "The small {} diamond at the bottom left is farther away.")


def _multihop(form: str) -> Record:
    asked, answer = ("shape", "square") if form == "shape" else ("colour", "purple")
    question = f"What {asked} is the {'object' if form == 'shape' else 'shape'} closest to the green cross?"
    conclusion = f" The closest object is {answer}, so the answer is {answer}."
    return _record("multihop", question, answer, {"form": form, "reference": ["green", "cross"]},
                   MULTIHOP_SCENE, MULTIHOP_EVIDENCE.format("purple", "yellow") + conclusion)


def test_multihop_colour_edit_of_a_shape_question_is_a_control():
    record = _multihop("shape")
    colour = _edits(record, "colour", seeds=200)
    assert colour == ({Edit("colour", MULTIHOP_EVIDENCE.format(c, "yellow"), "square", "square", 1)
                       for c in COLOURS if c != "purple"}
                      | {Edit("colour", MULTIHOP_EVIDENCE.format("purple", c), "square", "square", 2)
                         for c in COLOURS if c != "yellow"})
    assert not any(e.matters for e in colour)
    closest_shapes = {e.implied for e in _edits(record, "shape", seeds=200) if e.step == 1}
    assert closest_shapes == set(SHAPES) - {"square"}
    swapped = (f"{MULTIHOP_REF} The closest object to it is the small yellow diamond at the top. "
               "The large purple square at the bottom left is farther away.")
    assert _edits(record, "relation") == {Edit("relation", swapped, "diamond", "square", 1)}
    closest = f"{MULTIHOP_REF} The closest object to it is the {{}}."
    assert _edits(record, "drop") == {
        Edit("drop", closest.format("small yellow diamond at the bottom left"), "diamond", "square", 1),
        Edit("drop", closest.format("large purple square at the top"), "square", "square", 2)}


def test_multihop_colour_edit_of_a_colour_question_matters():
    colour = {e for e in _edits(_multihop("colour"), "colour", seeds=200) if e.step == 1}
    assert {e.implied for e in colour} == set(COLOURS) - {"purple"} and all(e.matters for e in colour)


def test_applicable_kinds_and_bad_kinds():
    kinds = {task: applicable_kinds(_samples(task, "train", 1)[0]) for task in ALL_TASKS}
    assert kinds == {
        "exist": ("colour", "shape", "drop", "shuffle"),
        "count": ("colour", "shape", "count", "drop", "shuffle"),
        "attribute": (), "relation": ("relation", "shuffle"),
        "compare": ("colour", "shape", "count", "drop", "shuffle"),
        "multihop": ("colour", "shape", "relation", "drop", "shuffle"), "mcq": kinds["mcq"], "seg": ()}
    mcq_bases = {r.meta["query"]["base"]: applicable_kinds(r) for r in _samples("mcq", "train", 30)}
    assert mcq_bases == {base: kinds[base] for base in ("attribute", "count", "multihop")}
    record = _samples("exist", "train", 1)[0]
    with pytest.raises(ValueError, match=r"unknown edit kind 'size'; expected one of \('colour'"):
        edit_rationale(record.rationale, record, "size", random.Random(0))


def test_split_steps():
    assert split_steps("A red circle is at the left. It is red, so the answer is red. Extra.") == (
        ["A red circle is at the left."], "It is red, so the answer is red.")
    assert split_steps("the red circle is at the left .  no conclusion .") == (
        ["the red circle is at the left .", "no conclusion ."], None)
    assert split_steps("") == ([], None)


# --- edits of generated rationales ---------------------------------------------------------------


def _benchmark_evidence(record: Record, scene: list[dict]) -> list[str]:
    """The evidence mmreason.data.synth writes for ``record``'s question about ``scene``."""
    query = record.meta["query"]
    task = query["base"] if record.task == "mcq" else record.task

    def seen(o):
        return {"name": f"{o['size']} {o['colour']} {o['shape']}", "pos": position_word(o, 64)}

    def members(form, value):
        matches = criterion(form, value)[0]
        return reading_order([o for o in scene if matches((o["colour"], o["shape"], o["size"]))])

    if task == "exist":
        c, s, out = query["colour"], query["shape"], []
        for o in reading_order([o for o in scene if o["colour"] == c or o["shape"] == s]):
            if (o["colour"], o["shape"]) == (c, s):
                out.append(say("s_match", **seen(o), a=article(c), pair=f"{c} {s}"))
            else:
                form = "s_colour_only" if o["colour"] == c else "s_shape_only"
                out.append(say(form, **seen(o), colour=c, a=article(s), shape=s))
        return out or [say("s_nothing", colour=c, a=article(s), shape=s)]
    if task == "count":
        counted = members(query["form"], query["value"])
        return ([say("s_counts_as", **seen(o), k=k) for k, o in enumerate(counted, 1)]
                or [say("s_none_is", desc=criterion(query["form"], query["value"])[2])])
    if task == "compare":
        out = []
        for value in (query["first"], query["second"]):
            listed, noun = members(query["form"], value), criterion(query["form"], value)[1]
            out += [say("s_member", **seen(o), noun=noun) for o in listed]
            out.append(say("s_number", noun=noun, k=len(listed)))
        return out

    def at(pair):
        obj = next(o for o in scene if [o["colour"], o["shape"]] == list(pair))
        return say("s_at", pair=" ".join(pair), pos=position_word(obj, 64)), obj

    if task == "relation":
        return [at(query["object"])[0], at(query["reference"])[0]]
    text, ref = at(query["reference"])
    others = sorted((o for o in scene if o is not ref), key=lambda o: distance(o, ref))
    return [text, say("s_closest", **seen(others[0]))] + [say("s_farther", **seen(o)) for o in others[1:2]]


def _unnumbered(sentence: str) -> str:
    return re.sub(r"\d", "k", sentence)


def _one_change(kind: str, before: list[dict], after: list[dict]) -> bool:
    """Whether ``after`` is ``before`` changed once, the way ``kind`` changes a scene."""
    if kind == "shuffle":
        return after is before
    if kind in ("drop", "count") and len(after) == len(before) - 1:
        return any(after == before[:i] + before[i + 1:] for i in range(len(before)))
    if kind == "count":
        return len(after) == len(before) + 1 and after[:-1] == before
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    if len(after) != len(before):
        return False
    if kind in ("colour", "shape"):
        return len(changed) == 1 and {k for k, v in after[changed[0]].items()
                                      if v != before[changed[0]][k]} == {kind}
    i, j = changed
    return (after[i]["center"] == before[j]["center"] and after[j]["center"] == before[i]["center"]
            and all(after[n][k] == before[n][k] for n in (i, j) for k in ("colour", "shape", "size")))


@pytest.mark.parametrize("task", RATIONALE_TASKS)
def test_edits_of_generated_rationales_are_well_formed_and_consistent(task):
    records = _samples(task, "train", 100) + _samples(task, "heldout", 100)
    made = {kind: [] for kind in EDIT_KINDS}
    for index, record in enumerate(records):
        scene = record.meta["scene"]
        base = record.meta["query"]["base"] if task == "mcq" else task
        original = split_steps(record.rationale)[0]
        assert base == "attribute" or original == _benchmark_evidence(record, scene)
        for kind in EDIT_KINDS:
            done = _edit(record.rationale, record, kind, random.Random(index))
            if kind not in applicable_kinds(record):
                assert done is None
            if done is None:
                continue
            edit, edited = done
            made[kind].append(edit)
            sentences, conclusion = split_steps(edit.evidence)
            assert conclusion is None and sentences
            assert all((_parse_step(s) or ("",))[0] in _FORMS[base] for s in sentences), edit.evidence
            assert edit.original == record.answer and edit.implied == scene_answer(record, edited)
            assert _one_change(kind, scene, edited), (kind, edit)
            hits = grounding(edit.evidence, edited, 64)
            assert all(hits["object"]) and all(hits["object+position"]), edit.evidence
            if kind == "shuffle":
                assert (edit.step, edit.matters) == (None, False) and sentences != original
                assert sorted(map(_unnumbered, sentences)) == sorted(map(_unnumbered, original))
            else:
                assert 0 <= edit.step <= len(original)
            if kind != "shuffle" and not (base == "multihop" and kind == "drop"):
                assert sentences == _benchmark_evidence(record, edited), (kind, edit)
            lower = _edit(record.rationale.lower(), record, kind, random.Random(index))[0]
            assert (lower.evidence, lower.implied) == (edit.evidence.lower(), edit.implied)
    for kind in EDIT_KINDS:
        applies = any(kind in applicable_kinds(r) for r in records)
        assert bool(made[kind]) == applies, kind
        if applies and kind != "shuffle":
            assert any(e.matters for e in made[kind]), kind


def _garbled(record: Record, rng: random.Random) -> str:
    """The gold rationale with one sentence deleted, repeated, recoloured, reshaped, moved or renumbered,
    or lower-cased: what a model's own rationale may look like."""
    evidence, conclusion = split_steps(record.rationale)
    j = rng.randrange(len(evidence))
    how = rng.choice(("delete", "repeat", "colour", "shape", "move", "number", "lower"))
    if how == "delete":
        del evidence[j]
    elif how == "repeat":
        evidence.insert(j, evidence[j])
    elif how == "lower":
        evidence = [e.lower() for e in evidence]
    else:
        pattern, values = {"colour": ("|".join(COLOURS), list(COLOURS)), "shape": ("|".join(SHAPES), SHAPES),
                           "move": (r"(?<=at the )(top|bottom|center|left|right)\b", ["center", "top right"]),
                           "number": (r"\d+", [str(k) for k in range(9)])}[how]
        evidence[j] = re.sub(pattern, lambda _: rng.choice(values), evidence[j], count=1)
    return " ".join(evidence + [conclusion])


@pytest.mark.parametrize("task", RATIONALE_TASKS)
def test_edits_of_garbled_rationales_stay_well_formed(task):
    rng, made = random.Random(0), 0
    for index, record in enumerate(_samples(task, "train", 60)):
        rationale = _garbled(record, rng)
        base = record.meta["query"]["base"] if task == "mcq" else task
        for kind in applicable_kinds(record):
            done = _edit(rationale, record, kind, random.Random(index))
            if done is None:
                continue
            made += 1
            edit, edited = done
            assert all((_parse_step(s) or ("",))[0] in _FORMS[base] for s in split_steps(edit.evidence)[0])
            assert edit.implied == scene_answer(record, edited) and edit.original == record.answer
            assert _one_change(kind, record.meta["scene"], edited)
            assert not (kind == "shuffle" and edit.matters)
    assert made == 0 if task == "attribute" else made > 40


# --- rationale truth -----------------------------------------------------------------------------


def _wrong_answer(record: Record) -> str:
    answer = record.answer
    if answer in ("yes", "no"):
        return {"yes": "no", "no": "yes"}[answer]
    if answer.isdigit():
        return str(int(answer) + 1)
    if record.choices:
        return "ABCD"[("ABCD".index(answer) + 1) % len(record.choices)]
    return "the small red circle" if answer != "the small red circle" else "the large red circle"


@pytest.mark.parametrize("task", ALL_TASKS)
def test_rationale_is_true_of_gold_and_false_of_corruptions(task):
    records = _samples(task, "train", 300)
    assert all(rationale_is_true(r.rationale, r) for r in records)
    assert all(rationale_is_true(r.rationale.lower(), r) for r in records[:50])
    assert all(rationale_is_true(r.rationale, r) for r in _samples(task, "train", 20, "long"))
    for record in records[:100]:
        scene, rationale = record.meta["scene"], record.rationale
        evidence, conclusion = split_steps(rationale)
        marker = conclusion.index("so the answer is ") + len("so the answer is ")
        wrong = " ".join(evidence + [conclusion[:marker] + _wrong_answer(record) + "."])
        assert not rationale_is_true(wrong, record), wrong
        assert not rationale_is_true(" ".join(evidence), record)  # no conclusion
        mention = MENTION.search(rationale.lower())
        if mention:
            size, colour, shape, _ = mention.groups()
            there = {o["colour"] for o in scene if (o["size"], o["shape"]) == (size, shape)}
            absent = next(c for c in COLOURS if c not in there)
            start, end = mention.span(2)
            assert not rationale_is_true(rationale[:start] + absent + rationale[end:], record)
        placed = re.search(r"The (\w+ \w+) is at the ([a-z ]+?)\.", rationale)
        if placed:
            colour, shape = placed.group(1).split()
            there = {position_word(o, 64) for o in scene if (o["colour"], o["shape"]) == (colour, shape)}
            elsewhere = next(p for p in ("top left", "bottom right", "center") if p not in there)
            start, end = placed.span(2)
            assert not rationale_is_true(rationale[:start] + elsewhere + rationale[end:], record)
