"""Hugging Face vision towers (CLIP, SigLIP, SAM's ViT) beside timm's, selecting features as LLaVA does.

Released vision-language models ship their encoder as a transformers model:
LLaVA-1.5 reads CLIP ViT-L/14-336's second-to-last layer (``feature_layer: -2``,
before the final layer norm) without its CLS token (``select: default``);
SigLIP has no CLS token, so ``default`` and ``full`` agree there. SAM's image
encoder (LISA's second tower) gives its neck's output, the image embeddings SAM's
mask decoder reads, as a row-major grid of tokens; ``feature_layer`` does not apply.
Hosting transformers' own classes keeps released weights loadable by name.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    SamVisionConfig,
    SamVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mmreason.layers.language import resolve_path

HF_VISION_MODELS = {"clip_vision_model": (CLIPVisionConfig, CLIPVisionModel),
                    "siglip_vision_model": (SiglipVisionConfig, SiglipVisionModel),
                    "sam_vision_model": (SamVisionConfig, SamVisionModel)}
SELECTS = ("default", "full")  # LLaVA's vision_feature_select_strategy


class HFVisionTower(nn.Module):
    """Args:
    model_type: ``clip_vision_model``, ``siglip_vision_model`` or ``sam_vision_model``.
    config: the vision config's fields (random init), or ``path``: a folder or hub id to load.
    feature_layer: which hidden state to read (0 = embeddings, -1 = the last layer, before the
        final layer norm); LLaVA-1.5 reads -2.
    select: ``default`` drops the CLS token (CLIP), ``full`` keeps every token.
    """

    def __init__(self, model_type: str, config: dict | None = None, path: str | None = None,
                 feature_layer: int = -2, select: str = "default"):
        super().__init__()
        if model_type not in HF_VISION_MODELS:
            raise ValueError(f"unknown vision model_type {model_type!r}; expected one of {sorted(HF_VISION_MODELS)}")
        if select not in SELECTS:
            raise ValueError(f"vision select must be one of {SELECTS}, got {select!r}")
        if (config is None) == (path is None):
            raise ValueError("an HF vision tower needs exactly one of 'config' (its fields) or 'path'")
        config_class, model_class = HF_VISION_MODELS[model_type]
        if path is not None:
            self.model = model_class.from_pretrained(resolve_path(path))
        else:
            self.model = model_class(config_class(**{k: v for k, v in config.items() if k != "model_type"}))
        layers = self.model.config.num_hidden_layers
        if not -layers - 1 <= feature_layer <= layers:
            raise ValueError(f"feature_layer {feature_layer} is outside the tower's {layers} layers (+ embeddings)")
        self.feature_layer = feature_layer
        self.prefix_tokens = 1 if select == "default" and model_type == "clip_vision_model" else 0
        config = self.model.config
        self.width = config.output_channels if isinstance(self.model, SamVisionModel) else config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, SamVisionModel):  # (B, C, g, g) image embeddings → (B, g², C)
            return self.model(pixel_values=images).last_hidden_state.flatten(2).transpose(1, 2)
        out = self.model(pixel_values=images, output_hidden_states=True)
        return out.hidden_states[self.feature_layer][:, self.prefix_tokens :]

    def num_tokens(self, image_size: int) -> int:
        return (image_size // self.model.config.patch_size) ** 2 + (
            1 if isinstance(self.model, CLIPVisionModel) else 0) - self.prefix_tokens
