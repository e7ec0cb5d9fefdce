"""How well a policy's crop actions find the objects its reasoning needs.

For each rollout, the crop boxes it wrote are compared with the ground-truth
rationale boxes of the sample (``steps[].box``, scaled to the model's input
pixels): mean best IoU per box, and the share of actions that were correct,
redundant or erroneous (:mod:`mmreason.rl.step_credit`). Mergeable across ranks.
"""

from __future__ import annotations

from mmreason.data.schema import Record
from mmreason.rl.crop import parse_crops
from mmreason.rl.step_credit import ACTION_LABELS, assign_actions, mean_best_iou


def record_boxes(record: Record, width: int, height: int) -> list[list[float]]:
    """The record's rationale boxes in the pixels of a ``width``×``height`` model input (from the
    record's ``meta.image_size`` = [width, height] when known, else taken as already there)."""
    size = (record.meta or {}).get("image_size")
    sx, sy = (width / size[0], height / size[1]) if size else (1.0, 1.0)
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in (s.box for s in record.steps or [])
            if b is not None]


class CropReport:
    def __init__(self, tau: float = 0.5):
        self.tau = tau
        self.rollouts = 0
        self.counts = dict.fromkeys(ACTION_LABELS, 0)
        self.iou_sum, self.iou_rollouts = 0.0, 0

    def add(self, actions: list[list[float] | None], ground_truth: list[list[float]]) -> list[str]:
        """One rollout's actions (None = malformed); returns their labels."""
        labels = assign_actions(actions, ground_truth, self.tau)
        self.rollouts += 1
        for label in labels:
            self.counts[label] += 1
        iou = mean_best_iou(actions, ground_truth)
        if iou is not None:
            self.iou_sum += iou
            self.iou_rollouts += 1
        return labels

    def add_many(self, texts: list[str], records: list[Record], image_size: int) -> list[float | None]:
        """Generated texts (crop actions in the model's input pixels), one per record; returns each
        rollout's mean best IoU (None: no crop or no rationale box to compare)."""
        ious = []
        for text, record in zip(texts, records, strict=True):
            actions, truth = parse_crops(text), record_boxes(record, image_size, image_size)
            self.add(actions, truth)
            ious.append(mean_best_iou(actions, truth))
        return ious

    def to_dict(self) -> dict[str, float | None]:
        actions = sum(self.counts.values())
        return {"mean_crop_iou": self.iou_sum / self.iou_rollouts if self.iou_rollouts else None,
                "actions_per_rollout": actions / self.rollouts if self.rollouts else None,
                **{f"{label}_share": (self.counts[label] / actions if actions else None) for label in ACTION_LABELS}}

    # ---- merging across ranks (see training.evaluation.gathered) -------------------------------
    def state(self) -> dict:
        return {"tau": self.tau, "rollouts": self.rollouts, "counts": self.counts, "iou_sum": self.iou_sum,
                "iou_rollouts": self.iou_rollouts}

    @classmethod
    def from_state(cls, state: dict) -> CropReport:
        report = cls(state["tau"])
        report.rollouts, report.counts = state["rollouts"], dict(state["counts"])
        report.iou_sum, report.iou_rollouts = state["iou_sum"], state["iou_rollouts"]
        return report

    def merge(self, other: CropReport) -> None:
        self.rollouts += other.rollouts
        for label in ACTION_LABELS:
            self.counts[label] += other.counts[label]
        self.iou_sum += other.iou_sum
        self.iou_rollouts += other.iou_rollouts
