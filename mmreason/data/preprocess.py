"""Image loading and preprocessing shared by the shard reader and inference.

One place decides how any user image (any PIL mode, EXIF-rotated, 16-bit,
CMYK, with alpha) becomes the normalised tensor a model sees, so training and
``predict`` can never disagree. The settings travel in every export's
``config.json``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000: 192 MB once decoded to RGB


class ImageTooLarge(ValueError):
    """The image has more pixels than the configured limit."""


def decode_image(source: bytes | str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``source`` lazily and decode it only if it has at most ``max_pixels`` pixels.

    A small file can declare a huge picture (a decompression bomb), so the size
    in its header is checked before any pixel is decoded. PIL's process-wide
    ``Image.MAX_IMAGE_PIXELS`` is left as the caller set it: its warning is
    silenced here because ``max_pixels`` is the limit in force, and its hard
    refusal (above twice that value) is reported as :class:`ImageTooLarge` too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            if isinstance(source, Image.Image):
                image = source
            else:
                image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                                    f"{max_pixels:,} pixels (max_pixels)")
            image.load()
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(f"{err}; the limit in force is {max_pixels:,} pixels (max_pixels)") from err
    return image


RESIZES = ("squash", "crop", "pad", "longest")


@dataclass
class Preprocess:
    """``resize``: how an image becomes a square of ``image_size``: ``squash`` (resize, ignoring the
    aspect ratio), ``crop`` (CLIP's processor: the shorter side to ``image_size``, then the centre),
    ``pad`` (LLaVA-1.5: pad to a square with the mean colour, then resize), ``longest`` (SAM: the longer
    side to ``image_size``, bilinear, then padded at the bottom and right)."""

    image_size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"preprocess resize must be one of {RESIZES}, got {self.resize!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
            max_pixels=int(d.get("max_pixels", cls.max_pixels)), resize=d.get("resize", cls.resize),
        )

    def open_rgb(self, source: bytes | str | Path | Image.Image) -> Image.Image:
        """Open any image as upright RGB, refusing images over ``max_pixels`` before decoding them."""
        image = decode_image(source, self.max_pixels)  # decoded: EXIF found anywhere in the file is in image.info
        if image.info.get("exif"):
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)

    def _place(self, image: Image.Image, resample: int, fill) -> Image.Image:
        """``image`` made a square of ``image_size`` as ``resize`` says (masks take the same geometry as
        their image: only ``resample`` and the ``fill`` of padding differ)."""
        side = self.image_size
        width, height = image.size
        if self.resize == "longest":
            height, width = longest_side_shape(height, width, side)
            square = Image.new(image.mode, (side, side), fill)
            square.paste(image.resize((width, height), resample) if image.size != (width, height) else image)
            return square
        if self.resize == "pad" and width != height:
            square = Image.new(image.mode, (max(width, height),) * 2, fill)
            square.paste(image, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
            image, width, height = square, *square.size
        if self.resize == "crop" and width != height:
            short, long = min(width, height), max(width, height)
            scaled = (side, int(side * long / short))  # (short side, long side), as CLIP's processor rounds
            image = image.resize(scaled if width <= height else scaled[::-1], resample)
            left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
            image = image.crop((left, top, left + side, top + side))
        return image.resize((side, side), resample) if image.size != (side, side) else image

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """A square of ``image_size`` made by ``resize``: (S, S, 3) uint8, as PIL lays it out — cheap to
        stack, a quarter of the bytes of float32 to pass between processes. ``longest`` pads with the
        mean colour rounded to 8 bits (SAM pads the normalised image with exact zeros: :meth:`__call__`)."""
        longest = self.resize == "longest"
        fill = tuple(round(m * 255) if longest else int(m * 255) for m in self.mean)  # LLaVA's pad truncates
        placed = self._place(image, Image.BILINEAR if longest else Image.BICUBIC, fill)
        return torch.from_numpy(np.asarray(placed, dtype=np.uint8).copy())

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., S, S, 3) to the float32 (..., 3, S, S) input the model expects; one op per batch."""
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return pixels.movedim(-1, -3).float() * (1.0 / (255.0 * std)) - mean / std

    def mask_to_tensor(self, mask: Image.Image) -> torch.Tensor:
        """A 0/255 mask (255 may also mark ignore in converted data) at model resolution, uint8, placed
        as its image is (padding is background)."""
        return torch.from_numpy(np.asarray(self._place(mask.convert("L"), Image.NEAREST, 0), dtype=np.uint8).copy())

    def __call__(self, source) -> torch.Tensor:
        """One image, ready for the model: (3, S, S) float32 (``longest``: padded after normalising, as SAM)."""
        image = self.open_rgb(source)
        if self.resize != "longest":
            return self.normalize(self.to_pixels(image))
        height, width = longest_side_shape(image.height, image.width, self.image_size)
        resized = torch.from_numpy(np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.uint8).copy())
        pad = self.image_size
        return torch.nn.functional.pad(self.normalize(resized), (0, pad - width, 0, pad - height))


def longest_side_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) with the longer side scaled to ``side``, rounded as SAM's ``ResizeLongestSide``."""
    scale = side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha over white, 16-/32-bit scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image if image.mode == "RGB" else image.convert("RGB")
