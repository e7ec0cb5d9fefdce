"""Pictures of what a model found: crop boxes, or a segmentation mask, drawn on the input image."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def draw_crops(picture: Image.Image, boxes: list[list[float]], input_size: int, out: str,
               min_side: int = 256) -> Image.Image:
    """Save ``picture`` with ``boxes`` (in the pixels of the model's square ``input_size`` input) drawn
    on it, numbered in action order; small images are upscaled to ``min_side`` so boxes stay visible."""
    scale = max(1.0, min_side / min(picture.size))
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    sx, sy = picture.width / input_size, picture.height / input_size
    draw = ImageDraw.Draw(picture)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=colour, width=max(1, round(scale)))
        draw.text((x0 * sx + 2, y0 * sy + 1), str(i + 1), fill=colour)
    picture.save(out)
    return picture


def draw_mask(picture: Image.Image, mask: torch.Tensor, out: str, colour=(230, 25, 75), alpha: float = 0.5,
              min_side: int = 256) -> Image.Image:
    """Save ``picture`` with a boolean ``mask`` (any resolution; resized to the picture) tinted on it,
    and the mask itself next to the overlay as ``<out stem>-mask.png``."""
    picture = picture.convert("RGB")
    scale = max(1.0, min_side / min(picture.size))
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    binary = Image.fromarray(mask.to(torch.uint8).mul(255).numpy()).resize(picture.size, Image.NEAREST)
    tint = Image.new("RGB", picture.size, colour)
    overlay = Image.composite(Image.blend(picture, tint, alpha), picture, binary)
    overlay.save(out)
    binary.save(str(out).rsplit(".", 1)[0] + "-mask.png")
    return overlay
