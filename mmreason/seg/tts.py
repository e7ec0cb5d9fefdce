"""StAR's parallel test-time scaling: N sampled answers voted into one mask.

The rules are those of StAR's evaluation code (``evaluation_scripts/evaluation_star.py``: the
majority-voting branch, ``cluster_mask_candidates`` and ``aggregate_cluster_mask``). Each of the N
samples (StAR: N = 32 at T = 1) is one of

- ``None``: its answer failed to parse. It is dropped: N counts the other samples only.
- ``[]``: it answered "no object" (no box, no ``<seg>``): a "no object" vote.
- the masks of the objects it names, each with a score (the segmenter's predicted IoU). Every
  mask is a candidate, an empty one included.

:func:`aggregate_masks` then:

1. **No object.** With N = 0, or ``no_object_votes / N >= no_object_vote``, the answer is empty.
2. **Object count** K: the most frequent object count among the samples naming objects (ties:
   the count seen first).
3. **Clustering** of every candidate, greedy in sample order (a sample's objects in answer order):
   a mask joins the first cluster, in creation order, whose representative — its earliest member —
   it overlaps at IoU ``>= cluster_iou``, else it starts a cluster. The IoU of two empty masks is
   0, as upstream computes it, so empty masks do not cluster (for ``cluster_iou > 0``).
4. **Filtering.** A cluster's votes are its distinct samples (two objects of one answer in one
   cluster count once); it is kept when ``votes / N >= min_share``. If none is, all are.
5. **Choice.** Kept clusters are ranked by (votes, mean member score), ties going to the
   earlier-created cluster; the top K are taken.
6. **Output**, per taken cluster: ``"best"``: the member of highest (score, area), ties going to
   the earlier member; ``"consensus"``: the pixels where ``Σ (s_i / Σ s) · mask_i >= consensus``
   (uniform weights when every score is <= 0), in float64 where upstream uses float32. The taken
   clusters' masks are OR-ed; the result can be empty and is returned as is (``no_object`` False).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
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
    comparisons (``>= cluster_iou``) are not blurred by float32 rounding. An
    empty union gives 0.0 (StAR's ``cluster_mask_candidates``), so two empty
    masks have IoU 0.0.
    """
    if masks.dim() < 3:
        raise ValueError(f"masks must be (..., N, H, W), got shape {tuple(masks.shape)}")
    flat = _as_bool(masks).flatten(-2)
    dtype = torch.float32 if flat.shape[-1] <= 2**24 else torch.float64
    flat = flat.to(dtype)
    inter = (flat @ flat.transpose(-1, -2)).double()
    area = inter.diagonal(dim1=-2, dim2=-1)
    union = area.unsqueeze(-1) + area.unsqueeze(-2) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def _objects(entry: Any) -> list[torch.Tensor]:
    """A sample's object masks: an (H, W) mask is one object; a (K, H, W) tensor or a sequence, K."""
    if isinstance(entry, torch.Tensor) and entry.dim() == 2:
        return [_as_bool(entry)]
    return [_as_bool(torch.as_tensor(mask)) for mask in entry]


def _object_scores(score: Any, count: int, sample: int) -> list[float]:
    """One score per object: a number scores every object of its sample alike."""
    if count == 0:
        return []
    if isinstance(score, Real) or (isinstance(score, torch.Tensor) and score.dim() == 0):
        values = [float(score)] * count
    else:
        values = [float(v) for v in score]
    if len(values) != count:
        raise ValueError(f"sample {sample} names {count} objects but has {len(values)} scores")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"sample {sample} has a non-finite score {values}; scores must be finite")
    return values


def _candidates(samples: Sequence[Any], scores: Sequence[Any], shape: tuple[int, int] | None
                ) -> tuple[torch.Tensor, list[tuple[int, int]], list[float], list[int | None]]:
    """Every object mask stacked (M, H, W), its (sample, object) and score, and per sample its object
    count (None: dropped)."""
    if len(scores) != len(samples):
        raise ValueError(f"got {len(scores)} scores for {len(samples)} samples")
    masks, owners, values, counts = [], [], [], []
    for i, (entry, score) in enumerate(zip(samples, scores)):
        if entry is None:
            counts.append(None)
            continue
        objects = _objects(entry)
        counts.append(len(objects))
        values += _object_scores(score, len(objects), i)
        owners += [(i, k) for k in range(len(objects))]
        masks += objects
    if masks:
        like = masks[0]
        for m in masks:
            if m.dim() != 2 or m.shape != like.shape:
                raise ValueError(f"masks must all be (H, W) of one shape, got {tuple(m.shape)} and "
                                 f"{tuple(like.shape)}")
        if shape is not None and tuple(like.shape) != tuple(shape):
            raise ValueError(f"masks of shape {tuple(like.shape)} for shape={tuple(shape)}")
        stack = torch.stack([m.to(like.device) for m in masks])
    elif shape is None:
        raise ValueError("no mask given to take the output shape from; pass shape=(H, W)")
    else:
        stack = torch.zeros(0, *shape, dtype=torch.bool)
    return stack, owners, values, counts


def _cluster_mask(stack: torch.Tensor, members: list[int], scores: list[float], output: str,
                  consensus: float) -> tuple[torch.Tensor, int]:
    """A cluster's mask and its best member (highest score, then larger area, then earlier)."""
    areas = stack[members].flatten(1).sum(1).tolist()
    best = max(range(len(members)), key=lambda j: (scores[members[j]], areas[j]))
    if output == "best":
        return stack[members[best]].clone(), members[best]
    weights = torch.tensor([scores[m] for m in members], dtype=torch.float64, device=stack.device)
    weights = torch.ones_like(weights) if bool((weights <= 0).all()) else weights
    weights = weights / weights.sum()
    return (weights[:, None, None] * stack[members].double()).sum(0) >= consensus, members[best]


