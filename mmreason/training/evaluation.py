"""Validation and test for every training module: the model's responses, scored by its evaluators.

The evaluators are those the model's declared capabilities call for
(:func:`mmreason.eval.evaluators.evaluators_for`), the same ones ``mmreason
eval`` uses; their metrics are logged as ``{stage}/{name}`` and kept in
``last_metrics`` for the export's card. A module changes only what it asks the
model for (:meth:`Evaluation.eval_options`).
"""

from __future__ import annotations

import torch.distributed as dist

from mmreason.eval.evaluators import evaluators_for


def gathered(evaluators: list, fresh: list) -> list:
    """Every rank's evaluators merged into ``fresh`` ones (the same kinds, empty); a collective call
    under DDP, so every rank must reach it — with the same list, which depends only on the model."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return evaluators
    for local, merged in zip(evaluators, fresh, strict=True):
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, local.state())
        for state in states:
            merged.merge_state(state)
    return fresh


class Evaluation:
    """Mixin for a LightningModule holding ``self.model``, ``self.last_metrics`` and
    ``hparams.max_new_tokens``."""

    def eval_options(self) -> dict:
        """What :meth:`~mmreason.models.base.ZooModel.respond` is asked for in validation and test."""
        return {"max_new_tokens": self.hparams.max_new_tokens}

    def evaluator_options(self) -> dict:
        return {}

    def _evaluators(self, stage: str) -> list:
        per_stage = self.__dict__.setdefault("_stage_evaluators", {})
        if stage not in per_stage:
            per_stage[stage] = evaluators_for(self.model, **self.evaluator_options())
        return per_stage[stage]

    def _eval_step(self, batch, stage: str) -> None:
        responses = self.model.respond(batch["images"], batch["records"], **self.eval_options())
        for evaluator in self._evaluators(stage):
            evaluator.add(responses, batch)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        evaluators = self._evaluators(stage)
        self._stage_evaluators.pop(stage)  # the next epoch starts empty
        metrics = {}
        for evaluator in gathered(evaluators, evaluators_for(self.model, **self.evaluator_options())):
            metrics.update({f"{stage}/{name}": value for name, value in evaluator.metrics().items()})
        self.log_metrics(metrics)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        self.last_metrics.update(metrics)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")
