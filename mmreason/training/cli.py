"""``mmreason fit | validate | test``: LightningCLI with the zoo's callbacks always present.

Every run gets a ``last.ckpt`` under ``{default_root_dir}/checkpoints``, rewritten
every :data:`CHECKPOINT_EVERY_N_STEPS` steps and at the end (so ``--ckpt_path last``
resumes), atomic checkpoint writes, export folders, and a
stop at the first non-finite loss or gradient.
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mmreason.training.callbacks import (
    AtomicCheckpointIO,
    ExportCallback,
    FiniteTrainingGuard,
    check_resume_point,
)
from mmreason.training.class_paths import check_command_line

CHECKPOINT_EVERY_N_STEPS = 100  # a kill loses at most this many steps; recipes may set checkpoint.every_n_train_steps


def _checkpoint_dir(root: str | None) -> str:
    return os.path.join(root or ".", "checkpoints")


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

    def before_fit(self):
        if self.config["fit"].get("ckpt_path") == "last":
            check_resume_point(self.trainer.checkpoint_callback.dirpath)


class RecipeParser(MMReasonCLI):
    """Parses and type-checks a recipe against every class it names, without building anything."""

    def instantiate_classes(self) -> None:
        pass


def run_lightning_cli(args: list[str], cli_class: type[LightningCLI] = MMReasonCLI, run: bool = True):
    check_command_line(args)
    return cli_class(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        args=args, run=run, save_config_kwargs={"overwrite": True},
        trainer_defaults={"plugins": [AtomicCheckpointIO()]}, auto_configure_optimizers=False,
    )


def parse_recipe(path: str) -> dict:
    """The resolved recipe as a plain dict; raises if any key or value does not fit its class."""
    return run_lightning_cli(["-c", str(path)], RecipeParser, run=False).config.as_dict()
