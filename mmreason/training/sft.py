"""Supervised fine-tuning of any question-answering family with Lightning.

Loss on target tokens only; AdamW with warm-up + cosine; validation and test
generate answers and score them (parse failures reported separately). The
model is a registry name plus overrides, started from an export by ``init``.
"""

from __future__ import annotations

import functools
import time

import lightning as L
import torch

from mmreason.build import create_model
from mmreason.export import checkpoint_payload
from mmreason.models.base import CACHED_FEATURES
from mmreason.text.vocabulary import check_training_text, shard_records
from mmreason.training.evaluation import Evaluation
from mmreason.training.schedule import warmup_cosine

VOCABULARY_SAMPLE = 2000  # training records whose text is checked against the tokenizer before training
STANDARD_OUTPUTS = {"loss", "token_accuracy", "target_tokens", "tokens", "skipped"}  # of a model's batch_loss


class ModelHooks:
    """Lightning hooks every mmreason training module shares; it holds its family model as ``self.model``."""

    def setup(self, stage: str) -> None:
        """The model owns its preprocessing and its batch processor; the data module adopts them so the
        two never disagree (and the loader workers tokenise)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "preprocess"):
            for setting in ("image_size", "mean", "std", "resize"):  # the pixel limit stays the data's
                setattr(datamodule.preprocess, setting, getattr(self.model.preprocess, setting))
        if datamodule is not None and hasattr(datamodule, "processor"):
            datamodule.processor = self.batch_processor()
        if stage == "fit" and getattr(datamodule, "check_vocabulary", False) and self.model.tokenizer is not None:
            check_training_text(self.model.tokenizer, shard_records(datamodule.train_urls(), VOCABULARY_SAMPLE),
                                "training")

    def batch_processor(self):
        """What the training loader's workers run on each batch: the model's, for ``model.loss``."""
        return self.model.batch_processor()

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        """The model's visual input: cached vision features when the shards carry them and the model
        takes them (its encoder is frozen), else uint8 pixels normalised on the model's device."""
        features = batch.pop("features", None) if isinstance(batch, dict) else None
        if features is not None and self.model.can(CACHED_FEATURES):
            batch["images"] = features
            batch.pop("pixels", None)
        elif isinstance(batch, dict) and "pixels" in batch:
            batch["images"] = self.model.preprocess.normalize(batch.pop("pixels"))
        return batch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmreason_module"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["mmreason_export"] = checkpoint_payload(self.model)
        checkpoint["mmreason_metrics"] = dict(self.last_metrics)


class SFTModule(ModelHooks, Evaluation, L.LightningModule):
    """Args:
    model: a registered model name (``mmreason list``); may be left out when ``init`` starts from a whole export.
    model_config: overrides of that model's config (e.g. ``{output_format: answer}``).
    init: where to start from an earlier export: ``{from: EXPORT}`` (the whole model, to train on) or
        ``{from: EXPORT, parts: [vision, ...], frozen: [...]}`` (parts of a new model); see mmreason.build.
    lora: LoRA adapters to train instead of the layers they wrap, e.g. ``{rank: 16, alpha: 32}``
        (keys and defaults in mmreason.layers.lora; ``save: adapters`` exports the adapters alone).
    lr, weight_decay, warmup_steps, min_lr_ratio: AdamW and its warm-up + cosine schedule.
    max_new_tokens: generation budget when validating/testing.
    """

    def __init__(self, model: str | None = None, model_config: dict | None = None,
                 init: dict | None = None, lora: dict | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 100, min_lr_ratio: float = 0.05, max_new_tokens: int = 160):
        super().__init__()
        self.save_hyperparameters()
        self.model = self.build_model()
        self._last_step_end: float | None = None
        self.skipped_total = 0
        self.last_metrics: dict[str, float] = {}

    def build_model(self):
        """The registered model with its overrides, started from an export as ``init`` says."""
        return create_model(self.hparams.model, init=self.hparams.init, lora=self.hparams.get("lora"),
                            **(self.hparams.model_config or {}))

    # ---- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=(0.9, 0.95),
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = functools.partial(warmup_cosine, warmup_steps=self.hparams.warmup_steps, total_steps=total,
                                     min_ratio=self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        out = self.model.loss(batch)
        now = time.perf_counter()
        n = len(batch["records"])
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log("train/token_accuracy", out["token_accuracy"], prog_bar=True)
        for key in out.keys() - STANDARD_OUTPUTS:  # a family's own loss terms (e.g. mask_bce, mask_dice)
            self.log(f"train/{key}", out[key])
        if self._last_step_end is not None:
            elapsed = now - self._last_step_end
            self.log("train/samples_per_s", n / elapsed)
            self.log("train/tokens_per_s", float(out["tokens"]) / elapsed)
        self._last_step_end = now
        self.skipped_total += int(batch.get("skipped", 0)) + out["skipped"]
        self.log("data/skipped", float(self.skipped_total))
        return out["loss"]
