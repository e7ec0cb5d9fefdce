"""Self-consistency fusion of K decoder passes' logits (MC-CoT training).

The decoder runs K times on the same encoder states, dropout making the
passes differ; the loss is taken on one fused logit tensor.

``soft`` (the paper's rule, Tan et al. 2024): per token and vocabulary entry, mean μ
and standard deviation σ over the K passes, w = 1/(1+σ), μ_w = Σ_k w·ℓ_k / Σ_k w,
fused = α·μ + (1−α)·μ_w. Because w does not depend on k, μ_w equals μ, so
the fused logits are the mean of the passes whatever α is; the tests pin this down.

``released`` reproduces MC-CoT's released code, which computes
``sum(w * stacked, 0) / sum(w, 0)`` with w of shape (B, T, V): the denominator sums
w over the *batch*, not the passes, so the fused logits depend on the batch size
(B = 1 gives (α + (1−α)K)·μ). Logits must then be (K, B, ..., V).

``hard`` (ablation): per token, the majority of the K argmax tokens; the
fused logits are the mean over the passes whose argmax agrees with it.
"""

from __future__ import annotations

import torch

VOTES = ("soft", "hard", "released")


def fuse_pass_logits(logits: torch.Tensor, alpha: float = 0.5, vote: str = "soft") -> torch.Tensor:
    """logits (K, ..., V) from K passes → fused (..., V)."""
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
    if logits.shape[0] == 1:
        return logits[0]
    if vote == "soft":
        mean = logits.mean(0)
        weights = 1.0 / (1.0 + logits.std(0))
        weighted_mean = (weights * logits).sum(0) / (weights * logits.shape[0])
        return alpha * mean + (1 - alpha) * weighted_mean
    if vote == "released":
        weights = 1.0 / (1.0 + logits.std(0))  # (B, ..., V)
        return alpha * logits.mean(0) + (1 - alpha) * (weights * logits).sum(0) / weights.sum(0)
    choices = logits.argmax(-1)  # (K, ...)
    majority = choices.mode(0).values  # ties → the smallest token id
    agree = (choices == majority).unsqueeze(-1).to(logits.dtype)
    return (agree * logits).sum(0) / agree.sum(0)
