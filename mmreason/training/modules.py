"""The training modules a checkpoint may name: a fixed allow-list.

A checkpoint records which module wrote it (``mmreason_module``) so ``mmreason
export --ckpt`` can rebuild it. The name read from the file only selects an
entry here; it is never imported, so a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import importlib

TRAINING_MODULES = {
    "mmreason.training.sft.SFTModule": ("mmreason.training.sft", "SFTModule"),
    "mmreason.training.encoder.EncoderModule": ("mmreason.training.encoder", "EncoderModule"),
    "mmreason.training.mccot.MCCoTModule": ("mmreason.training.mccot", "MCCoTModule"),
    "mmreason.training.star.StarModule": ("mmreason.training.star", "StarModule"),
    "mmreason.training.star.SegmentationModule": ("mmreason.training.star", "StarModule"),  # its former name
    "mmreason.training.grpo.GRPOModule": ("mmreason.training.grpo", "GRPOModule"),
}


def training_module(name: object, source: str = "the checkpoint") -> type:
    """The registered training module called ``name``; ValueError naming the allowed ones otherwise."""
    if not isinstance(name, str) or name not in TRAINING_MODULES:
        shown = repr(name)[:120]
        raise ValueError(f"{source} names training module {shown}, which is not one of mmreason's: "
                         f"{', '.join(TRAINING_MODULES)}")
    module_name, class_name = TRAINING_MODULES[name]
    return getattr(importlib.import_module(module_name), class_name)
