"""Verifiable rewards for GRPO, as TRL reward callables: ``f(prompts, completions, **columns) -> list[float]``.

``completions`` are the generated strings; each dataset column arrives as a list
aligned with them (``answer``, ``box``, ``image_id``, ``quality``). A completion that
cannot be parsed scores 0: a reward never raises on model output. A column of
the wrong length is a data bug and raises. Rewards: format + accuracy
(Reason-RFT), IoU for grounding, and VisualQuality-R1's Thurstone fidelity reward.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mmreason.eval.answers import normalize_text

log = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]

THURSTONE_EPS = 1e-8

_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"  # text holding no think/answer tag of its own
_FORMAT = re.compile(rf"\s*<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")


def _check_columns(completions: Sequence[str], **columns: Sequence[Any]) -> None:
    for name, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(completions)} completions; "
                             "pass one value per completion (repeat a prompt's value for each of its samples)")


def _answer_text(completion: str) -> str | None:
    """Content of the last closed ``<answer>…</answer>``, or ``None``."""
    found = _ANSWER.findall(completion)
    return found[-1].strip() if found else None


def _number(text: str | None) -> float | None:
    try:
        value = float(str(text).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def format_reward(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 when the completion is exactly ``<think>…</think><answer>…</answer>`` (whitespace around).

    Anything may sit inside ``<think>``, ``<crop>[x0,y0,x1,y1]</crop>`` actions
    included; text outside the two parts fails.
    """
    return [float(_FORMAT.fullmatch(c) is not None) for c in completions]


def accuracy_reward(prompts: Sequence[Any], completions: Sequence[str], *, answer: Sequence[str],
                    **columns: Any) -> list[float]:
    """1.0 when the ``<answer>`` text equals ``answer`` after :func:`~mmreason.eval.answers.normalize_text`.

    The evaluation's normalisation (case, whitespace, punctuation, articles), so the
    reward scores what ``mmreason eval`` scores.
    """
    _check_columns(completions, answer=answer)
    out = []
    for completion, gold in zip(completions, answer):
        text = _answer_text(completion)
        out.append(float(text is not None and normalize_text(text) == normalize_text(str(gold))))
    return out


def numeric_accuracy_reward(abs_tol: float = 0.0, rel_tol: float = 0.0) -> RewardFn:
    """An accuracy reward that compares numbers within ``math.isclose(abs_tol, rel_tol)``.

    Where the answer or the gold does not read as a number, it falls back to
    :func:`accuracy_reward`'s exact match, so one function serves mixed datasets.
    """

    def numeric_accuracy(prompts: Sequence[Any], completions: Sequence[str], *, answer: Sequence[str],
                         **columns: Any) -> list[float]:
        exact = accuracy_reward(prompts, completions, answer=answer)
        out = []
        for completion, gold, hit in zip(completions, answer, exact):
            pred, ref = _number(_answer_text(completion)), _number(gold)
            close = pred is not None and ref is not None and math.isclose(pred, ref, rel_tol=rel_tol,
                                                                          abs_tol=abs_tol)
            out.append(1.0 if close else hit)
        return out

    return numeric_accuracy


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes; 0 when the union is empty."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def iou_reward(prompts: Sequence[Any], completions: Sequence[str], *, box: Sequence[Sequence[float]],
               **columns: Any) -> list[float]:
    """IoU between the ``[x0,y0,x1,y1]`` inside ``<answer>`` and the ``box`` column."""
    _check_columns(completions, box=box)
    out = []
    for completion, gold in zip(completions, box):
        match = _BOX.search(_answer_text(completion) or "")
        out.append(box_iou([float(v) for v in match.groups()], gold) if match else 0.0)
    return out


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def thurstone_fidelity_reward(prompts: Sequence[Any], completions: Sequence[str], *,
                              image_id: Sequence[Any], quality: Sequence[float], **columns: Any) -> list[float]:
    """VisualQuality-R1's ranking reward for a predicted quality score q in ``<answer>``.

    Columns: ``image_id`` (which image a completion rates) and ``quality`` (that
    image's ground-truth score, repeated per completion). Each image's parsed scores
    give μ and σ² (unbiased variance, 0 for a single score). Against every other
    image z: p = Φ((q − μ_z)/√(σ_i² + σ_z² + ε)), gt = 1 if image i is better than z,
    0.5 if equal, else 0; reward = mean over z of √(p·gt + ε) + √((1−p)(1−gt) + ε).
    Unparsed scores get 0 and stay out of the statistics; with no other image, 0.
    """
    _check_columns(completions, image_id=image_id, quality=quality)
    scores = [_number(_answer_text(c)) for c in completions]
    by_image: dict[Any, list[float]] = {}
    gold: dict[Any, float] = {}
    for image, q, gt_quality in zip(image_id, scores, quality):
        gold.setdefault(image, float(gt_quality))
        if q is not None:
            by_image.setdefault(image, []).append(q)
    stats = {image: (statistics.fmean(s), statistics.variance(s) if len(s) > 1 else 0.0)
             for image, s in by_image.items()}
    out = []
    for image, q in zip(image_id, scores):
        others = [z for z in stats if z != image]
        if q is None or not others:
            out.append(0.0)
            continue
        total = 0.0
        for z in others:
            mean_z, var_z = stats[z]
            p = _phi((q - mean_z) / math.sqrt(stats[image][1] + var_z + THURSTONE_EPS))
            gt = 1.0 if gold[image] > gold[z] else 0.5 if gold[image] == gold[z] else 0.0
            total += math.sqrt(p * gt + THURSTONE_EPS) + math.sqrt((1 - p) * (1 - gt) + THURSTONE_EPS)
        out.append(total / len(others))
    return out


def weighted_sum(reward_fns: Mapping[str, tuple[RewardFn, float]] | Sequence[RewardFn],
                 prompts: Sequence[Any], completions: Sequence[str],
                 **columns: Any) -> tuple[list[float], dict[str, list[float]]]:
    """Σ_k w_k·f_k per completion, and each f_k's unweighted rewards by name, for logging.

    ``reward_fns`` is ``{name: (fn, weight)}`` or a list of functions (weight 1,
    named by ``__name__``). A reward may be None (or NaN) for a completion it does not apply
    to: it is left out of that completion's sum and logged as NaN, as TRL does; a completion
    that no reward applies to sums to 0, with a warning.
    """
    if not isinstance(reward_fns, Mapping):
        reward_fns = {fn.__name__: (fn, 1.0) for fn in reward_fns}
    totals = [0.0] * len(completions)
    applied = [False] * len(completions)
    components = {}
    for name, (fn, weight) in reward_fns.items():
        rewards = [math.nan if r is None else float(r) for r in fn(prompts, completions, **columns)]
        if len(rewards) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(rewards)} values for {len(completions)} completions")
        components[name] = rewards
        totals = [t if math.isnan(r) else t + weight * r for t, r in zip(totals, rewards)]
        applied = [a or not math.isnan(r) for a, r in zip(applied, rewards)]
    if reward_fns and not all(applied):
        log.warning("no reward applies to %d of %d completions (every reward returned None); they score 0",
                    applied.count(False), len(completions))
    return totals, components
