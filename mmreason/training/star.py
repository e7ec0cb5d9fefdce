"""Supervised training of the reasoning-segmentation family: the SFT loop, scored by masks.

Training is :class:`~mmreason.training.sft.SFTModule`'s (the model's loss adds the mask
terms; the batch's masks reach it). Validation and test segment greedily and report
gIoU / cIoU (LISA semantics) overall and per question type, with answer accuracy.
"""

from __future__ import annotations

from mmreason.eval.accuracy import AccuracyReport
from mmreason.eval.segmentation import SegmentationReport, score_segments, with_text_answers
from mmreason.models.base import ANSWERS
from mmreason.models.star import strip_seg
from mmreason.training.sft import SFTModule, gather_report


def segmentation_eval_step(module, batch, stage: str) -> None:
    """Segment greedily; text answers (of a model that names objects) go to the accuracy report,
    masks to the segmentation one."""
    results = module.model.segment(batch["images"], batch["records"], max_new_tokens=module.hparams.max_new_tokens)
    if module.model.can(ANSWERS):
        texts, records = with_text_answers([strip_seg(r["text"]) for r in results], batch["records"])
        module.reports.setdefault(stage, AccuracyReport()).add_many(texts, records)
    score_segments(module.reports.setdefault(f"{stage}/segmentation", SegmentationReport()), results, batch)


def segmentation_eval_epoch_end(module, stage: str) -> None:
    """``{stage}/giou``, ``{stage}/ciou`` and gIoU per question type, gathered across ranks."""
    summary = gather_report(module.reports.pop(f"{stage}/segmentation", SegmentationReport())).to_dict()
    metrics = {f"{stage}/giou": summary["giou"], f"{stage}/ciou": summary["ciou"]}
    metrics.update({f"{stage}/giou_{group}": v["giou"] for group, v in summary["per_group"].items()})
    module.log_metrics(metrics)


class StarModule(SFTModule):
    """:class:`SFTModule` whose evaluation also scores the masks (``val/giou``, ``val/ciou``, per type)."""

    def _eval_step(self, batch, stage: str):
        segmentation_eval_step(self, batch, stage)

    def _eval_epoch_end(self, stage: str):
        if self.model.can(ANSWERS):
            super()._eval_epoch_end(stage)
        segmentation_eval_epoch_end(self, stage)
