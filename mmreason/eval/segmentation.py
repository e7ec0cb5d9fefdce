"""Reasoning-segmentation metrics (gIoU / cIoU), per question type, mergeable across ranks.

Two metric semantics are supported behind ``semantics=``:

``"lisa"`` (LISA's ``intersectionAndUnionGPU`` + validate loop; the default)
    Target = pixels that are nonzero and not :data:`IGNORE`. Ignore pixels are
    excluded from both intersection and union (a prediction there costs
    nothing). Per-mask IoU = ``I / (U + 1e-5)``, and a mask whose union is empty
    (``U == 0``: the target has no pixel outside ignore *and* the prediction is
    empty there) scores 1.0 — a correctly empty answer. An empty target with a
    false-positive prediction has ``U > 0`` and scores 0. A ``None`` prediction
    (parse failure / no mask produced) is scored as an empty mask, so on an
    empty target it too scores 1.0.

``"segzero"`` (Seg-Zero's ``evaluation.py`` + ``calculate_iou.py``)
    Target = every nonzero pixel, ignore (255) included; no pixel is excluded.
    Per-mask IoU = ``I / U`` exactly (no epsilon) and ``U == 0`` scores 0.0. A
    ``None`` prediction scores ``I = 0, U = |GT|`` (|GT| counting ignore
    pixels) — the same numbers an empty mask gets. A sample whose prediction
    (not ``None``) and target are both empty is dropped, not scored, as upstream
    drops it (``compute_iou`` returns a bare 0, the unpacking error is caught
    and the sample skipped); it is counted in ``dropped``. A ``None`` prediction
    on an empty target is kept and scores 0.0 (upstream's penalty branch).

Under both, gIoU = mean of the per-mask IoUs and cIoU = ΣI / ΣU over the masks,
0.0 when ΣU == 0 (LISA divides by ΣU + 1e-10 and Seg-Zero guards ΣU > 0, so
both give 0 there). An empty report has gIoU = cIoU = 0.0 and ``n`` = 0.

A report holds integer I/U/n counts and the per-mask IoUs as an exact float
sum (non-overlapping partials, Shewchuk's algorithm), so each rank can score
its own shard and ``state()`` → ``from_state()`` → ``merge`` (see
:func:`mmreason.training.evaluation.gathered`) gives exactly, bit for bit, the
numbers of one report fed the whole split, in any merge order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

IGNORE = 255
SEMANTICS = ("lisa", "segzero")
LISA_EPS = 1e-5

_COUNTS = ("n", "intersection", "union", "no_prediction", "dropped")


def _check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    return semantics


def _pred_mask(pred: Any, shape: torch.Size) -> torch.Tensor:
    """Bool mask from logits (``> 0``), a bool mask, or an integer mask (nonzero = on)."""
    pred = torch.as_tensor(pred)
    if pred.shape != shape:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} for a target of shape {tuple(shape)}")
    if pred.dtype == torch.bool:
        return pred
    if pred.is_floating_point():
        return pred > 0
    return pred != 0


def intersection_union(pred: Any, target: Any, semantics: str = "lisa") -> tuple[int, int]:
    """``(I, U)`` pixel counts of one predicted mask against one target mask.

    pred: (H, W) logits (foreground = ``> 0``), a bool mask, an integer mask
    (nonzero = foreground), or None for a parse failure / no mask produced.
    target: (H, W) bool or integer mask: 0 background, :data:`IGNORE` (255)
    ignore, any other value target (a bool target has no ignore pixels).
    See the module docstring for the two ``semantics``.
    """
    _check_semantics(semantics)
    target = torch.as_tensor(target)
    if target.dim() != 2:
        raise ValueError(f"target must be (H, W), got shape {tuple(target.shape)}")
    if target.dtype == torch.bool:
        foreground, ignore = target, None
    elif semantics == "segzero":
        foreground, ignore = target != 0, None
    else:
        ignore = target == IGNORE
        foreground = (target != 0) & ~ignore
    if pred is None:
        return 0, int(foreground.sum())
    pred = _pred_mask(pred, target.shape).to(foreground.device)
    if ignore is not None:
        pred = pred & ~ignore
    return int((pred & foreground).sum()), int((pred | foreground).sum())


def mask_score(intersection: int, union: int, semantics: str = "lisa") -> float:
    """One mask's IoU as gIoU averages it: LISA ``I/(U+1e-5)``, 1.0 if ``U == 0``; Seg-Zero ``I/U``, 0.0 if
    ``U == 0``."""
    _check_semantics(semantics)
    if union == 0:
        return 1.0 if semantics == "lisa" else 0.0
    return intersection / (union + LISA_EPS) if semantics == "lisa" else intersection / union


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` into ``partials``, a list of non-overlapping floats whose exact sum is the running total."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def _new_counts() -> dict:
    return {**dict.fromkeys(_COUNTS, 0), "iou_partials": []}


def _summary(counts: dict, partials: list[float]) -> dict[str, float | int]:
    n = counts["n"]
    return {
        "giou": math.fsum(partials) / n if n else 0.0,
        "ciou": counts["intersection"] / counts["union"] if counts["union"] else 0.0,
        "n": n,
    }


class SegmentationReport:
    """gIoU / cIoU over a split, overall and per question group (e.g. task, or ``is_sentence``).

    ``add(pred, target, group)`` scores one mask; a sample added with ``group=None``
    counts in the overall numbers only. ``no_prediction`` counts the ``None``
    predictions (parse failures), which are scored as described in the module
    docstring rather than dropped; ``dropped`` counts the samples Seg-Zero leaves
    unscored (both masks empty), which are not in ``n``.
    """

    def __init__(self, semantics: str = "lisa") -> None:
        self.semantics = _check_semantics(semantics)
        self.per_group: dict[Hashable, dict] = {}

    def add(self, pred: Any, target: Any, group: Hashable = None) -> float | None:
        """Score one prediction (logits, bool mask or None) against its target; returns its per-mask IoU,
        or None when the sample is dropped (Seg-Zero: prediction and target both empty)."""
        inter, union = intersection_union(pred, target, self.semantics)
        counts = self.per_group.setdefault(group, _new_counts())
        if self.semantics == "segzero" and pred is not None and union == 0:
            counts["dropped"] += 1
            return None
        score = mask_score(inter, union, self.semantics)
        counts["n"] += 1
        counts["intersection"] += inter
        counts["union"] += union
        counts["no_prediction"] += int(pred is None)
        _add_exact(counts["iou_partials"], score)
        return score

    def add_many(self, preds: Sequence[Any], targets: Sequence[Any],
                 groups: Sequence[Hashable] | None = None) -> SegmentationReport:
        if len(preds) != len(targets) or (groups is not None and len(groups) != len(targets)):
            raise ValueError(f"got {len(preds)} predictions, {len(targets)} targets and "
                             f"{'no' if groups is None else len(groups)} groups; pass one of each per mask")
        for i, (pred, target) in enumerate(zip(preds, targets)):
            self.add(pred, target, None if groups is None else groups[i])
        return self

    @property
    def n(self) -> int:
        return sum(counts["n"] for counts in self.per_group.values())

    # ---- merging across ranks (see training.evaluation.gathered) -------------------------------
    def state(self) -> dict:
        """Plain ``{semantics, groups: {group: {n, intersection, union, no_prediction, dropped,
        iou_partials}}}``."""
        return {"semantics": self.semantics,
                "groups": {group: {**{key: counts[key] for key in _COUNTS},
                                   "iou_partials": list(counts["iou_partials"])}
                           for group, counts in self.per_group.items()}}

    @classmethod
    def from_state(cls, state: dict) -> SegmentationReport:
        report = cls(state["semantics"])
        report.per_group = {group: {**{key: int(counts[key]) for key in _COUNTS},
                                    "iou_partials": [float(x) for x in counts["iou_partials"]]}
                            for group, counts in state["groups"].items()}
        return report

    def merge(self, other: SegmentationReport) -> SegmentationReport:
        """Add another report's counts into this one (e.g. another rank's); returns self.

        An empty report takes the other's semantics (``gathered`` merges into a
        default-constructed report); two non-empty reports of different semantics
        cannot be merged.
        """
        if other.semantics != self.semantics:
            if self.n == 0:
                self.semantics = other.semantics
            elif other.n:
                raise ValueError(f"cannot merge a {other.semantics!r} report into a {self.semantics!r} one")
        for group, counts in other.per_group.items():
            mine = self.per_group.setdefault(group, _new_counts())
            for key in _COUNTS:
                mine[key] += counts[key]
            for x in counts["iou_partials"]:
                _add_exact(mine["iou_partials"], x)
        return self

    def totals(self) -> dict[str, int]:
        return {key: sum(counts[key] for counts in self.per_group.values()) for key in _COUNTS}

    def to_dict(self) -> dict:
        """``{giou, ciou, n, no_prediction, dropped, semantics, per_group: {group: {giou, ciou, n}}}``, the
        groups with a scored sample (a group of dropped samples only has no gIoU to report)."""
        partials = [x for counts in self.per_group.values() for x in counts["iou_partials"]]
        totals = self.totals()
        return {
            **_summary(totals, partials),
            "no_prediction": totals["no_prediction"],
            "dropped": totals["dropped"],
            "semantics": self.semantics,
            "per_group": {group: _summary(counts, counts["iou_partials"])
                          for group, counts in sorted(self.per_group.items(), key=lambda kv: str(kv[0]))
                          if group is not None and counts["n"]},
        }


def metric_target(mask: torch.Tensor, record, orig_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A shard's mask (0 background / 255 object, at model resolution) as metric labels (0 / 1 /
    :data:`IGNORE`): ReasonSeg's ignore polygons (``record.meta["ignore_polygons"]``, in the pixels of
    the original ``orig_size`` = (width, height) image) become IGNORE where the mask is background."""
    target = (mask == 255).to(torch.uint8)
    polygons = (getattr(record, "meta", None) or {}).get("ignore_polygons")
    if polygons and orig_size:
        canvas = Image.new("L", tuple(orig_size), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in polygons:
            draw.polygon([tuple(point) for point in polygon], fill=1, outline=1)
        height, width = mask.shape[-2:]
        ignore = torch.from_numpy(np.asarray(canvas.resize((width, height), Image.NEAREST))).bool()
        target[ignore & (target == 0)] = IGNORE
    return target


def question_type(record) -> str:
    """ReasonSeg's sentence vs. short queries; the benchmark's segmentation question forms."""
    meta = record.meta or {}
    if "is_sentence" in meta:
        return "sentence" if meta["is_sentence"] else "short"
    query = meta.get("query")
    return str(query.get("form", record.task)) if isinstance(query, dict) else record.task


def score_segments(report: SegmentationReport, results: list[dict], batch: dict) -> list[float | None]:
    """Add each sample with a mask to ``report`` (samples without one have nothing to score) and return
    each sample's IoU (None: no mask, or dropped). A "no object" answer predicts the empty mask; only a
    sample none of whose answers parsed predicts nothing (None)."""
    masks, sizes = batch.get("masks"), batch.get("orig_sizes") or [None] * len(results)
    ious = []
    for i, (result, record) in enumerate(zip(results, batch["records"], strict=True)):
        mask = None if masks is None else masks[i]
        ious.append(None if mask is None else report.add(None if result.get("parsed") == 0 else result["mask"],
                                                         metric_target(mask.cpu(), record, sizes[i]),
                                                         group=question_type(record)))
    return ious


def has_text_answer(record) -> bool:
    """Whether a record has a text answer to score (ReasonSeg's answer is its mask)."""
    return bool(record.answer.strip())
