"""Training the two stages of MM-CoT / MC-CoT with Lightning.

Stage 1 (``stage: rationale``) learns to write the rationale. Stage 2
(``stage: answer``, ``rationale_from``: stage 1's export) adds a fresh answer
stage next to the frozen rationale stage, trains it on gold rationales and
validates it on rationales the rationale stage generates, so its export holds
the whole pipeline. ``stage: direct`` answers without a rationale.
Validation/test report answer accuracy (when the model answers) and the
rationale's BLEU/ROUGE-L against the gold rationale (when it writes one).
"""

from __future__ import annotations

from mmreason.build import create_model
from mmreason.eval.accuracy import AccuracyReport
from mmreason.eval.rationale import RationaleReport
from mmreason.export import load_export
from mmreason.models.base import ANSWERS
from mmreason.models.mccot import RATIONALE_SOURCES, STAGES
from mmreason.training.sft import SFTModule, gather_report


class MCCoTModule(SFTModule):
    """Args (the optimiser's are :class:`SFTModule`'s):
    stage: the stage this run trains: ``rationale``, ``answer`` or ``direct``.
    rationale_from: for ``answer``, the export of a trained rationale stage (kept frozen).
    passes, alpha, vote: self-consistency training; ``passes: 1`` is plain MM-CoT.
    eval_rationales: what the answer stage reads when validating/testing: ``generated``
        (autoregressive, the honest protocol), ``teacher_forced`` (upstream's) or ``gold``.
    eval_votes, eval_temperature: inference-time voting over sampled rationales.
    max_new_tokens, max_answer_tokens: generation budgets of the two stages.
    """

    def __init__(self, model: str = "mccot-tiny", model_config: dict | None = None, init_from: str | None = None,
                 stage: str = "rationale", rationale_from: str | None = None, passes: int = 1, alpha: float = 0.5,
                 vote: str = "soft", eval_rationales: str = "generated", eval_votes: int = 1,
                 eval_temperature: float = 0.7, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 100, min_lr_ratio: float = 0.05, max_new_tokens: int = 160,
                 max_answer_tokens: int = 24):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if eval_rationales not in RATIONALE_SOURCES:
            raise ValueError(f"eval_rationales must be one of {RATIONALE_SOURCES}, got {eval_rationales!r}")
        super().__init__(model=model, model_config=model_config, init_from=init_from, lr=lr,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                         max_new_tokens=max_new_tokens)
        self.rationale_reports: dict[str, RationaleReport] = {}

    def build_model(self):
        h = self.hparams
        if h.init_from and h.rationale_from:
            raise ValueError("set init_from (fine-tune a whole export) or rationale_from (add an answer stage to "
                             "a rationale stage's export), not both")
        if h.init_from:
            model = super().build_model()
            if h.stage not in model.stages:
                raise ValueError(f"{h.init_from} holds stages {list(model.stages)}, not {h.stage!r}; to add an "
                                 "answer stage to a rationale stage use --model.init_args.rationale_from")
        elif h.rationale_from:
            if h.stage != "answer":
                raise ValueError(f"rationale_from starts the answer stage; this run trains stage {h.stage!r}")
            if h.model_config:
                raise ValueError("model_config does not apply with rationale_from: the answer stage takes the "
                                 "rationale stage's architecture from its export")
            model = load_export(h.rationale_from).train()
            if "rationale" not in model.stages:
                raise ValueError(f"{h.rationale_from} holds stages {list(model.stages)}, not a rationale stage")
            if "answer" not in model.stages:
                model.add_stage("answer")
        else:
            if h.stage == "answer" and h.eval_rationales != "gold":
                raise ValueError("the answer stage reads generated rationales at evaluation: set rationale_from "
                                 "to the rationale stage's export (or eval_rationales: gold)")
            model = create_model(h.model, **{**(h.model_config or {}), "stages": [h.stage]})
        model.set_train_stage(h.stage)
        model.passes, model.alpha, model.vote = h.passes, h.alpha, h.vote
        model.config["self_consistency"] = {"passes": h.passes, "alpha": h.alpha, "vote": h.vote}
        return model

    def _eval_step(self, batch, stage: str):
        h = self.hparams
        records = batch["records"]
        results = self.model.run(batch["images"], records, votes=h.eval_votes, temperature=h.eval_temperature,
                                 rationale_source=h.eval_rationales, max_new_tokens=h.max_new_tokens,
                                 max_answer_tokens=h.max_answer_tokens)
        if self.model.can(ANSWERS):
            self.reports.setdefault(stage, AccuracyReport()).add_many([r["text"] for r in results], records)
        if "rationale" in self.model.stages and h.eval_rationales == "generated":
            self.rationale_reports.setdefault(stage, RationaleReport()).add_many(
                [r["rationale"] for r in results], [rec.rationale for rec in records])

    def _eval_epoch_end(self, stage: str):
        """Decided from the model and recipe only, so every rank reaches the same collectives."""
        if "rationale" in self.model.stages and self.hparams.eval_rationales == "generated":
            scores = gather_report(self.rationale_reports.pop(stage, RationaleReport())).to_dict()
            self.log_metrics({f"{stage}/rationale_{k}": float(scores[k]) for k in ("bleu1", "bleu4", "rougeL")})
        if self.model.can(ANSWERS):
            super()._eval_epoch_end(stage)
