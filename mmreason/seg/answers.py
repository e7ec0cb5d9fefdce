"""Box-and-point answers of the RL segmentation path (Seg-Zero / StAR).

The policy names each object by a box and a point inside it; a promptable mask
decoder turns them into masks. Upstream writes JSON
(``[{"bbox_2d": [x0, y0, x1, y1], "point_2d": [x, y]}]``); a word-level vocabulary
has no brackets or quotes, so the tiny models write ``object 2 5 , 1 6 , 3 4 , 2 5 at
2 9 , 2 0`` (box, then point; objects joined by ``and``; digits as tokens). Both
forms parse.
Coordinates are pixels of the model's input image.
"""

from __future__ import annotations

import json
import re

import torch

from mmreason.rl.crop import format_numbers, parse_box, parse_numbers

_GROUP = re.compile(r"\bobject\b(.*?)\bat\b(.*?)(?=\band\b|$)", re.DOTALL)


def format_box_point(box: list[float], point: list[float]) -> str:
    return f"object {format_numbers(box)} at {format_numbers(point)}"


def parse_box_points(answer: str | None) -> list[tuple[list[float], list[float]]]:
    """Every well-formed (box, point) of an answer, in order; malformed groups are dropped."""
    if not answer:
        return []
    try:
        objects = json.loads(answer)
    except ValueError:
        objects = None
    if isinstance(objects, list):
        pairs = [(o.get("bbox_2d"), o.get("point_2d")) for o in objects if isinstance(o, dict)]
        texts = [(json.dumps(b), json.dumps(p)) for b, p in pairs if b is not None and p is not None]
    else:
        texts = _GROUP.findall(answer)
    out = []
    for box_text, point_text in texts:
        box, point = parse_box(box_text), parse_numbers(point_text, 2)
        if box is not None and point is not None:
            out.append((box, point))
    return out


def mask_box_point(mask: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """A (H, W) bool mask's box (x1, y1 exclusive) and the mask pixel nearest its centroid (a point
    surely inside the object); None for an empty mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if not len(ys):
        return None
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    cy, cx = ys.float().mean(), xs.float().mean()
    nearest = int(((ys - cy) ** 2 + (xs - cx) ** 2).argmin())
    return box, [int(xs[nearest]), int(ys[nearest])]
