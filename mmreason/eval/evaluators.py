"""Evaluators: what is scored on a model's responses, the same in training and in ``mmreason eval``.

A model answers a batch with :meth:`~mmreason.models.base.ZooModel.respond`
(one dict per record: ``text``, and ``rationale``, ``confidence``, ``mask`` or
``objects`` where the family makes them). The capabilities a family declares
decide which evaluators score those responses (:func:`evaluators_for`), so
neither the trainers nor the CLI branch on families. Each evaluator gives flat
``metrics()`` (logged as ``{stage}/{name}``, kept in the export's card), a
``report()`` section for the JSON report and a ``table()`` for people, and
merges across ranks through ``state()``/``merge_state()``.
"""

from __future__ import annotations

from mmreason.data.scene_targets import scenes_of
from mmreason.eval.accuracy import AccuracyReport, format_table, majority_baseline
from mmreason.eval.answers import gold_answer
from mmreason.eval.crops import CropReport
from mmreason.eval.perception import PerceptionReport, scaled_scene
from mmreason.eval.rationale import RationaleReport
from mmreason.eval.segmentation import SegmentationReport, has_text_answer, score_segments
from mmreason.models.base import ANSWERS, CROPS, PERCEIVES, SEGMENTS


class Evaluator:
    """One kind of score over a model's responses, kept in ``self.scores`` (a report with ``to_dict``,
    ``state``, ``from_state`` and ``merge``); subclasses say how a batch adds to it and what it logs."""

    key: str | None = None  # its section of ``mmreason eval``'s report (None: the top level)

    def __init__(self, scores):
        self.scores = scores

    def add(self, responses: list[dict], batch: dict) -> list[dict | None] | None:
        """Score a batch; returns what each sample scored (None for a sample it does not score), so every
        sample can be listed with its scores, or None when it keeps no per-sample score."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    def report(self) -> dict:
        return self.scores.to_dict()

    def state(self) -> dict:
        return self.scores.state()

    def merge_state(self, state: dict) -> None:
        self.scores.merge(type(self.scores).from_state(state))


class AnswerEvaluator(Evaluator):
    """Answer accuracy per task against the majority class; the mean vote share when answers were voted."""

    def __init__(self):
        super().__init__(AccuracyReport())
        self.records, self.confidences = [], []

    def add(self, responses: list[dict], batch: dict) -> list[dict | None]:
        outcomes = []
        for response, record in zip(responses, batch["records"], strict=True):
            if not has_text_answer(record):
                outcomes.append(None)
                continue
            correct, parsed = self.scores.add(response["text"], record)
            self.records.append(record)
            outcomes.append({"gold": gold_answer(record), "parsed_answer": parsed, "correct": correct})
        self.confidences += [r["confidence"] for r in responses if r.get("confidence") is not None]
        return outcomes

    def metrics(self) -> dict[str, float]:
        summary = self.scores.to_dict()
        return {"accuracy": summary["accuracy"], "parse_failure_rate": summary["parse_failure_rate"],
                **{f"accuracy_{task}": v["accuracy"] for task, v in summary["per_task"].items()}}

    def report(self) -> dict:
        out = self.scores.to_dict(majority_baseline(self.records))
        if self.confidences:
            out["mean_confidence"] = sum(self.confidences) / len(self.confidences)
        return out

    def table(self) -> str:
        return format_table(self.scores, majority_baseline(self.records))


class RationaleEvaluator(Evaluator):
    """BLEU-1/4 and ROUGE-L of generated rationales against the records' gold ones."""

    key = "rationale"

    def __init__(self):
        super().__init__(RationaleReport())

    def add(self, responses: list[dict], batch: dict) -> None:
        self.scores.add_many([r["rationale"] for r in responses], [rec.rationale for rec in batch["records"]])

    def metrics(self) -> dict[str, float]:
        summary = self.scores.to_dict()
        return {f"rationale_{k}": float(summary[k]) for k in ("bleu1", "bleu4", "rougeL")}

    def table(self) -> str:
        s = self.scores.to_dict()
        return f"rationale: BLEU-1 {s['bleu1']:.1f}, BLEU-4 {s['bleu4']:.1f}, ROUGE-L {s['rougeL']:.3f} (n={s['n']})"


class CropEvaluator(Evaluator):
    """Where a crop-action policy looked: mean best IoU of its crops with the rationale boxes, action shares."""

    key = "crops"

    def __init__(self, image_size: int):
        super().__init__(CropReport())
        self.image_size = image_size

    def add(self, responses: list[dict], batch: dict) -> list[dict]:
        ious = self.scores.add_many([r["text"] for r in responses], batch["records"], self.image_size)
        return [{"crop_iou": iou} for iou in ious]

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.scores.to_dict().items() if v is not None}

    def table(self) -> str:
        return "crops: " + ", ".join(f"{k} {v:.3f}" for k, v in self.metrics().items())


class SegmentationEvaluator(Evaluator):
    """gIoU / cIoU (LISA semantics) overall and per question type, on the samples that have a mask."""

    key = "segmentation"

    def __init__(self):
        super().__init__(SegmentationReport())

    def add(self, responses: list[dict], batch: dict) -> list[dict | None]:
        return [None if iou is None else {"iou": iou} for iou in score_segments(self.scores, responses, batch)]

    def metrics(self) -> dict[str, float]:
        summary = self.scores.to_dict()
        return {"giou": summary["giou"], "ciou": summary["ciou"],
                **{f"giou_{group}": v["giou"] for group, v in summary["per_group"].items()}}

    def table(self) -> str:
        s = self.scores.to_dict()
        return (f"segmentation (n={s['n']}): gIoU {s['giou']:.4f}, cIoU {s['ciou']:.4f}; "
                + ", ".join(f"{g} {v['giou']:.3f}" for g, v in s["per_group"].items()))


class PerceptionEvaluator(Evaluator):
    """The objects an encoder sees against the scene graphs in the records' ``meta`` (synthetic data)."""

    key = "perception"

    def __init__(self, image_size: int):
        super().__init__(PerceptionReport())
        self.image_size = image_size

    def add(self, responses: list[dict], batch: dict) -> None:
        scenes, size = scenes_of(batch)
        for response, scene in zip(responses, scenes, strict=True):
            self.scores.add(response["objects"], scaled_scene(scene, self.image_size / size))

    def metrics(self) -> dict[str, float]:
        return {k: v["value"] for k, v in self.scores.to_dict().items()}

    def table(self) -> str:
        return self.scores.table()


def evaluators_for(model, rationale_source: str = "generated") -> list:
    """What a model's declared capabilities make scoreable; rationales are scored only when generated
    (a gold or teacher-forced rationale says nothing about the model's own)."""
    if model.can(PERCEIVES):
        return [PerceptionEvaluator(model.preprocess.image_size)]
    evaluators = [AnswerEvaluator()] if model.can(ANSWERS) else []
    if model.writes_rationales() and rationale_source == "generated":
        evaluators.append(RationaleEvaluator())
    if model.can(CROPS):
        evaluators.append(CropEvaluator(model.preprocess.image_size))
    if model.can(SEGMENTS):
        evaluators.append(SegmentationEvaluator())
    return evaluators