def _vote(stack: torch.Tensor, owners: list[tuple[int, int]], scores: list[float], counts: list[int | None],
          no_object_vote: float, cluster_iou: float, min_share: float, output: str, consensus: float) -> dict:
    parsed = [c for c in counts if c is not None]
    n, no_object_votes = len(parsed), parsed.count(0)
    summary = {"valid": n, "no_object_votes": no_object_votes}
    if n == 0 or no_object_votes / n >= no_object_vote:
        empty = torch.zeros(stack.shape[-2:], dtype=torch.bool, device=stack.device)
        return {"mask": empty, "no_object": True, **summary, "objects": 0, "clusters": [], "chosen": [],
                "sample": counts.index(0) if no_object_votes else -1}
    positive = [c for c in parsed if c > 0]
    objects = max(dict.fromkeys(positive), key=positive.count)  # max keeps the first of equal counts
    iou = mask_iou_matrix(stack).cpu().tolist()
    groups: list[list[int]] = []
    for m in range(len(owners)):
        for members in groups:
            if iou[members[0]][m] >= cluster_iou:
                members.append(m)
                break
        else:
            groups.append([m])
    clusters = []
    for members in groups:
        votes = len({owners[m][0] for m in members})
        clusters.append({"members": [owners[m] for m in members], "votes": votes,
                         "mean_score": math.fsum(scores[m] for m in members) / len(members),
                         "kept": votes / n >= min_share})
    if not any(c["kept"] for c in clusters):
        for c in clusters:
            c["kept"] = True
    ranked = sorted((k for k, c in enumerate(clusters) if c["kept"]), reverse=True,  # stable: ties keep order
                    key=lambda k: (clusters[k]["votes"], clusters[k]["mean_score"]))
    chosen = ranked[:objects]
    masks, bests = zip(*(_cluster_mask(stack, groups[k], scores, output, consensus) for k in chosen))
    return {"mask": torch.stack(masks).any(0), "no_object": False, **summary, "objects": objects,
            "clusters": clusters, "chosen": chosen, "sample": owners[bests[0]][0]}


def _check(no_object_vote: float, cluster_iou: float, min_share: float, output: str,
           consensus: float) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    for name, value in (("no_object_vote", no_object_vote), ("cluster_iou", cluster_iou),
                        ("min_share", min_share), ("consensus", consensus)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def aggregate_masks(samples: Sequence[Any], scores: Sequence[Any], no_object_vote: float = 0.5,
                    cluster_iou: float = 0.85, min_share: float = 0.2, output: str = "best",
                    consensus: float = 0.5, shape: tuple[int, int] | None = None) -> dict:
    """One question's N sampled answers voted into one mask (see the module docstring for the rule).

    samples: per sample ``None`` (failed to parse: dropped), ``[]`` (no object), or its objects'
    masks: an (H, W) bool mask (one object), a (K, H, W) tensor or a sequence of (H, W) masks.
    scores: per sample, one score per object (a number scores all its objects; ignored for ``None``
    and ``[]``), higher = better. shape: the output (H, W) when no sample gives a mask.

    Returns ``{"mask": (H, W) bool (all False for no object), "no_object": bool, "valid": N,
    "no_object_votes": int, "objects": K, "clusters": [{"members": [(sample, object), ...] in sample
    order, "votes": distinct samples, "mean_score": float, "kept": bool}, ...] in creation order,
    "chosen": indices into clusters, best first, "sample": the sample whose answer the mask stands
    for (the top cluster's best member; for no object the first sample voting so, -1 if none)}``.
    """
    _check(no_object_vote, cluster_iou, min_share, output, consensus)
    stack, owners, values, counts = _candidates(samples, scores, shape)
    return _vote(stack, owners, values, counts, no_object_vote, cluster_iou, min_share, output, consensus)


def aggregate_batch(masks: torch.Tensor, scores: Any, valid: torch.Tensor | None = None,
                    found: torch.Tensor | None = None, no_object_vote: float = 0.5, cluster_iou: float = 0.85,
                    min_share: float = 0.2, output: str = "best", consensus: float = 0.5) -> list[dict]:
    """:func:`aggregate_masks` for B questions × N one-object samples: masks (B, N, H, W) bool, scores
    (B, N); valid (B, N) bool, ``False`` = failed to parse (dropped); found (B, N) bool, ``False`` =
    answered "no object" (both default all True). Returns one result dict per question."""
    _check(no_object_vote, cluster_iou, min_share, output, consensus)
    if masks.dim() != 4:
        raise ValueError(f"masks must be (B, N, H, W), got shape {tuple(masks.shape)}")
    b, n = masks.shape[:2]
    masks = _as_bool(masks)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    valid = torch.ones(b, n, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    found = torch.ones(b, n, dtype=torch.bool) if found is None else torch.as_tensor(found, dtype=torch.bool)
    if scores.shape != (b, n) or valid.shape != (b, n) or found.shape != (b, n):
        raise ValueError(f"scores {tuple(scores.shape)}, valid {tuple(valid.shape)} and found "
                         f"{tuple(found.shape)} must be (B, N) = {(b, n)}")
    entries = [[None if not valid[q, j] else [masks[q, j]] if found[q, j] else [] for j in range(n)]
               for q in range(b)]
    return [aggregate_masks(entries[q], scores[q].tolist(), no_object_vote, cluster_iou, min_share, output,
                            consensus, shape=tuple(masks.shape[-2:])) for q in range(b)]
