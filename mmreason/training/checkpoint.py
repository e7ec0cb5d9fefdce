"""Turning a Lightning training checkpoint into an export folder."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from mmreason.export import save_export
from mmreason.training.modules import training_module


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Rebuild the training module recorded in ``ckpt`` (one of :data:`TRAINING_MODULES`, never a
    class imported by its name) and export its model to ``out``."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    target = state.get("mmreason_module")
    if target is None:
        raise ValueError(f"{ckpt} was not written by an mmreason training module (no 'mmreason_module' entry)")
    cls = training_module(target, str(ckpt))
    if not isinstance(state.get("hyper_parameters"), dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(f"{ckpt} has no 'hyper_parameters' and 'state_dict' dicts; is it a complete training checkpoint?")
    accepted = inspect.signature(cls).parameters
    module = cls(**{k: v for k, v in state["hyper_parameters"].items() if k in accepted})
    module.load_state_dict(state["state_dict"])
    metrics = dict(getattr(module, "last_metrics", {})) | {"global_step": state.get("global_step")}
    return save_export(module.model, out, recipe=state.get("hyper_parameters"), metrics=metrics)
