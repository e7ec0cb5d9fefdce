"""A vision encoder over any timm model, returning a sequence of patch tokens.

ViTs give their patch tokens (prefix/class tokens dropped unless ``keep_prefix_tokens``, as
MM-CoT's features keep the class token); convolutional
networks give their last feature map flattened row-major. Either way the
language model sees ``(batch, tokens, width)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.layers import PatchEmbed
from torch import nn

from mmreason.layers.hf_vision import HFVisionTower

STEMS = ("patch", "conv")


class ConvStemPatchEmbed(PatchEmbed):
    """A ViT patch embedding made of overlapping 3x3 stride-2 convolutions instead of one
    non-overlapping projection ("early convolutions help transformers see better", Xiao et al. 2021):
    shapes that straddle patch borders stay visible, which a tiny ViT trained from scratch needs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        patch, in_chans, width = self.patch_size[0], self.proj.in_channels, self.proj.out_channels
        layers = round(math.log2(patch))
        if 2**layers != patch or self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"stem 'conv' needs a square power-of-two patch size, got {self.patch_size}")
        convs: list[nn.Module] = []
        for i in range(layers):
            out = max(width >> (layers - 1 - i), 16) if i < layers - 1 else width
            convs += [nn.Conv2d(in_chans, out, 3, stride=2, padding=1)] + ([nn.GELU()] if i < layers - 1 else [])
            in_chans = out
        self.proj = nn.Sequential(*convs)


class VisionEncoder(nn.Module):
    """``timm.create_model(name, **overrides)`` with real weights from a local file or the hub.

    Args:
        name: any timm model name.
        overrides: keyword arguments for ``timm.create_model`` (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth`` … — whatever the architecture accepts).
        pretrained: load pretrained weights (from ``weights_file`` if given, else the hub).
        weights_file: a local weights file, so pretrained towers work offline.
        stem: ``patch`` (the model's own) or ``conv`` (:class:`ConvStemPatchEmbed`, ViTs only).
        keep_prefix_tokens: return a ViT's class/register tokens before its patch tokens, as
            ``forward_features`` gives them.
    """

    def __init__(self, name: str, overrides: dict | None = None, pretrained: bool = False,
                 weights_file: str | None = None, stem: str = "patch", keep_prefix_tokens: bool = False):
        super().__init__()
        kwargs = dict(overrides or {})
        if stem not in STEMS:
            raise ValueError(f"unknown vision stem {stem!r}; expected one of {STEMS}")
        if stem == "conv":
            kwargs["embed_layer"] = ConvStemPatchEmbed
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
        self.prefix_tokens = 0 if keep_prefix_tokens else getattr(self.model, "num_prefix_tokens", 0)
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


def build_vision_tower(spec: dict) -> nn.Module:
    """The vision tower a config's ``vision`` names: ``hf: {model_type, config | path, feature_layer,
    select}`` for a transformers CLIP/SigLIP tower, else a timm model (``name``, ``overrides``, …)."""
    if "hf" in spec:
        return HFVisionTower(**spec["hf"])
    if "name" not in spec:
        raise ValueError("vision needs 'name' (a timm model) or 'hf' (a transformers CLIP/SigLIP tower)")
    return VisionEncoder(spec["name"], spec.get("overrides"), spec.get("pretrained", False), spec.get("weights_file"),
                         spec.get("stem", "patch"), bool(spec.get("keep_prefix_tokens", False)))

