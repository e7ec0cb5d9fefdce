"""Callbacks that make every training run leave a usable export folder and lose nothing.

``export/`` is written at the end of fit, ``export-best/`` whenever the
monitored validation metric improves; only global rank 0 writes. A run whose
loss or gradients stop being finite is stopped before the bad step reaches
the weights, so no checkpoint or export ever holds NaN.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

from mmreason.export import checkpoint_payload, dtype_name, model_from_checkpoint, save_export
from mmreason.training.checkpoint import MODEL_PREFIX

log = logging.getLogger(__name__)


def _recipe(trainer: L.Trainer) -> dict | None:
    """The resolved recipe LightningCLI saved for this run, if any."""
    for folder in (trainer.log_dir, trainer.default_root_dir):
        path = Path(folder or "") / "config.yaml"
        if folder and path.is_file():
            return yaml.safe_load(path.read_text())
    return None


PRECISION_DTYPES = {"bf16": "bfloat16", "16": "float16"}  # trainer precision prefix → exported weights


class ExportCallback(L.Callback):
    """Write ``{dirpath}/export`` at the end of fit and ``{dirpath}/export-best`` on a new best ``monitor``,
    weights stored in ``dtype`` (bf16 | fp16 | fp32; default: the trainer's precision, bf16 for
    ``bf16-mixed``)."""

    def __init__(self, dirpath: str | None = None, monitor: str = "val/accuracy", mode: str = "max",
                 dtype: str | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.dirpath, self.monitor, self.mode, self.dtype = dirpath, monitor, mode, dtype_name(dtype)
        self.best: float | None = None

    def _dtype(self, trainer) -> str:
        precision = str(trainer.precision)
        return self.dtype or next((d for p, d in PRECISION_DTYPES.items() if precision.startswith(p)), "float32")

    def _root(self, trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def _export(self, trainer, pl_module, name: str) -> None:
        """On global rank 0; a sharded (FSDP) model's whole weights are first gathered there by every rank,
        and the model rebuilt from them as ``export --ckpt`` does."""
        recipe = _recipe(trainer)  # trainer.log_dir is a collective call: every rank must reach it
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        weights = trainer.strategy.lightning_module_state_dict() if sharded else None  # collective too
        if trainer.is_global_zero:
            model = pl_module.model
            if sharded:
                model = model_from_checkpoint(
                    checkpoint_payload(model),
                    {k[len(MODEL_PREFIX):]: v for k, v in weights.items() if k.startswith(MODEL_PREFIX)},
                    f"the gathered weights for {name}")
            save_export(model, self._root(trainer) / name, recipe=recipe,
                        metrics=dict(pl_module.last_metrics) | {"global_step": trainer.global_step},
                        dtype=self._dtype(trainer))
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

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        """A resumed run's card keeps the last validation metrics, even if it validates no more."""
        pl_module.last_metrics.update(checkpoint.get("mmreason_metrics") or {})

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best")


class NonFiniteTraining(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


class FiniteTrainingGuard(L.Callback):
    """Drop any optimizer step whose loss or gradients are not finite; stop the run once more than
    ``max_skipped_steps`` steps were dropped (0: at the first), with an error naming the step.

    Under fp16 mixed precision the gradient scaler already skips overflowing steps, so only the
    loss is checked there.
    """

    def __init__(self, max_skipped_steps: int = 0):
        if max_skipped_steps < 0:
            raise ValueError(f"max_skipped_steps must be >= 0, got {max_skipped_steps}")
        self.max_skipped_steps, self.skipped = max_skipped_steps, 0
        self._problem: str | None = None

    def on_before_backward(self, trainer, pl_module, loss):
        if self._problem is None and not torch.isfinite(loss.detach()).all():
            self._problem = f"the loss is {loss.detach().float().flatten()[0].item()}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        problem, self._problem = self._problem, None
        if problem is None and trainer.precision not in ("16-mixed", "16"):
            problem = _non_finite_gradient(pl_module)
        if problem is None:
            return
        self.skipped += 1
        if self.skipped > self.max_skipped_steps:
            raise NonFiniteTraining(
                f"step {trainer.global_step}: {problem}; training stopped before this step changed the weights "
                f"({self.skipped} non-finite step(s), at most {self.max_skipped_steps} may be skipped: "
                "--nonfinite.max_skipped_steps). The last checkpoint and exports are intact; lower the learning "
                "rate or check the data, then resume with --ckpt_path last"
            )
        log.warning("step %d: %s; step skipped (%d of at most %d)", trainer.global_step, problem,
                    self.skipped, self.max_skipped_steps)
        for parameter in pl_module.parameters():
            parameter.grad = None  # the optimizer leaves parameters without a gradient untouched

    def state_dict(self):
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict):
        self.skipped = state_dict.get("skipped", 0)


def _non_finite_gradient(module) -> str | None:
    for name, parameter in module.named_parameters():
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            return f"the gradient of {name} is not finite"
    return None


TMP_SUFFIX = ".tmp"


def check_resume_point(checkpoint_dir: str | Path) -> None:
    """Before ``--ckpt_path last``: an interrupted first write (``last.ckpt.tmp`` without ``last.ckpt``)
    must not pass for "nothing to resume" and restart at step 0 unannounced."""
    folder = Path(checkpoint_dir)
    if not (folder / "last.ckpt").is_file() and (folder / f"last.ckpt{TMP_SUFFIX}").is_file():
        raise FileNotFoundError(
            f"cannot resume: {folder / 'last.ckpt'} does not exist and {folder / ('last.ckpt' + TMP_SUFFIX)} is a "
            "checkpoint whose writing was interrupted (incomplete); delete it to start from step 0"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it, so a crash never corrupts ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = str(path)
        protocols = get_filesystem(path).protocol
        if "file" not in (protocols if isinstance(protocols, tuple) else (protocols,)):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: no rename
        tmp = path + TMP_SUFFIX
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
