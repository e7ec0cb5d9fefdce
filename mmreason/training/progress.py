"""A progress bar counted in optimizer steps, the unit recipes are written in.

Lightning's bars count the batches of an epoch, and a shard stream's epoch is
an estimate: they read ``Epoch 2/-2 … 4/4`` with an ETA for that epoch alone.
This bar counts global steps up to ``max_steps`` (or the trainer's estimate of
all steps), so its rate is steps/s and its ETA is the whole run's; a resumed run
starts where it resumes. Each validation prints its metrics on one line, and
validation and test passes get a bar of their own, gone when they end.
"""

from __future__ import annotations

import math
import sys
from contextlib import ExitStack

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

STAGE_PREFIXES = ("train/", "val/", "test/")  # dropped from names on the bar: it says what runs
LOG_FILE_INTERVAL_S = 30  # how often a bar redraws into a file rather than a terminal


def readable(metrics: dict) -> dict[str, str]:
    """Metric names without their stage prefix (and without Lightning's ``v_num``), values to 4 digits."""
    out = {}
    for name, value in metrics.items():
        if name != "v_num":
            short = next((name[len(p):] for p in STAGE_PREFIXES if name.startswith(p)), name)
            out[short] = f"{float(value):.4g}" if not isinstance(value, str) else value
    return out


class StepProgressBar(ProgressBar):
    """One bar over the run's global steps (steps/s, the ETA to the last step, the metrics logged with
    ``prog_bar=True``) and one over each validation or test pass."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self.train_bar: tqdm | None = None
        self.eval_bar: tqdm | None = None
        self._logs = ExitStack()  # while a bar is drawn, log lines are printed above it, not through it

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        if self._enabled:
            tqdm.write(" ".join(map(str, args)), file=sys.stderr, **kwargs)

    def _bar(self, description: str, total: float | None, unit: str, initial: int = 0, leave: bool = False) -> tqdm:
        finite = total is not None and math.isfinite(total)
        return tqdm(desc=description, total=total if finite else None, initial=initial, unit=unit,
                    leave=leave, dynamic_ncols=True, file=sys.stderr, disable=not self._enabled,
                    mininterval=0.1 if sys.stderr.isatty() else LOG_FILE_INTERVAL_S, smoothing=0.1)

    def _close(self, name: str) -> None:
        bar = getattr(self, name)
        if bar is not None:
            bar.close()
            setattr(self, name, None)

    def on_train_start(self, trainer, pl_module):
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.train_bar = self._bar("train", total, "step", initial=trainer.global_step, leave=True)
        self._logs.enter_context(logging_redirect_tqdm())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.train_bar is not None and trainer.global_step != self.train_bar.n:
            self.train_bar.update(trainer.global_step - self.train_bar.n)
            self.train_bar.set_postfix(readable(self.get_metrics(trainer, pl_module)), refresh=False)

    def on_train_end(self, trainer, pl_module):
        self._close("train_bar")
        self._logs.close()

    def on_exception(self, trainer, pl_module, exception):
        self._close("eval_bar")
        self.on_train_end(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self.eval_bar = self._bar("sanity check" if trainer.sanity_checking else "validate", sum(batches), "batch")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.eval_bar is not None:
            self.eval_bar.update(1)

    def on_validation_end(self, trainer, pl_module):
        self._close("eval_bar")
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if metrics:
                self.print(f"step {trainer.global_step} validation: "
                           + ", ".join(f"{k} {v}" for k, v in readable(metrics).items()))

    def on_test_start(self, trainer, pl_module):
        self.eval_bar = self._bar("test", sum(trainer.num_test_batches), "batch")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.eval_bar is not None:
            self.eval_bar.update(1)

    def on_test_end(self, trainer, pl_module):
        self._close("eval_bar")
