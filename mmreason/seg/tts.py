"""StAR's parallel test-time scaling: N sampled masks per question voted into one answer.

For each question, N reasoning samples (StAR: N = 32 at T = 1) each give a
mask (or none) and a score (e.g. the segmenter's predicted IoU, or the mean
mask probability). :func:`aggregate_masks` then:

1. **No-object vote.** A sample votes "no object" when its entry is ``None``
   (no mask produced, a parse failure, or the model answered that nothing
   matches; in :func:`aggregate_batch`, ``valid == False``) *or* its mask is
   empty (no pixel on). If ``votes / N >= no_object_vote`` the answer is the
   empty mask. ``N == 0`` also answers empty.
2. **Clustering** of the remaining (object) masks, greedy leader clustering:
   masks are visited by score, highest first (ties: lower sample index first);
   each joins the first cluster, in creation order, whose representative —
   its first, highest-scoring member — it overlaps at IoU ``>= cluster_iou``;
   otherwise it starts a new cluster. Members are thus listed best first.
3. **Filtering.** A cluster is kept when ``votes / N >= min_share``, N counting
   every sample (no-object votes included). If none qualifies, the largest is
   kept (most votes, then higher mean score, then earlier created).
4. **Choice** among kept clusters by ``(votes, mean score)``, ties going to the
   earlier-created cluster (the one with the higher-scoring representative).
5. **Output.** ``"best"``: the chosen cluster's highest-scoring mask;
   ``"consensus"``: the pixels on in at least half of its members
   (``2·count >= members``, i.e. mean ≥ 0.5, computed exactly in integers). A
   consensus can come out empty; it is returned as is, with ``no_object`` False.

Scores of no-object samples are ignored; a NaN score ranks as ``-inf``.
Shares are compared as ``votes / N >= threshold`` (a correctly rounded
quotient), so e.g. 3 of 10 meets 0.3 exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

OUTPUTS = ("best", "consensus")


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        raise TypeError("masks must be bool (or integer 0/1); threshold logits or probabilities first")
    return mask != 0


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (..., N, H, W) masks → (..., N, N), from one matmul on the flattened masks.

    Intersections are ``F @ Fᵀ`` of the 0/1 flattened masks (float32, exact up to
    2^24 pixels per mask; float64 beyond), areas its diagonal, unions
    ``area_i + area_j - inter``; the quotient is taken in float64 (the result's
    dtype), so an IoU equals Python's ``inter / union`` and threshold
    comparisons (``>= cluster_iou``) are not blurred by float32 rounding. Two
    empty masks have IoU 1.0; an empty mask against a non-empty one 0.0.
    """
    if masks.dim() < 3:
        raise ValueError(f"masks must be (..., N, H, W), got shape {tuple(masks.shape)}")
    flat = _as_bool(masks).flatten(-2)
    dtype = torch.float32 if flat.shape[-1] <= 2**24 else torch.float64
    flat = flat.to(dtype)
    inter = (flat @ flat.transpose(-1, -2)).double()
    area = inter.diagonal(dim1=-2, dim2=-1)
    union = area.unsqueeze(-1) + area.unsqueeze(-2) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def _scores_list(scores: Any, n: int) -> list[float]:
    values = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).tolist()
    if len(values) != n:
        raise ValueError(f"got {len(values)} scores for {n} samples")
    return [-math.inf if math.isnan(v) else v for v in values]


def _stack(masks: Any, shape: tuple[int, int] | None) -> tuple[torch.Tensor, list[bool]]:
    """(N, H, W) bool masks (zeros for None entries) and which entries were given."""
    if isinstance(masks, torch.Tensor):
        if masks.dim() != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
        return _as_bool(masks), [True] * masks.shape[0]
    given = [m is not None for m in masks]
    present = [_as_bool(torch.as_tensor(m)) for m in masks if m is not None]
    if present:
        like = present[0]
        for m in present:
            if m.shape != like.shape or m.dim() != 2:
                raise ValueError(f"masks must all be (H, W) of one shape, got {tuple(m.shape)} and "
                                 f"{tuple(like.shape)}")
        if shape is not None and tuple(like.shape) != tuple(shape):
            raise ValueError(f"masks of shape {tuple(like.shape)} for shape={tuple(shape)}")
    elif shape is None:
        raise ValueError("no mask given to take the output shape from; pass shape=(H, W)")
    else:
        like = torch.zeros(shape, dtype=torch.bool)
    it = iter(present)
    return torch.stack([next(it).to(like.device) if g else torch.zeros_like(like) for g in given]), given


