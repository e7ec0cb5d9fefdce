"""Callbacks that make every training run leave a usable export folder.

``export/`` is written at the end of fit, ``export-best/`` whenever the
monitored validation metric improves; only global rank 0 writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from mmreason.export import save_export

log = logging.getLogger(__name__)


def _recipe(trainer: L.Trainer) -> dict | None:
    """The resolved recipe LightningCLI saved for this run, if any."""
    for folder in (trainer.log_dir, trainer.default_root_dir):
        path = Path(folder or "") / "config.yaml"
        if folder and path.is_file():
            return yaml.safe_load(path.read_text())
    return None


class ExportCallback(L.Callback):
    """Write ``{dirpath}/export`` at the end of fit and ``{dirpath}/export-best`` on a new best ``monitor``."""

    def __init__(self, dirpath: str | None = None, monitor: str = "val/accuracy", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.dirpath, self.monitor, self.mode = dirpath, monitor, mode
        self.best: float | None = None

    def _root(self, trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def _export(self, trainer, pl_module, name: str) -> None:
        recipe = _recipe(trainer)  # trainer.log_dir is a collective call: every rank must reach it
        if trainer.is_global_zero:
            save_export(pl_module.model, self._root(trainer) / name, recipe=recipe,
                        metrics=dict(pl_module.last_metrics) | {"global_step": trainer.global_step})
        trainer.strategy.barrier("export")

    def on_validation_end(self, trainer, pl_module):
        if (trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or self.monitor not in trainer.callback_metrics):
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
            self._export(trainer, pl_module, "export-best")

    def on_fit_end(self, trainer, pl_module):
        self._export(trainer, pl_module, "export")

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it, so a crash never corrupts ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = str(path)
        protocols = get_filesystem(path).protocol
        if "file" not in (protocols if isinstance(protocols, tuple) else (protocols,)):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: no rename
        tmp = path + ".tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
