"""``mmreason fit | validate | test``: LightningCLI with the zoo's callbacks always present.

Every run gets a ``last.ckpt`` under ``{default_root_dir}/checkpoints``, rewritten
every :data:`CHECKPOINT_EVERY_N_STEPS` steps and at the end (so ``--ckpt_path last``
resumes), atomic checkpoint writes, export folders, and a
stop at the first non-finite loss or gradient. Unless a recipe says otherwise,
metrics go to ``{default_root_dir}/lightning_logs/version_N/metrics.csv`` (and to
TensorBoard under ``{default_root_dir}/tensorboard`` when it is installed), at
least :data:`MIN_LOGGED_POINTS` times a run, and a bar shows the run's progress in steps.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from mmreason.training.callbacks import (
    AtomicCheckpointIO,
    ExportCallback,
    FiniteTrainingGuard,
    check_resume_point,
)
from mmreason.training.class_paths import check_command_line
from mmreason.training.progress import StepProgressBar

CHECKPOINT_EVERY_N_STEPS = 100  # a kill loses at most this many steps; recipes may set checkpoint.every_n_train_steps
# Lightning's 50 leaves a 40-step run without a single logged point; 10 draws a curve for the tiny recipes
# while a long run's metrics.csv stays small. A recipe's value is lowered to max_steps / MIN_LOGGED_POINTS.
LOG_EVERY_N_STEPS, MIN_LOGGED_POINTS = 10, 4


def _checkpoint_dir(root: str | None) -> str:
    return os.path.join(root or ".", "checkpoints")


def _as_list(value) -> list:
    """A trainer argument that takes one object or a list of them, as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


class MMReasonCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # save_top_k 0 writes last.ckpt only when training ends; every_n_train_steps also writes it on the way
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.every_n_train_steps": CHECKPOINT_EVERY_N_STEPS})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.add_lightning_class_args(ExportCallback, "export")
        parser.link_arguments("trainer.default_root_dir", "export.dirpath")
        parser.add_lightning_class_args(FiniteTrainingGuard, "nonfinite")

    def before_instantiate_classes(self):
        """Lower ``log_every_n_steps`` so that every run logs at least :data:`MIN_LOGGED_POINTS` times."""
        trainer = self.config[self.subcommand]["trainer"] if self.subcommand else self.config["trainer"]
        if trainer.get("max_steps") and trainer["max_steps"] > 0 and trainer.get("log_every_n_steps"):
            trainer["log_every_n_steps"] = max(1, min(trainer["log_every_n_steps"],
                                                      trainer["max_steps"] // MIN_LOGGED_POINTS))

    def instantiate_trainer(self, **kwargs):
        """The recipe's trainer, with :func:`default_loggers` unless it names loggers (or ``logger: false``),
        the step progress bar unless it names a progress bar (or ``enable_progress_bar: false``), and atomic
        checkpoint writes unless it names a checkpoint plugin. Added here, not as defaults, so the run's
        ``config.yaml`` holds no instance it cannot write down and re-runs as it is."""
        trainer = self._get(self.config_init, "trainer", default={})
        plugins, callbacks = _as_list(trainer.get("plugins")), _as_list(trainer.get("callbacks"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if trainer.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(trainer.get("default_root_dir") or ".")
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self):
        if self.config["fit"].get("ckpt_path") == "last":
            check_resume_point(self.trainer.checkpoint_callback.dirpath)


class RecipeParser(MMReasonCLI):
    """Parses and type-checks a recipe against every class it names, without building anything."""

    def instantiate_classes(self) -> None:
        pass


def default_loggers(root: str) -> list:
    """CSV (always there; ``tools/plot_metrics.py`` draws it), and TensorBoard when it is installed."""
    loggers = [CSVLogger(root)]  # first: trainer.log_dir, where config.yaml is saved, is its folder
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(root, name="tensorboard"))
    return loggers


def run_lightning_cli(args: list[str], cli_class: type[LightningCLI] = MMReasonCLI, run: bool = True,
                      exit_on_error: bool = True):
    """``exit_on_error=False`` raises a command-line mistake as ``argparse.ArgumentError`` rather than
    printing the usage and exiting."""
    check_command_line(args)
    if logging.getLogger().handlers:  # the root handler prints Lightning's lines; Lightning's own would repeat each
        logging.getLogger("lightning").handlers.clear()
    errors = {"exit_on_error": exit_on_error}
    return cli_class(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        args=args, run=run, save_config_kwargs={"overwrite": True},
        trainer_defaults={"log_every_n_steps": LOG_EVERY_N_STEPS},
        auto_configure_optimizers=False, parser_kwargs={**errors, **{verb: errors for verb in cli_class.subcommands()}},
    )


def parse_recipe(path: str) -> dict:
    """The resolved recipe as a plain dict; raises if any key or value does not fit its class."""
    return run_lightning_cli(["-c", str(path)], RecipeParser, run=False).config.as_dict()
