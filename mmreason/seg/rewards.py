"""Rewards of the RL segmentation path (StAR / Seg-Zero), in the TRL reward signature.

The policy's answer is turned into masks by the model's promptable decoder (the
``mask_ious`` column, :meth:`StarSegmenter.reward_columns`); predicted and
target objects are Hungarian-matched on IoU, and each target scores StAR's tier of
its matched IoU (.3–.5 → 1, .5–.7 → 2, .7–.8 → 3, .8–.9 → 4, > .9 → 5; unmatched 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mmreason.eval.answers import extract_answer_span
from mmreason.seg.answers import parse_box_points

TIERS = ((0.8, 4), (0.7, 3), (0.5, 2), (0.3, 1))  # lower bounds, inclusive; above 0.9 is tier 5


def iou_tier(iou: float) -> int:
    if iou > 0.9:
        return 5
    return next((tier for low, tier in TIERS if iou >= low), 0)


def matched_ious(predicted: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> list[float]:
    """Per target mask, the IoU of the predicted mask the Hungarian matching (max total IoU) gives it
    (0 when there are fewer predictions than targets)."""
    if not targets:
        return []
    if not predicted:
        return [0.0] * len(targets)
    p = torch.stack([m.flatten().float() for m in predicted])
    t = torch.stack([m.flatten().float() for m in targets])
    intersection = t @ p.T
    union = t.sum(1, keepdim=True) + p.sum(1) - intersection
    iou = (intersection / union.clamp(min=1)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    out = np.zeros(len(targets))
    out[rows] = iou[rows, cols]
    return out.tolist()


def mask_iou_reward(prompts: Sequence[Any], completions: Sequence[str], *, mask_ious: Sequence[Sequence[float]],
                    **columns: Any) -> list[float]:
    """Mean tier (0–5) over the sample's target objects; 0 for a sample without targets."""
    if len(mask_ious) != len(completions):
        raise ValueError(f"column 'mask_ious' has {len(mask_ious)} values for {len(completions)} completions")
    return [sum(iou_tier(v) for v in ious) / len(ious) if ious else 0.0 for ious in mask_ious]


def box_point_format_reward(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
    """1 when the answer holds at least one well-formed box and point, else 0."""
    return [1.0 if parse_box_points(extract_answer_span(c)) else 0.0 for c in completions]
