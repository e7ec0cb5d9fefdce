"""MM-CoT's fusion of image features into the text encoder's states.

Single-head attention from text states H to projected image features V gives
A; a learned gate λ = σ(W[H; A]) mixes them per dimension: H' = (1−λ)H + λA.
The decoder then cross-attends to H', so the image reaches every decoding
step without adding tokens to the decoder's context.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedCrossAttentionFusion(nn.Module):
    def __init__(self, d_model: int, feature_dim: int):
        super().__init__()
        self.image_proj = nn.Linear(feature_dim, d_model)
        self.attention = nn.MultiheadAttention(d_model, num_heads=1, batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model)

    def forward(self, text_states: torch.Tensor, image_features: torch.Tensor,
                return_gate: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """text_states (B, T, d), image_features (B, N, feature_dim) → fused states (B, T, d)."""
        values = self.image_proj(image_features.to(text_states.dtype))
        attended, _ = self.attention(text_states, values, values, need_weights=False)
        gate = torch.sigmoid(self.gate(torch.cat([text_states, attended], dim=-1)))
        fused = (1 - gate) * text_states + gate * attended
        return (fused, gate) if return_gate else fused
