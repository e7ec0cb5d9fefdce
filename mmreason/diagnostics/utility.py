"""Step utility over a test set: entropy curves per question type, their AUROC, early stopping.

Each sample contributes the answer entropy after every prefix of the model's own rationale
(0 sentences, 1, …, all), whether the answer read at each prefix is right, the rationale
tokens written up to it, and whether the model's freely generated answer was right. The
report averages curves per question type, asks whether the entropy drop predicts a correct
answer (AUROC with Hanley–McNeil standard error), and sweeps early-stopping thresholds.
"""

from __future__ import annotations

from collections import defaultdict

from mmreason.diagnostics.faithfulness import share
from mmreason.eval.auroc import auroc_report
from mmreason.eval.step_utility import early_stop_sweep, entropy_drop, mean_curve

THRESHOLDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
ALL = "all"


class StepUtilityReport:
    """Per-sample entropy curves, collected batch by batch."""

    def __init__(self, thresholds=THRESHOLDS) -> None:
        self.thresholds = tuple(thresholds)
        self.samples: list[dict] = []

    def add(self, task: str, curve: list[float], prefix_correct: list[bool], prefix_tokens: list[int],
            correct: bool) -> None:
        if not (len(curve) == len(prefix_correct) == len(prefix_tokens)) or not curve:
            raise ValueError("a sample needs one entropy, correctness and token count per rationale prefix")
        self.samples.append({"task": task, "curve": curve, "prefix_correct": prefix_correct,
                             "prefix_tokens": prefix_tokens, "correct": correct})

    def by_task(self) -> dict[str, list[dict]]:
        groups = defaultdict(list)
        for sample in self.samples:
            groups[sample["task"]].append(sample)
            groups[ALL].append(sample)
        return dict(sorted(groups.items(), key=lambda item: (item[0] == ALL, item[0])))

    def to_dict(self) -> dict:
        """``curves[task]`` (mean entropy after k sentences, bits), ``auroc[task]`` of the entropy drop and of
        the final entropy (lower = surer) against a correct answer, ``early_stopping`` (one row per threshold,
        all tasks pooled)."""
        curves, areas = {}, {}
        for task, samples in self.by_task().items():
            width = max(len(s["curve"]) for s in samples)
            curves[task] = [None if v is None else round(v, 4) for v in mean_curve([s["curve"] for s in samples], width)]
            labels = [s["correct"] for s in samples]
            areas[task] = {"entropy_drop": auroc_report([entropy_drop(s["curve"]) for s in samples], labels),
                           "final_certainty": auroc_report([-s["curve"][-1] for s in samples], labels)}
        sweep = early_stop_sweep([s["curve"] for s in self.samples], [s["prefix_correct"] for s in self.samples],
                                 [s["prefix_tokens"] for s in self.samples], self.thresholds,
                                 [s["correct"] for s in self.samples]) if self.samples else []
        return {"n": len(self.samples), "accuracy": share(sum(s["correct"] for s in self.samples), len(self.samples)),
                "curves": curves, "auroc": areas,
                "early_stopping": [{k: round(v, 4) for k, v in row.items()} for row in sweep]}