def _aggregate(stack: torch.Tensor, is_object: list[bool], scores: list[float], iou: list[list[float]],
               no_object_vote: float, cluster_iou: float, min_share: float, output: str) -> dict:
    n = len(is_object)
    objects = [i for i in range(n) if is_object[i]]
    if n == 0 or (n - len(objects)) / n >= no_object_vote:
        return {"mask": torch.zeros(stack.shape[-2:], dtype=torch.bool, device=stack.device),
                "no_object": True, "no_object_votes": n - len(objects), "clusters": [], "chosen": -1,
                "sample": -1}
    groups: list[list[int]] = []
    for i in sorted(objects, key=lambda i: (-scores[i], i)):
        for members in groups:
            if iou[members[0]][i] >= cluster_iou:
                members.append(i)
                break
        else:
            groups.append([i])
    clusters = [{"members": members, "votes": len(members),
                 "mean_score": math.fsum(scores[i] for i in members) / len(members),
                 "kept": len(members) / n >= min_share} for members in groups]

    def rank(k: int) -> tuple:
        return clusters[k]["votes"], clusters[k]["mean_score"], -k

    candidates = [k for k, c in enumerate(clusters) if c["kept"]]
    if not candidates:
        largest = max(range(len(clusters)), key=rank)
        clusters[largest]["kept"] = True
        candidates = [largest]
    chosen = max(candidates, key=rank)
    members = clusters[chosen]["members"]
    if output == "best":
        mask = stack[members[0]].clone()
    else:
        mask = stack[members].sum(0, dtype=torch.int64) * 2 >= len(members)
    return {"mask": mask, "no_object": False, "no_object_votes": n - len(objects), "clusters": clusters,
            "chosen": chosen, "sample": members[0]}


def _check(no_object_vote: float, cluster_iou: float, min_share: float, output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    for name, value in (("no_object_vote", no_object_vote), ("cluster_iou", cluster_iou),
                        ("min_share", min_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def aggregate_masks(masks: torch.Tensor | Sequence[Any], scores: Any, no_object_vote: float = 0.5,
                    cluster_iou: float = 0.85, min_share: float = 0.2, output: str = "best",
                    shape: tuple[int, int] | None = None) -> dict:
    """One question's N sampled masks voted into one answer (see the module docstring for the rule).

    masks: an (N, H, W) bool tensor (empty masks vote "no object"), or a sequence
    of N (H, W) bool masks or ``None`` (``None`` and empty masks vote "no object").
    scores: (N,) floats, higher = better. shape: the output (H, W) when every
    entry is ``None``.

    Returns ``{"mask": (H, W) bool (all False for no object), "no_object": bool,
    "no_object_votes": int, "clusters": [{"members": [sample indices, best first],
    "votes": int, "mean_score": float, "kept": bool}, ...] in creation order,
    "chosen": index into clusters (-1 for no object), "sample": the chosen
    cluster's highest-scoring sample (-1 for no object)}``.
    """
    _check(no_object_vote, cluster_iou, min_share, output)
    stack, given = _stack(masks, shape)
    is_object = [g and a for g, a in zip(given, stack.flatten(1).any(1).tolist())]
    iou = mask_iou_matrix(stack).cpu().tolist()
    return _aggregate(stack, is_object, _scores_list(scores, len(given)), iou,
                      no_object_vote, cluster_iou, min_share, output)


def aggregate_batch(masks: torch.Tensor, scores: Any, valid: torch.Tensor | None = None,
                    no_object_vote: float = 0.5, cluster_iou: float = 0.85, min_share: float = 0.2,
                    output: str = "best") -> list[dict]:
    """:func:`aggregate_masks` for B questions × N samples: masks (B, N, H, W) bool, scores (B, N), valid
    (B, N) bool (``False`` = no mask for that sample, the same as a ``None`` entry: a "no object" vote;
    default all valid). Returns one result dict per question. Each question's IoU matrix is one matmul,
    so memory stays at one question's N masks."""
    _check(no_object_vote, cluster_iou, min_share, output)
    if masks.dim() != 4:
        raise ValueError(f"masks must be (B, N, H, W), got shape {tuple(masks.shape)}")
    b, n = masks.shape[:2]
    masks = _as_bool(masks)
    valid = torch.ones(b, n, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if valid.shape != (b, n) or scores.shape != (b, n):
        raise ValueError(f"scores {tuple(scores.shape)} and valid {tuple(valid.shape)} must be (B, N) = {(b, n)}")
    valid = valid.to(masks.device)
    results = []
    for q in range(b):
        stack = masks[q] & valid[q, :, None, None]
        is_object = stack.flatten(1).any(1).tolist()
        iou = mask_iou_matrix(stack).cpu().tolist()
        results.append(_aggregate(stack, is_object, _scores_list(scores[q], n), iou,
                                  no_object_vote, cluster_iou, min_share, output))
    return results
