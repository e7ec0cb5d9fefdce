"""How well an encoder sees a scene: per-object attributes, exact counts, localisation.

Predicted objects are matched one-to-one to the scene graph's objects by
Hungarian assignment on centre distance; a pair farther apart than
``max_distance`` pixels is no match. An object of the scene is right on an
attribute when its match has that attribute (unmatched: wrong), so the
attribute accuracies already include misses. Every rate comes with its
binomial standard error.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

ATTRIBUTES = ("colour", "shape", "size")


def box_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_objects(predicted: list[dict], truth: list[dict], max_distance: float) -> list[tuple[int, int]]:
    """(predicted index, true index) pairs of the assignment minimising total centre distance."""
    if not predicted or not truth:
        return []
    cost = np.array([[math.dist(p["center"], t["center"]) for t in truth] for p in predicted])
    rows, cols = linear_sum_assignment(cost)
    return [(r, c) for r, c in zip(rows, cols) if cost[r, c] <= max_distance]


def _rate(hits: int, n: int) -> dict[str, float]:
    p = hits / n if n else 0.0
    return {"value": p, "se": math.sqrt(p * (1 - p) / n) if n else 0.0, "n": n}


class PerceptionReport:
    """Accumulates predicted objects against scene graphs (both in the same pixel coordinates)."""

    def __init__(self, max_distance: float = 4.0, centre_tolerance: float = 2.0, min_iou: float = 0.7):
        self.max_distance, self.centre_tolerance, self.min_iou = max_distance, centre_tolerance, min_iou
        self.hits = {k: 0 for k in (*ATTRIBUTES, "all_attributes", "centre", "box", "matched")}
        self.objects = self.predictions = self.images = self.exact_counts = 0

    def add(self, predicted: list[dict], truth: list[dict]) -> None:
        pairs = match_objects(predicted, truth, self.max_distance)
        self.images += 1
        self.objects += len(truth)
        self.predictions += len(predicted)
        self.exact_counts += len(predicted) == len(truth)
        self.hits["matched"] += len(pairs)
        for p, t in pairs:
            same = [predicted[p][k] == truth[t][k] for k in ATTRIBUTES]
            for k, ok in zip(ATTRIBUTES, same):
                self.hits[k] += ok
            self.hits["all_attributes"] += all(same)
            self.hits["centre"] += math.dist(predicted[p]["center"], truth[t]["center"]) <= self.centre_tolerance
            self.hits["box"] += box_iou(predicted[p]["box"], truth[t]["box"]) >= self.min_iou

    def to_dict(self) -> dict:
        out = {k: _rate(self.hits[k], self.objects) for k in (*ATTRIBUTES, "all_attributes", "centre", "box")}
        out["recall"] = _rate(self.hits["matched"], self.objects)
        out["precision"] = _rate(self.hits["matched"], self.predictions)
        out["exact_count"] = _rate(self.exact_counts, self.images)
        return out

    def state(self) -> dict:
        return {"hits": dict(self.hits), "objects": self.objects, "predictions": self.predictions,
                "images": self.images, "exact_counts": self.exact_counts}

    @classmethod
    def from_state(cls, state: dict) -> PerceptionReport:
        report = cls()
        report.hits = dict(state["hits"])
        for k in ("objects", "predictions", "images", "exact_counts"):
            setattr(report, k, state[k])
        return report

    def merge(self, other: PerceptionReport) -> None:
        """Add another report's counts (of the same tolerances), e.g. another rank's."""
        for k, v in other.hits.items():
            self.hits[k] += v
        for k in ("objects", "predictions", "images", "exact_counts"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def table(self) -> str:
        names = {"colour": "colour", "shape": "shape", "size": "size", "all_attributes": "colour+shape+size",
                 "exact_count": "exact object count (per image)", "centre": f"centre within {self.centre_tolerance:g} px",
                 "box": f"box IoU >= {self.min_iou:g}", "recall": "objects found", "precision": "detections real"}
        summary = self.to_dict()
        lines = [f"perception: {self.images} images, {self.objects} objects", "| measure | % | s.e. |", "|---|---|---|"]
        lines += [f"| {names[k]} | {100 * v['value']:.1f} | {100 * v['se']:.1f} |" for k, v in summary.items()]
        return "\n".join(lines)


def scaled_scene(scene: list[dict], factor: float) -> list[dict]:
    """A scene graph's centres and boxes in another image size's pixels."""
    return [{**o, "center": [c * factor for c in o["center"]], "box": [c * factor for c in o["box"]]}
            for o in scene]
