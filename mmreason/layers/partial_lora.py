"""Partial LoRA: low-rank updates applied only at the image-token positions of a language model.

InternLM-XComposer2's "PLoRA", which Meteor's backbone keeps (Lee et al., NeurIPS 2024;
BK-Lee/Meteor ``meteor/arch/build_module.py``, class ``LoRA``): each wrapped projection computes
``W x + b`` everywhere and adds ``B(A x) · alpha / rank`` only where the token is an image token.
Because the update depends on the position, it cannot be merged into ``W``; the wrapped layers
keep ``W`` under its own name (``q_proj.weight``) and add ``lora_A`` / ``lora_B`` beside it.

Which positions are image tokens is set once per prompt on a shared :class:`ImageTokenMask`
(``tokens``: (B, L), the whole prompt); a forward pre-hook on the language model picks, for
each call, the window of those positions the call covers (after the tokens already cached,
rows repeated when a prompt is sampled several times). Positions beyond the prompt, i.e.
generated tokens, get no update, as upstream's generation steps pass an all-false mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ImageTokenMask:
    """The image-token positions of the current prompt (``tokens``), and the window of them
    that the language model's current call reads (``active``, None: no update anywhere)."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None
        self.active: torch.Tensor | None = None

    def select(self, batch: int, length: int, offset: int) -> None:
        tokens = self.tokens
        if tokens is None or batch % tokens.shape[0]:
            self.active = None
            return
        tokens = tokens.repeat_interleave(batch // tokens.shape[0], dim=0)
        window = tokens[:, offset:offset + length]
        if window.shape[1] < length:  # generated tokens are never image tokens
            window = torch.cat([window, window.new_zeros(batch, length - window.shape[1])], dim=1)
        self.active = window if bool(window.any()) else None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """The language model's forward pre-hook: the window of ``tokens`` this call reads, after the
        tokens its cache already holds (a method, so a deep-copied model keeps hook and layers together)."""
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values")
        offset = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        self.select(inputs.shape[0], inputs.shape[1], offset)


class PartialLoRALinear(nn.Linear):
    """A Linear (same ``weight``/``bias`` names) plus ``lora_B(lora_A(x)) · scale`` at the positions
    ``positions.active`` marks; ``lora_B`` starts at zero, so a fresh wrapper changes nothing."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, scale: float,
                 positions: ImageTokenMask, dropout: float = 0.0):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout)
        self.scale, self.positions = scale, positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        mask = self.positions.active
        if mask is None or mask.shape != x.shape[:-1]:
            return out
        mask = mask.to(x.device)
        update = self.lora_B(self.lora_A(self.lora_dropout(x[mask]))) * self.scale
        return out.index_put((mask,), update.to(out.dtype), accumulate=True)


def apply_partial_lora(model: nn.Module, rank: int, alpha: float, targets: list[str],
                       dropout: float = 0.0) -> ImageTokenMask:
    """Replace every Linear of ``model`` whose name ends with one of ``targets`` (e.g. ``q_proj``) by a
    :class:`PartialLoRALinear` holding the same weights; returns the mask the caller sets per prompt."""
    positions = ImageTokenMask()
    wrapped = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and name.split(".")[-1] in targets:
            layer = PartialLoRALinear(module.in_features, module.out_features, module.bias is not None, rank,
                                      alpha / rank, positions, dropout)
            layer.to(module.weight.device, module.weight.dtype)
            layer.weight, layer.bias = module.weight, module.bias
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], layer)
            wrapped.append(name)
    missing = sorted(set(targets) - {name.split(".")[-1] for name in wrapped})
    if missing:
        raise ValueError(f"partial_lora targets {missing} name no Linear layer of the language model")
    model.register_forward_pre_hook(positions, with_kwargs=True)
    return positions
