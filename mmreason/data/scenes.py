"""Scene graphs of flat coloured shapes, their layout and their exact rendering.

Objects are stamped from pixel sprites without anti-aliasing and are laid out
with a gap between boxes, so an object's mask is exactly the pixels of its
colour inside its box and every box bounds its object tightly. The synthetic
benchmark relies on both to state answers, boxes and masks from the scene graph
alone. Backgrounds are grey (plain or noisy), never one of the object colours.

A scene is a list of objects ``{shape, colour, size, box: [x0, y0, x1, y1],
center: [cx, cy]}`` in pixels; ``x1``/``y1`` are exclusive, as in
``PIL.Image.getbbox``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
    "cross": "crosses",
}
COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 230),
    "yellow": (235, 210, 20), "purple": (140, 50, 200), "orange": (250, 130, 20),
}
SIZES = ("small", "large")
# Sprite side as a fraction of the image side: small shapes stay recognisable at 64 px.
_SIDE_FRACTION = {"small": 0.14, "large": 0.22}
_PLAIN_GREY = 240
_NOISE_GREY = (185, 256)
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
DIRECTIONS = ("left", "right", "above", "below")

# A constraint sees the candidate centres of object i and the objects placed
# before it, and returns a boolean array of the candidates to keep (or None).
Constraint = Callable[[int, np.ndarray, np.ndarray, list], np.ndarray | None]


def side_pixels(size: str, image_size: int) -> int:
    """Sprite side in pixels for a size word at this image size."""
    if size not in _SIDE_FRACTION:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    return max(4, round(image_size * _SIDE_FRACTION[size]))


@cache
def sprite(shape: str, side: int) -> np.ndarray:
    """The boolean pixel mask of a shape drawn in a side x side square, trimmed to its pixels."""
    c = np.arange(side) + 0.5 - side / 2
    x, y = c[None, :], c[:, None]
    r = side / 2
    if shape == "circle":
        mask = x * x + y * y <= r * r
    elif shape == "square":
        mask = np.ones((side, side), bool)
    elif shape == "triangle":
        mask = np.abs(x) <= (y + r) / 2
    elif shape == "diamond":
        mask = np.abs(x) + np.abs(y) <= r
    elif shape == "cross":
        mask = (np.abs(x) <= side / 6) | (np.abs(y) <= side / 6)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask = np.broadcast_to(mask, (side, side))
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    mask = np.ascontiguousarray(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    mask.setflags(write=False)
    return mask


def _free_top_lefts(occupied: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners where an h x w box touches no occupied pixel and keeps off the border."""
    s = occupied.shape[0]
    integral = np.zeros((s + 1, s + 1), np.int32)
    integral[1:, 1:] = occupied.cumsum(0).cumsum(1)
    window = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    ys, xs = np.nonzero(window[1:-1, 1:-1] == 0)
    return ys + 1, xs + 1


def place_objects(
    specs: Sequence[tuple[str, str, str]],
    image_size: int,
    rng: random.Random,
    constraint: Constraint | None = None,
    fixed: int = 0,
    restarts: int = 100,
) -> list[dict]:
    """Lay out (colour, shape, size) specs without overlap; objects come back in spec order.

    The first ``fixed`` specs are placed first and in order (so a constraint on
    them can refer to the earlier ones); the rest in random order. Positions are
    drawn uniformly from every free position that satisfies ``constraint``; a
    dead end restarts the layout.
    """
    margin = max(2, image_size // 32)
    order = list(range(len(specs)))
    for _ in range(restarts):
        rest = order[fixed:]
        rng.shuffle(rest)
        occupied = np.zeros((image_size, image_size), bool)
        placed: list[dict] = []
        by_spec: dict[int, dict] = {}
        for i in order[:fixed] + rest:
            colour, shape, size = specs[i]
            h, w = sprite(shape, side_pixels(size, image_size)).shape
            ys, xs = _free_top_lefts(occupied, h, w)
            if constraint is not None and ys.size:
                keep = constraint(i, xs + w / 2, ys + h / 2, placed)
                if keep is not None:
                    ys, xs = ys[keep], xs[keep]
            if not ys.size:
                break
            k = rng.randrange(ys.size)
            x0, y0 = int(xs[k]), int(ys[k])
            obj = {
                "shape": shape, "colour": colour, "size": size,
                "box": [x0, y0, x0 + w, y0 + h], "center": [x0 + w / 2, y0 + h / 2],
            }
            placed.append(obj)
            by_spec[i] = obj
            occupied[max(0, y0 - margin):y0 + h + margin, max(0, x0 - margin):x0 + w + margin] = True
        else:
            return [by_spec[i] for i in order]
    raise ValueError(
        f"could not lay out {len(specs)} objects in a {image_size}x{image_size} image after "
        f"{restarts} attempts; expected fewer objects (max_objects) or a larger image_size"
    )


def _stamp(scene: list[dict], idx: int, image_size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    obj = scene[idx]
    x0, y0, x1, y1 = obj["box"]
    mask = sprite(obj["shape"], side_pixels(obj["size"], image_size))
    if mask.shape != (y1 - y0, x1 - x0):
        raise ValueError(
            f"object {idx} has box {obj['box']} but a {obj['size']} {obj['shape']} is "
            f"{mask.shape[1]}x{mask.shape[0]} px at image_size {image_size}; "
            "expected the image_size the scene was laid out for"
        )
    return (slice(y0, y1), slice(x0, x1)), mask


def render(
    scene: list[dict], image_size: int, noise: bool = False, rng: np.random.Generator | None = None
) -> Image.Image:
    """Draw a scene; ``noise`` gives a random grey background texture drawn from ``rng``."""
    if noise:
        if rng is None:
            raise ValueError("render(noise=True) needs rng, a numpy Generator for the background")
        grey = rng.integers(*_NOISE_GREY, size=(image_size, image_size), dtype=np.uint8)
        pixels = np.repeat(grey[:, :, None], 3, axis=2)
    else:
        pixels = np.full((image_size, image_size, 3), _PLAIN_GREY, np.uint8)
    for idx, obj in enumerate(scene):
        region, mask = _stamp(scene, idx, image_size)
        pixels[region][mask] = COLOURS[obj["colour"]]
    return Image.fromarray(pixels, "RGB")


def object_mask(scene: list[dict], idx: int, image_size: int) -> Image.Image:
    """The 0/255 mask of exactly the pixels ``render`` draws for object ``idx``."""
    region, mask = _stamp(scene, idx, image_size)
    pixels = np.zeros((image_size, image_size), np.uint8)
    pixels[region][mask] = 255
    return Image.fromarray(pixels, "L")


def position_word(obj: dict, image_size: int) -> str:
    """Where the object's centre lies on a 3 x 3 grid, e.g. 'top left' or 'center'."""
    cx, cy = obj["center"]
    return POSITIONS[min(2, int(3 * cy / image_size))][min(2, int(3 * cx / image_size))]


def direction(obj: dict, ref: dict) -> str:
    """Where ``obj`` lies relative to ``ref`` along the axis of their larger centre offset."""
    dx = obj["center"][0] - ref["center"][0]
    dy = obj["center"][1] - ref["center"][1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def distance(a: dict, b: dict) -> float:
    return float(np.hypot(a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]))


def reading_order(objects: Sequence[dict]) -> list[dict]:
    """Objects top to bottom, then left to right, by centre."""
    return sorted(objects, key=lambda o: (o["center"][1], o["center"][0]))
