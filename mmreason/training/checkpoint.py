"""Turning a Lightning training checkpoint into an export folder.

A checkpoint written by an mmreason training module carries its model's
export config and tokenizer (``mmreason_export``) beside the weights, so the
export is rebuilt from the file alone — the folders training started from may
be gone. Checkpoints without that entry are rebuilt through their training
module, chosen from an allow-list (never a class imported by its name).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from mmreason.export import model_from_checkpoint, save_export
from mmreason.training.modules import training_module

MODEL_PREFIX = "model."


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """Export the model of training checkpoint ``ckpt`` to the folder ``out`` (weights in ``dtype``)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(f"{ckpt} has no 'state_dict'; is it a complete Lightning training checkpoint?")
    recipe = state.get("hyper_parameters")
    metrics = dict(state.get("mmreason_metrics") or {}) | {"global_step": state.get("global_step")}
    if "mmreason_export" in state:
        weights = {k[len(MODEL_PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(MODEL_PREFIX)}
        model = model_from_checkpoint(state["mmreason_export"], weights, str(ckpt))
    else:
        model = _rebuilt_module(state, ckpt).model
    return save_export(model, out, recipe=recipe, metrics=metrics, dtype=dtype)


def _rebuilt_module(state: dict, ckpt: Path):
    """The allow-listed training module named in an older checkpoint, rebuilt from its hyper-parameters."""
    target = state.get("mmreason_module")
    if target is None:
        raise ValueError(f"{ckpt} was not written by an mmreason training module (no 'mmreason_export' entry)")
    cls = training_module(target, str(ckpt))
    if not isinstance(state.get("hyper_parameters"), dict):
        raise ValueError(f"{ckpt} has no 'hyper_parameters' dict; is it a complete training checkpoint?")
    accepted = inspect.signature(cls).parameters
    module = cls(**{k: v for k, v in state["hyper_parameters"].items() if k in accepted})
    module.load_state_dict(state["state_dict"])
    return module
