"""Pictures of what a model found: crop boxes, or a segmentation mask, drawn on the input image, with the
question and the answer in a caption band below it so a saved picture explains itself."""

from __future__ import annotations

import torch
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")
MISSING, INFO = "#c0392b", "#555555"  # a note that nothing was found stands out; others stay quiet
NO_OBJECT, NO_CROPS = "no object found", "no crops"


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (no font file to ship or find)."""
    return ImageFont.load_default(size=size)


def upscaled(picture: Image.Image, min_side: int = 256) -> Image.Image:
    """``picture`` as RGB, enlarged (nearest, so pixels stay crisp) until its short side is ``min_side``."""
    picture = picture.convert("RGB")
    scale = max(1.0, min_side / min(picture.size))
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)


def wrap(text: str, face: ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels, at spaces where it can be
    (a word too long for one line is broken inside)."""
    lines, line = [], ""
    for word in text.split():
        while len(word) > 1 and face.getlength(word) > width:
            cut = next((i for i in range(len(word) - 1, 0, -1) if face.getlength(word[:i]) <= width), 1)
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}".strip()
        if line and face.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def caption_lines(question: str | None = None, answer: str | None = None, note: str | None = None,
                  note_colour: str = MISSING) -> list[tuple[str, str]]:
    """(text, colour) of each caption entry: the question, the answer, and a note such as
    "no object found" in a colour of its own."""
    entries = []
    if question:
        entries.append((f"Q: {question}", "black"))
    if answer is not None:
        entries.append((f"A: {answer}", "black"))
    if note:
        entries.append((note, note_colour))
    return entries


def with_caption(picture: Image.Image, entries: list[tuple[str, str]], size: int | None = None) -> Image.Image:
    """``picture`` with a white band below it holding ``entries`` (:func:`caption_lines`), wrapped to the
    picture's width; the font grows with the picture so the text reads at any size."""
    if not entries:
        return picture
    size = size or max(13, round(picture.width / 24))
    face, margin, spacing = font(size), max(4, size // 2), max(2, size // 4)
    lines = [(line, colour) for text, colour in entries for line in wrap(text, face, picture.width - 2 * margin)]
    height = 2 * margin + len(lines) * (size + spacing) - spacing
    framed = Image.new("RGB", (picture.width, picture.height + height), "white")
    framed.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(framed)
    for i, (line, colour) in enumerate(lines):
        draw.text((margin, picture.height + margin + i * (size + spacing)), line, fill=colour, font=face)
    return framed


def binary_mask(mask: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """A boolean mask as an 8-bit black and white picture of ``size`` (width, height)."""
    return Image.fromarray(mask.to(torch.uint8).mul(255).cpu().numpy()).resize(size, Image.NEAREST)


def tinted(picture: Image.Image, mask: torch.Tensor, colour=(230, 25, 75), alpha: float = 0.5,
           fade: float = 0.5) -> Image.Image:
    """``picture`` with a boolean ``mask`` (any resolution; resized to the picture) tinted on it, its edge
    drawn in full colour and the rest faded toward white by ``fade``, so the region shows even on an
    object of the tint's own colour (an empty mask leaves the picture as it is)."""
    binary = binary_mask(mask, picture.size)
    if not binary.getbbox():
        return picture.copy()
    inside = Image.blend(picture, Image.new("RGB", picture.size, colour), alpha)
    overlay = Image.composite(inside, Image.blend(picture, Image.new("RGB", picture.size, "white"), fade), binary)
    width = max(3, 2 * round(min(picture.size) / 128) + 1)  # odd, for the filter
    edge = ImageChops.difference(binary.filter(ImageFilter.MaxFilter(width)), binary)  # the ring just outside
    overlay.paste(Image.new("RGB", picture.size, colour), mask=edge)
    return overlay


def draw_crops(picture: Image.Image, boxes: list[list[float]], input_size: int, out: str | None = None,
               question: str | None = None, answer: str | None = None, min_side: int = 256) -> Image.Image:
    """``picture`` with ``boxes`` (in the pixels of the model's square ``input_size`` input) drawn on it,
    each labelled with its number in action order, captioned; saved to ``out`` when given. Small images
    are upscaled to ``min_side`` so boxes stay visible."""
    picture = upscaled(picture, min_side)
    sx, sy = picture.width / input_size, picture.height / input_size
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 128))
    face = font(max(12, round(min(picture.size) / 18)))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=colour, width=width)
        _, _, right, bottom = draw.textbbox((x0 * sx, y0 * sy), str(i + 1), font=face)
        draw.rectangle([x0 * sx, y0 * sy, right + 2 * width, bottom + 2 * width], fill=colour)
        draw.text((x0 * sx + width, y0 * sy + width), str(i + 1), fill="white", font=face)
    if boxes:
        entries = caption_lines(question, answer, f"{len(boxes)} crop(s), numbered in the order taken", INFO)
    else:
        entries = caption_lines(question, answer, NO_CROPS)
    framed = with_caption(picture, entries)
    if out:
        framed.save(out)
    return framed


def draw_mask(picture: Image.Image, mask: torch.Tensor, out: str | None = None, question: str | None = None,
              answer: str | None = None, found: bool = True, colour=(230, 25, 75), alpha: float = 0.5,
              min_side: int = 256) -> Image.Image:
    """``picture`` with a boolean ``mask`` tinted on it, captioned ("no object found" when the model said
    so or the mask is empty); saved to ``out`` when given, with the mask itself as ``<out stem>-mask.png``."""
    picture = upscaled(picture, min_side)
    overlay = tinted(picture, mask, colour, alpha)
    note = NO_OBJECT if not found or not bool(mask.any()) else None
    framed = with_caption(overlay, caption_lines(question, answer, note))
    if out:
        framed.save(out)
        binary_mask(mask, picture.size).save(str(out).rsplit(".", 1)[0] + "-mask.png")
    return framed


def draw_prediction(picture: Image.Image, question: str | None, prediction: dict, out: str | None = None
                    ) -> Image.Image:
    """What a model's ``predict`` found, drawn as its family reports it: crops, a mask, or (for families
    that report neither) the picture with the question and answer."""
    answer = prediction.get("answer")
    if "crops" in prediction:
        return draw_crops(picture, prediction["crops"], prediction["input_size"], out, question, answer)
    if "mask" in prediction:
        return draw_mask(picture, prediction["mask"], out, question, answer, prediction.get("found", True))
    framed = with_caption(upscaled(picture), caption_lines(question, answer))
    if out:
        framed.save(out)
    return framed
