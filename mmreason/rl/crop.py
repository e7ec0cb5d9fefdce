"""Crop actions as pure functions: write, parse, clamp and apply ``<crop>…</crop>`` boxes.

A crop action is the visual analogue of a reasoning step (ViRL); the
multi-turn loop that pauses after ``</crop>`` and feeds the crop back as new image
tokens is mmreason's design and lives elsewhere — nothing here holds a model.

Boxes are ``[x0, y0, x1, y1]`` in pixels, x to the right, y down, x1/y1 exclusive.
Two text forms are read, because the word-level tokenizer has the digits 0–9 and
``,`` but no brackets and no multi-digit numbers, while real tokenizers write JSON-like
lists: ``<crop> 2 5 , 1 6 , 3 4 , 2 5 </crop>`` and ``<crop>[25,16,34,25]</crop>`` are
the same box. Model output never makes a parser raise: a malformed box reads as ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

CROP_OPEN = "<crop>"
CROP_CLOSE = "</crop>"

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# An action is a ``</crop>`` and the text since the last ``<crop>`` before it: an opener
# that is never closed is plain text, not an action.
_CROP = re.compile(rf"{CROP_OPEN}((?:(?!{CROP_OPEN}).)*?){CROP_CLOSE}", re.DOTALL)


def format_numbers(numbers: Sequence[float]) -> str:
    """``[25, 16, 5]`` → ``"2 5 , 1 6 , 5"``: rounded, one token per digit (a word-level vocabulary
    has the ten digits, not every number). Negative numbers have no text form (no ``-``)."""
    values = [round(float(v)) for v in numbers]
    if min(values) < 0:
        raise ValueError(f"{list(numbers)} has a negative coordinate; clamp it to the image first")
    return " , ".join(" ".join(str(v)) for v in values)


def parse_numbers(text: str, count: int) -> list[float] | None:
    """``count`` comma-separated numbers, bracketed or not, spaces anywhere (``"2 5 . 5"`` is 25.5);
    ``None`` when malformed."""
    body = text.strip()
    if body[:1] == "[" and body[-1:] == "]":
        body = body[1:-1]
    parts = ["".join(part.split()) for part in body.split(",")]
    if len(parts) != count or not all(_NUMBER.fullmatch(part) for part in parts):
        return None
    return [float(part) for part in parts]


def format_box(box: Sequence[float]) -> str:
    """``[25, 16, 34, 5]`` → ``"2 5 , 1 6 , 3 4 , 5"``; clamp to the image first."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates [x0, y0, x1, y1], got {len(box)}")
    return format_numbers(box)


def crop_text(box: Sequence[float]) -> str:
    """The whole action as the policy writes it: ``"<crop> 2 5 , … </crop>"``."""
    return f"{CROP_OPEN} {format_box(box)} {CROP_CLOSE}"


def parse_box(text: str) -> list[float] | None:
    """The 4 numbers of one box body, in either text form, or ``None`` when malformed.

    Whitespace may sit anywhere: it is dropped inside a number (``"2 5 . 5"`` is 25.5)
    and around brackets and commas. Malformed: brackets on one side only, not exactly
    four comma-separated numbers, or an empty box (x1 <= x0 or y1 <= y0).
    """
    numbers = parse_numbers(text, 4)
    if numbers is None:
        return None
    x0, y0, x1, y1 = numbers
    return numbers if x1 > x0 and y1 > y0 else None


def parse_crops(text: str) -> list[list[float] | None]:
    """Every complete crop action in order of emission; ``None`` marks a malformed one.

    Keeping malformed actions in the list lets step credit count them as erroneous.
    """
    return [parse_box(body) for body in _CROP.findall(text)]


def crop_segments(text: str) -> list[tuple[str, list[float] | None | bool]]:
    """``text`` cut into its pieces in order: ``(words, False)`` for text, ``(action, box)`` for each complete
    crop action (``box`` its parsed body, None when malformed)."""
    pieces, at = [], 0
    for match in _CROP.finditer(text):
        if text[at : match.start()].strip():
            pieces.append((text[at : match.start()].strip(), False))
        pieces.append((match.group(0), parse_box(match.group(1))))
        at = match.end()
    if text[at:].strip():
        pieces.append((text[at:].strip(), False))
    return pieces


def strip_crops(text: str) -> str:
    """``text`` without its crop actions, whitespace collapsed."""
    return " ".join(_CROP.sub(" ", text).split())


def _clamp_span(lo: int, hi: int, extent: int, min_size: int) -> tuple[int, int]:
    lo, hi = min(max(lo, 0), extent), min(max(hi, 0), extent)
    need = min(min_size, extent)
    if hi - lo >= need:
        return lo, hi
    start = min(max((lo + hi - need) // 2, 0), extent - need)
    return start, start + need


def clamp_box(box: Sequence[float], width: int, height: int, min_size: int = 1) -> list[int]:
    """A box the image can be cropped to: ints, inside ``width × height``, at least ``min_size`` a side.

    Per axis: round to ints, clamp both ends to ``[0, extent]``; a span shorter than
    ``min_size`` grows about its centre (an odd extra pixel goes to the far side) and is
    shifted back inside if it crosses an edge, so a tiny box at a border stays at that
    border. A ``min_size`` beyond the image gives that whole axis. A box entirely off
    the image collapses onto the nearest edge and grows from there, so the result is
    never empty.
    """
    if width < 1 or height < 1 or min_size < 1:
        raise ValueError(f"width, height and min_size must be at least 1, got {width}, {height}, {min_size}")
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, x1 = _clamp_span(x0, x1, width, min_size)
    y0, y1 = _clamp_span(y0, y1, height, min_size)
    return [x0, y0, x1, y1]


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor | Sequence[Sequence[float]], size: int,
                    min_size: int = 1) -> torch.Tensor:
    """Images (B, C, H, W) and one box per image (pixels of the tensor) → crops (B, C, size, size).

    Each box goes through :func:`clamp_box`, so the crop is an exact integer slice, then
    a bilinear resize (``align_corners=False``; antialiased, which only acts when a
    crop shrinks). A loop of slices rather than ``torchvision.ops.roi_align``: roi_align
    samples a fixed grid at float coordinates with no antialiasing, while slicing keeps a
    crop the size of ``size`` bit-identical to the image region, and B is one crop per
    rollout, so one small kernel each is cheap next to encoding the crops. The resize
    runs in float32 (CPU has no bf16 antialiasing) and returns the images' dtype.
    Bilinear resizing is linear, so cropping normalised images equals normalising crops.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    boxes = boxes.tolist() if isinstance(boxes, torch.Tensor) else list(boxes)
    if len(boxes) != images.shape[0]:
        raise ValueError(f"{len(boxes)} boxes for {images.shape[0]} images; pass one box per image")
    height, width = images.shape[-2:]
    crops = []
    for image, box in zip(images, boxes):
        x0, y0, x1, y1 = clamp_box(box, width, height, min_size)
        crop = image[None, :, y0:y1, x0:x1].float()
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True).to(images.dtype))
    return torch.cat(crops) if crops else images.new_empty((0, images.shape[1], size, size))
