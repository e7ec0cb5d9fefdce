"""Area under the ROC curve: how well a score separates positives from negatives.

The Mann–Whitney form: the probability that a random positive scores above a random
negative, ties counting half. 0.5 is chance, 1.0 a perfect ranking. It needs both
classes; with one missing the area is undefined and ``None`` is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """AUROC of ``scores`` for the binary ``labels`` (True = positive); None without both classes."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f"got {scores.size} scores for {labels.size} labels; pass one score per label")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks: ties count half
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_standard_error(area: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUROC from ``n_pos`` positives and ``n_neg`` negatives."""
    q1, q2 = area / (2 - area), 2 * area * area / (1 + area)
    var = (area * (1 - area) + (n_pos - 1) * (q1 - area ** 2) + (n_neg - 1) * (q2 - area ** 2)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def auroc_report(scores: Sequence[float], labels: Sequence[bool]) -> dict:
    """``{"auroc", "se", "positives", "negatives"}`` of ``scores`` for ``labels`` (AUROC and its standard
    error None without both classes), rounded to four places."""
    area = auroc(scores, labels)
    n_pos = int(sum(bool(x) for x in labels))
    n_neg = len(labels) - n_pos
    return {"auroc": None if area is None else round(area, 4),
            "se": None if area is None else round(auroc_standard_error(area, n_pos, n_neg), 4),
            "positives": n_pos, "negatives": n_neg}
