"""Training the two stages of MM-CoT / MC-CoT with Lightning.

Stage 1 (``stage: rationale``) learns to write the rationale. Stage 2
(``stage: answer``, ``init: {from: STAGE_1_EXPORT}``) adds a fresh answer
stage next to the frozen rationale stage, trains it on gold rationales and
validates it on rationales the rationale stage generates, so its export holds
the whole pipeline. ``stage: direct`` answers without a rationale.
Validation/test report answer accuracy (when the model answers) and the
rationale's BLEU/ROUGE-L against the gold rationale (when it writes one).
"""

from __future__ import annotations

from mmreason.build import create_model
from mmreason.models.mccot import RATIONALE_SOURCES, STAGES
from mmreason.training.sft import SFTModule


class MCCoTModule(SFTModule):
    """Args (the optimiser's are :class:`SFTModule`'s):
    stage: the stage this run trains: ``rationale``, ``answer`` or ``direct``; ``answer`` with
        ``init: {from: EXPORT}`` of a rationale stage adds the answer stage beside it (kept frozen).
    passes, alpha, vote: self-consistency training; ``passes: 1`` is plain MM-CoT. ``vote``: ``soft``
        (the paper's rule), ``released`` (the released code's, whose denominator sums over the batch)
        or ``hard`` (ablation); see mmreason.layers.logit_voting.
    eval_rationales: what the answer stage reads when validating/testing: ``generated``
        (autoregressive, the honest protocol), ``teacher_forced`` (upstream's) or ``gold``.
    eval_votes, eval_temperature: inference-time voting over sampled rationales.
    max_new_tokens, max_answer_tokens: generation budgets of the two stages.
    """

    def __init__(self, model: str | None = "mccot-tiny", model_config: dict | None = None, init: dict | None = None,
                 stage: str = "rationale", passes: int = 1, alpha: float = 0.5,
                 vote: str = "soft", eval_rationales: str = "generated", eval_votes: int = 1,
                 eval_temperature: float = 0.7, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 100, min_lr_ratio: float = 0.05, max_new_tokens: int = 160,
                 max_answer_tokens: int = 24):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if eval_rationales not in RATIONALE_SOURCES:
            raise ValueError(f"eval_rationales must be one of {RATIONALE_SOURCES}, got {eval_rationales!r}")
        super().__init__(model=model, model_config=model_config, init=init, lr=lr,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                         max_new_tokens=max_new_tokens)

    def build_model(self):
        h = self.hparams
        whole_export = isinstance(h.init, dict) and not h.init.get("parts")
        if whole_export:
            model = super().build_model()
            if h.stage not in model.stages:
                if h.stage != "answer" or "rationale" not in model.stages:
                    raise ValueError(f"{h.init['from']} holds stages {list(model.stages)}, not {h.stage!r}; an "
                                     "answer stage starts from a rationale stage's export")
                model.add_stage("answer")
        else:
            if h.stage == "answer" and h.eval_rationales != "gold":
                raise ValueError("the answer stage reads generated rationales at evaluation: start it from the "
                                 "rationale stage's export, init: {from: EXPORT} (or set eval_rationales: gold)")
            model = create_model(h.model, init=h.init, **{**(h.model_config or {}), "stages": [h.stage]})
        model.set_train_stage(h.stage)
        model.passes, model.alpha, model.vote = h.passes, h.alpha, h.vote
        model.config["self_consistency"] = {"passes": h.passes, "alpha": h.alpha, "vote": h.vote}
        return model

    def eval_options(self) -> dict:
        h = self.hparams
        return {"votes": h.eval_votes, "temperature": h.eval_temperature, "rationale_source": h.eval_rationales,
                "max_new_tokens": h.max_new_tokens, "max_answer_tokens": h.max_answer_tokens}

    def evaluator_options(self) -> dict:
        return {"rationale_source": self.hparams.eval_rationales}
