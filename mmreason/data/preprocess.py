"""Image loading and preprocessing shared by the shard reader and inference.

One place decides how any user image (any PIL mode, EXIF-rotated, 16-bit,
CMYK, with alpha) becomes the normalised tensor a model sees, so training and
``predict`` can never disagree. The settings travel in every export's
``config.json``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit before decoding


class ImageTooLarge(ValueError):
    """The image has more pixels than the configured limit."""


@dataclass
class Preprocess:
    image_size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_pixels: int = 64_000_000

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
            max_pixels=int(d.get("max_pixels", cls.max_pixels)),
        )

    def open_rgb(self, source: bytes | str | Path | Image.Image) -> Image.Image:
        """Open any image as upright RGB, refusing images over ``max_pixels``."""
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(source)
        width, height = image.size
        if width * height > self.max_pixels:
            raise ImageTooLarge(f"image of {width}x{height} pixels exceeds max_pixels={self.max_pixels}")
        image.load()  # after loading, EXIF found anywhere in the file is in image.info
        if image.info.get("exif"):
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """Resize to a square ``image_size``: (S, S, 3) uint8, as PIL lays it out — cheap to stack,
        a quarter of the bytes of float32 to pass between processes."""
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., S, S, 3) to the float32 (..., 3, S, S) input the model expects; one op per batch."""
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return pixels.movedim(-1, -3).float() * (1.0 / (255.0 * std)) - mean / std

    def mask_to_tensor(self, mask: Image.Image) -> torch.Tensor:
        """A 0/255 mask (255 may also mark ignore in converted data) at model resolution, uint8."""
        mask = mask.convert("L")
        if mask.size != (self.image_size, self.image_size):
            mask = mask.resize((self.image_size, self.image_size), Image.NEAREST)
        return torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy())

    def __call__(self, source) -> torch.Tensor:
        """One image, ready for the model: (3, S, S) float32."""
        return self.normalize(self.to_pixels(self.open_rgb(source)))


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
