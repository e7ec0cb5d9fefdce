"""The answer a synthetic question has in a scene graph, the record's own scene or an edited one.

An intervention on a rationale changes the scene it describes (an object's colour or shape, where it
is, whether it is there); the answer of the changed scene is what a model that follows its rationale
should then say. Each rule restates how :mod:`mmreason.data.synth` poses the question, so on the
record's own scene it gives exactly ``record.answer``. A question whose premise the scene breaks has
no answer (``None``): the attribute question's object or a relation's object missing or not unique,
the multihop reference missing or not unique, two objects equally near it, an mcq answer that is not
among the options. ``seg`` names an object rather than a word, so it has no answer here either.
"""

from __future__ import annotations

from mmreason.data.scenes import direction, distance
from mmreason.data.synth import ALL_TASKS, LETTERS, criterion
from mmreason.eval.answers import field_of

_YES_NO = {True: "yes", False: "no"}


def _only(scene: list[dict], **attrs) -> dict | None:
    """The one object with these attributes, or None when there is none or several."""
    found = [o for o in scene if all(o[k] == v for k, v in attrs.items())]
    return found[0] if len(found) == 1 else None


def _count(query: dict, scene: list[dict]) -> int:
    matches = criterion(query["form"], query["value"])[0]
    return sum(matches((o["colour"], o["shape"], o["size"])) for o in scene)


def _exist(query: dict, scene: list[dict]) -> str:
    return _YES_NO[any((o["colour"], o["shape"]) == (query["colour"], query["shape"]) for o in scene)]


def _attribute(query: dict, scene: list[dict]) -> str | None:
    asked = query["form"]
    target = _only(scene, **{k: query[k] for k in ("colour", "shape", "size") if k != asked})
    return target[asked] if target else None


def _relation(query: dict, scene: list[dict]) -> str | None:
    (colour, shape), (ref_colour, ref_shape) = query["object"], query["reference"]
    obj, ref = _only(scene, colour=colour, shape=shape), _only(scene, colour=ref_colour, shape=ref_shape)
    if obj is None or ref is None or obj["center"] == ref["center"]:
        return None
    return direction(obj, ref)


def _compare(query: dict, scene: list[dict]) -> str:
    first = _count({"form": query["form"], "value": query["first"]}, scene)
    second = _count({"form": query["form"], "value": query["second"]}, scene)
    return _YES_NO[first > second]


def nearest_object(scene: list[dict], reference: list[str]) -> dict | None:
    """The object nearest the one (colour, shape) ``reference`` object: the multihop question's target.
    None when the reference is missing or not unique, nothing else is there, or two are equally near."""
    ref = _only(scene, colour=reference[0], shape=reference[1])
    if ref is None:
        return None
    others = sorted((distance(o, ref), i) for i, o in enumerate(scene) if o is not ref)
    if not others or (len(others) > 1 and others[0][0] == others[1][0]):
        return None
    return scene[others[0][1]]


def _multihop(query: dict, scene: list[dict]) -> str | None:
    target = nearest_object(scene, query["reference"])
    return target[query["form"]] if target else None


_RULES = {
    "exist": _exist, "count": lambda q, s: str(_count(q, s)), "attribute": _attribute,
    "relation": _relation, "compare": _compare, "multihop": _multihop,
}


def scene_answer(record, scene: list[dict]) -> str | None:
    """The answer to ``record``'s question (its task and ``meta["query"]``) in ``scene``, written as
    ``record.answer`` is; ``None`` where the question has no answer in that scene (module docstring)."""
    task, meta = field_of(record, "task"), field_of(record, "meta") or {}
    if task not in ALL_TASKS or "query" not in meta:
        raise ValueError(f"scene_answer needs a synthetic record (task one of {ALL_TASKS} and "
                         f"meta['query']), got task {task!r} with meta keys {sorted(meta)}")
    query = meta["query"]
    if task == "seg":
        return None
    if task != "mcq":
        return _RULES[task](query, scene)
    option = _RULES[query["base"]](query, scene)
    choices = field_of(record, "choices") or []
    return LETTERS[choices.index(option)] if option in choices else None
