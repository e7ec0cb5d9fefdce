"""Step-level visual credit: label each crop action correct, redundant or erroneous.

ViRL (visual-rationale RL, no public code) credits visual actions against ground-truth
visual rationales; the rule below is mmreason's design, not the paper's. A rollout's
crop boxes (from :func:`mmreason.rl.crop.parse_crops`, ``None`` for a malformed one)
are matched one-to-one to the rationale boxes, deduplicated first (a rationale often
names an object in one step and its attribute in the next, with the same box).
An action *reaches* a box when their IoU is ≥ τ.

- **correct**: the action covers a box of its own in the matching below;
- **redundant**: it covers none, but reaches a box — and then every box it reaches
  was covered by an earlier correct action;
- **erroneous**: malformed, or it reaches no box (this includes an empty rationale).

The matching. Plain Hungarian on 1 − IoU maximises total IoU, which can trade a
correct action for a tighter one elsewhere, and credits the tightest of two crops of
the same box even when it came second — the earlier crop would then be neither
correct nor "already covered". So: the set of correct actions is built in order of
emission, taking an action when the actions taken so far plus it can still be
matched to distinct boxes they reach (checked by ``linear_sum_assignment``). That is
the greedy algorithm of a transversal matroid: it yields a maximum matching, credited
to the earliest actions it can be. Hungarian on 1 − IoU then picks which box each
correct action covers; pairs below τ cost more than any sum of reaching pairs, so
they only fill the assignment. An exchange argument gives the redundant case: if an
untaken action reached a box that was uncovered or covered by a later action, the
greedy would have taken it. Unlike greedy-by-order (each action takes its best free
box), an action that reaches two boxes leaves to a later action the one only the
later action reaches, so both are correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from mmreason.rl.rewards import box_iou

ACTION_LABELS = ("correct", "redundant", "erroneous")

Box = Sequence[float]


def _check_labels(labels: Sequence[str]) -> None:
    unknown = set(labels) - set(ACTION_LABELS)
    if unknown:
        raise ValueError(f"unknown action labels {sorted(unknown)}; expected {ACTION_LABELS}")


def _assign(iou: np.ndarray, tau: float) -> dict[int, int]:
    """Hungarian on 1 − IoU over rows × boxes, pairs below τ priced out: {row: box} for pairs ≥ τ."""
    cost = np.where(iou >= tau, 1.0 - iou, min(iou.shape) + 1.0)
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= tau}


def match_actions(predicted: Sequence[Box | None], ground_truth: Sequence[Box],
                  tau: float = 0.5) -> list[int | None]:
    """For each action, the index in ``ground_truth`` of the box it covers, or ``None``.

    The matching of the module docstring; a duplicated box is reported by its first index.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    first: dict[tuple[float, ...], int] = {}
    for j, box in enumerate(ground_truth):
        first.setdefault(tuple(float(v) for v in box), j)
    boxes = list(first)
    valid = [i for i, box in enumerate(predicted) if box is not None]
    covers: list[int | None] = [None] * len(predicted)
    if not valid or not boxes:
        return covers
    iou = np.array([[box_iou(predicted[i], box) for box in boxes] for i in valid])
    taken: list[int] = []
    assignment: dict[int, int] = {}
    for row in range(len(valid)):
        if not (iou[row] >= tau).any():
            continue
        trial = _assign(iou[taken + [row]], tau)
        if len(trial) == len(taken) + 1:
            taken.append(row)
            assignment = trial
    for position, row in enumerate(taken):
        covers[valid[row]] = first[boxes[assignment[position]]]
    return covers


def assign_actions(predicted: Sequence[Box | None], ground_truth: Sequence[Box],
                   tau: float = 0.5) -> list[str]:
    """One label of :data:`ACTION_LABELS` per crop action, in order of emission (module docstring)."""
    covers = match_actions(predicted, ground_truth, tau)
    labels = []
    for box, cover in zip(predicted, covers):
        if cover is not None:
            labels.append("correct")
        elif box is not None and any(box_iou(box, gt) >= tau for gt in ground_truth):
            labels.append("redundant")
        else:
            labels.append("erroneous")
    return labels


def action_rewards(labels: Sequence[str], r_correct: float = 1.0, r_redundant: float = 0.0,
                   r_erroneous: float = 1.0) -> list[float]:
    """Per-action rewards: +r_correct, −r_redundant, −r_erroneous.

    The arguments are magnitudes (negative ones raise), so a config cannot flip a
    penalty into a bonus by a sign slip. Add each reward to the tokens of its action
    span, on top of the outcome advantage.
    """
    if min(r_correct, r_redundant, r_erroneous) < 0:
        raise ValueError(f"rewards are magnitudes and must be >= 0, got r_correct={r_correct}, "
                         f"r_redundant={r_redundant}, r_erroneous={r_erroneous}")
    _check_labels(labels)
    value = {"correct": r_correct, "redundant": -r_redundant, "erroneous": -r_erroneous}
    return [float(value[label]) for label in labels]


def mean_best_iou(predicted: Sequence[Box | None], ground_truth: Sequence[Box]) -> float | None:
    """Mean over a rollout's well-formed crops of the best IoU with any rationale box ("mean crop IoU").

    ``None`` when the rollout has no well-formed crop, so a batch mean skips it rather
    than counting a rollout that never cropped as IoU 0.
    """
    boxes = [box for box in predicted if box is not None]
    if not boxes:
        return None
    return sum(max((box_iou(box, gt) for gt in ground_truth), default=0.0) for box in boxes) / len(boxes)


def action_shares(label_lists: Sequence[Sequence[str]]) -> dict[str, float]:
    """Fraction of each label over all actions of a batch; all zeros when there are none."""
    labels = [label for labels in label_lists for label in labels]
    _check_labels(labels)
    return {name: labels.count(name) / len(labels) if labels else 0.0 for name in ACTION_LABELS}
