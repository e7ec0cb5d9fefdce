"""Perception pretraining of a vision encoder on dense scene-graph targets.

Trains on any batches whose records carry ``meta.scene`` (the fresh-scene
stream or synthetic shards); validation and test list the objects the encoder
sees and score them against the scene graph (:mod:`mmreason.eval.perception`).
"""

from __future__ import annotations

from mmreason.data.scene_targets import scenes_of
from mmreason.eval.perception import PerceptionReport, scaled_scene
from mmreason.training.sft import SFTModule


class EncoderModule(SFTModule):
    """Args: as :class:`~mmreason.training.sft.SFTModule` (``model``: a registered encoder, e.g.
    ``encoder-tiny``); the loss terms are logged as ``train/{centre,attributes,geometry,cover}``."""

    def __init__(self, model: str | None = "encoder-tiny", model_config: dict | None = None, init: dict | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100, min_lr_ratio: float = 0.05):
        super().__init__(model, model_config, init, lr, weight_decay, warmup_steps, min_lr_ratio)
        self.perception: dict[str, PerceptionReport] = {}

    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch)
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss")
        return out["loss"]

    def _eval_step(self, batch, stage: str) -> None:
        scenes, size = scenes_of(batch)
        factor = self.model.preprocess.image_size / size
        report = self.perception.setdefault(stage, PerceptionReport())
        for seen, scene in zip(self.model.perceive(batch["images"]), scenes):
            report.add(seen, scaled_scene(scene, factor))

    def _eval_epoch_end(self, stage: str) -> None:
        summary = self.perception.pop(stage, PerceptionReport()).to_dict()
        self.log_metrics({f"{stage}/{k}": v["value"] for k, v in summary.items()})
