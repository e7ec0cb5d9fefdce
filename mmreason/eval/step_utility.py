"""Step utility: how much each rationale step tells about the answer.

After each prefix of a rationale (its first k steps, teacher-forced), the model is made to
answer at once and the entropy of its distribution over the answer's first token is read
("Measuring Reasoning Utility in LLMs via Conditional Entropy Reduction"). A step that
carries information lowers the entropy. Two uses: whether a falling entropy predicts a
correct answer (AUROC of the entropy drop against correctness), and early stopping, where
generation answers as soon as the entropy falls below a threshold (tokens saved against
accuracy lost; :func:`early_stop_sweep` computes what greedy generation with that option does,
since a greedy rationale's prefix does not depend on where it stops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of the softmax over the last dimension (one value per row)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1) / math.log(2)


def entropy_drop(curve: Sequence[float]) -> float:
    """Entropy before any step minus entropy after the last: the information the rationale added."""
    return float(curve[0] - curve[-1])


def mean_curve(curves: Sequence[Sequence[float]], width: int) -> list[float | None]:
    """Mean entropy after k = 0..width-1 steps over the curves long enough to have that point."""
    out = []
    for k in range(width):
        points = [c[k] for c in curves if len(c) > k]
        out.append(sum(points) / len(points) if points else None)
    return out


def stop_point(curve: Sequence[float], threshold: float) -> int:
    """Where generation stopping at ``threshold`` answers: the first prefix before the concluding sentence
    (k < len(curve) - 1) whose entropy is below ``threshold``, else the whole rationale (len(curve) - 1),
    after which the model answers as it would have anyway."""
    return next((k for k, h in enumerate(curve[:-1]) if h < threshold), len(curve) - 1)


def early_stop_sweep(curves: Sequence[Sequence[float]], prefix_correct: Sequence[Sequence[bool]],
                     prefix_tokens: Sequence[Sequence[int]], thresholds: Sequence[float],
                     final_correct: Sequence[bool]) -> list[dict]:
    """For each threshold: accuracy when answering at :func:`stop_point` and the share of rationale tokens
    saved, against writing the whole rationale and answering freely.

    Per sample, ``curves[i][k]``, ``prefix_correct[i][k]`` and ``prefix_tokens[i][k]`` are the entropy,
    whether the answer read there is right, and the rationale tokens written up to prefix k (the last prefix
    being the whole rationale); ``final_correct[i]`` whether the freely generated answer is right."""
    if not (len(curves) == len(prefix_correct) == len(prefix_tokens) == len(final_correct)) or not curves:
        raise ValueError("early_stop_sweep needs the same non-zero number of curves, correctness lists, token "
                         "lists and final answers")
    full_tokens = sum(t[-1] for t in prefix_tokens)
    rows = []
    for threshold in thresholds:
        stops = [stop_point(c, threshold) for c in curves]
        early = [k < len(c) - 1 for k, c in zip(stops, curves)]
        correct = sum(pc[k] if e else f for pc, k, e, f in zip(prefix_correct, stops, early, final_correct))
        tokens = sum(pt[k] for pt, k in zip(prefix_tokens, stops))
        rows.append({"threshold": float(threshold), "accuracy": correct / len(curves),
                     "accuracy_lost": (sum(final_correct) - correct) / len(curves),
                     "tokens_saved": 1 - tokens / full_tokens if full_tokens else 0.0,
                     "stopped_early": sum(early) / len(curves)})
    return rows
