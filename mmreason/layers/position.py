"""Fixed 2-D sine-cosine position codes for a square grid of image tokens.

Added to the projected image tokens, they tell the language model where each
token sits in the picture without the vision encoder having to carry it.
"""

from __future__ import annotations

import math

import torch


def sincos_2d(num_tokens: int, width: int) -> torch.Tensor:
    """(num_tokens, width) codes for a raster-ordered square grid; half the channels per axis."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or width % 4:
        raise ValueError(
            f"sincos_2d needs a square token grid and a width divisible by 4, got {num_tokens} tokens, width {width}"
        )
    quarter = width // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(side, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (ys.flatten(), xs.flatten()):
        angles = axis[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)
