"""Perception pretraining of a vision encoder on dense scene-graph targets.

Trains on any batches whose records carry ``meta.scene`` (the fresh-scene
stream or synthetic shards); validation and test list the objects the encoder
sees and score them against the scene graph (:mod:`mmreason.eval.perception`).
"""

from __future__ import annotations

from mmreason.training.sft import SFTModule


class EncoderModule(SFTModule):
    """Args: as :class:`~mmreason.training.sft.SFTModule` (``model``: a registered encoder, e.g.
    ``encoder-tiny``); the loss terms are logged as ``train/{centre,attributes,geometry,cover}``."""

    def __init__(self, model: str | None = "encoder-tiny", model_config: dict | None = None, init: dict | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100, min_lr_ratio: float = 0.05):
        super().__init__(model, model_config, init, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         min_lr_ratio=min_lr_ratio)

    def eval_options(self) -> dict:
        """An encoder is asked for the objects it sees; there is no text to budget."""
        return {}

    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch)
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss")
        return out["loss"]
