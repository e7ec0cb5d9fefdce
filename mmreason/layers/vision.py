"""A vision encoder over any timm model, returning a sequence of patch tokens.

ViTs give their patch tokens (prefix/class tokens dropped); convolutional
networks give their last feature map flattened row-major. Either way the
language model sees ``(batch, tokens, width)``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class VisionEncoder(nn.Module):
    """``timm.create_model(name, **overrides)`` with real weights from a local file or the hub.

    Args:
        name: any timm model name.
        overrides: keyword arguments for ``timm.create_model`` (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth`` … — whatever the architecture accepts).
        pretrained: load pretrained weights (from ``weights_file`` if given, else the hub).
        weights_file: a local weights file, so pretrained towers work offline.
    """

    def __init__(self, name: str, overrides: dict | None = None, pretrained: bool = False,
                 weights_file: str | None = None):
        super().__init__()
        kwargs = dict(overrides or {})
        if weights_file is not None:
            if not Path(weights_file).is_file():
                raise FileNotFoundError(f"vision weights file {weights_file!r} does not exist")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(weights_file))
            pretrained = True
        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
        except RuntimeError as exn:
            if "Unknown model" in str(exn):
                raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for valid names") from exn
            raise
        self.prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)
        self.width = self.model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if features.dim() == 4:  # (B, C, H, W) from a CNN
            return features.flatten(2).transpose(1, 2)
        return features[:, self.prefix_tokens :]

    @torch.no_grad()
    def num_tokens(self, image_size: int) -> int:
        """Tokens per image, measured once with a dummy forward (exact for any architecture)."""
        was_training = self.training
        self.eval()
        n = self(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.train(was_training)
        return n
