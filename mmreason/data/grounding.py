"""Whether a rationale's mentions of objects are true of the scene, and whether a rationale is true.

:func:`grounding` splits perception from reasoning errors: for every object a rationale mentions
("the small red circle at the top left") it checks against the scene graph whether such an object
exists, by colour, by shape, by size, by all three and at the stated position. Gold rationales score
100%, so the numbers measure the model. :func:`rationale_is_true` labels a sampled rationale for a
rationale scorer: every object it mentions is there as stated, and it concludes the right answer.
"""

from __future__ import annotations

import re

from mmreason.data.rationale_edits import split_steps
from mmreason.data.scenes import COLOURS, POSITIONS, SHAPES, SIZES, position_word
from mmreason.eval.answers import field_of, score_answer
from mmreason.rl.crop import strip_crops

_POSITION_WORDS = sorted({p for row in POSITIONS for p in row}, key=len, reverse=True)
MENTION = re.compile(
    rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
    rf"(?: at the ({'|'.join(_POSITION_WORDS)}))?"
)
CHECKS = ("colour", "shape", "size", "object", "object+position")
# "The blue triangle is at the right.", "The only small red object is at the left.": an object
# described by some of its attributes, then where it is.
_PLACED = re.compile(
    rf"\bthe (?:only )?(?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)}|object) "
    rf"is at the ({'|'.join(_POSITION_WORDS)})\b"
)


def grounding(text: str, scene: list[dict], image_size: int) -> dict[str, list[bool]]:
    """Per check, one bool per mention in ``text``: does the scene hold such an object?"""
    out: dict[str, list[bool]] = {check: [] for check in CHECKS}
    for size, colour, shape, position in MENTION.findall(text.lower()):
        out["colour"].append(any(o["colour"] == colour for o in scene))
        out["shape"].append(any(o["shape"] == shape for o in scene))
        out["size"].append(any(o["size"] == size for o in scene))
        same = [o for o in scene if (o["size"], o["colour"], o["shape"]) == (size, colour, shape)]
        out["object"].append(bool(same))
        if position:
            out["object+position"].append(any(position_word(o, image_size) == position for o in same))
    return out


def _placed_hold(text: str, scene: list[dict], image_size: int) -> bool:
    """Whether each "the [only] <attributes> is at the <position>" names an object there."""
    for size, colour, shape, position in _PLACED.findall(text):
        wanted = {"size": size, "colour": colour, "shape": "" if shape == "object" else shape}
        if not any(all(o[k] == v for k, v in wanted.items() if v) and position_word(o, image_size) == position
                   for o in scene):
            return False
    return True


def rationale_is_true(rationale: str, record) -> bool:
    """Whether every object ``rationale`` mentions exists in the record's scene with that size, colour and
    shape, at the stated position where one is stated (full mentions and "the <pair> is at the <pos>"),
    and its concluding sentence ("..., so the answer is X.") gives the record's answer. Crop actions
    between the words are not statements and are left out."""
    meta = field_of(record, "meta") or {}
    if "scene" not in meta or "image_size" not in meta:
        raise ValueError(f"rationale_is_true needs a synthetic record with meta['scene'] and "
                         f"meta['image_size'], got meta keys {sorted(meta)}")
    rationale = strip_crops(rationale or "")
    _, conclusion = split_steps(rationale)
    if conclusion is None or not score_answer(conclusion, record)[0]:
        return False
    text, scene = rationale.lower(), meta["scene"]
    size = meta["image_size"][0]  # (width, height): scenes are square
    checks = grounding(text, scene, size)
    return all(checks["object"]) and all(checks["object+position"]) and _placed_hold(text, scene, size)
