"""Projectors from vision width to language width, named by a short string (LLaVA convention)."""

from __future__ import annotations

import re

from torch import nn

PROJECTOR_NAMES = ("identity", "linear", "mlp{N}x_gelu (e.g. mlp2x_gelu)")


def build_projector(spec: str, in_dim: int, out_dim: int) -> nn.Module:
    """``linear``; ``mlp{N}x_gelu`` = N linear layers with GELU between; ``identity`` (equal widths)."""
    if spec == "linear":
        return nn.Linear(in_dim, out_dim)
    if spec == "identity":
        if in_dim != out_dim:
            raise ValueError(f"projector 'identity' needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", spec)
    if match and int(match.group(1)) >= 1:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector {spec!r}; valid projectors: {', '.join(PROJECTOR_NAMES)}")
