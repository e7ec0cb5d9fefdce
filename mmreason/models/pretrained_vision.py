"""Starting a family's vision tower from another export's (``vision: {from_export: FOLDER, frozen: …}``).

The usual source is the perception-pretrained encoder (``family: encoder``),
but any export with a ``vision`` tower works. The tower's architecture and the
preprocessing its weights assume come from that export, so they can never
disagree with the weights; ``frozen`` keeps them fixed during training.
"""

from __future__ import annotations

from torch import nn

KEPT_OPTIONS = ("from_export", "frozen")  # what the user's own vision config may keep or set


def adopt_vision_export(config: dict) -> dict:
    """``config`` with the ``vision`` architecture and ``preprocess`` of the export named by
    ``config["vision"]["from_export"]`` (the user's ``frozen`` wins over the export's)."""
    from mmreason.export import read_export_config  # export → zoo → families: import when used

    source = config["vision"]["from_export"]
    exported = read_export_config(source)["config"]
    if "vision" not in exported:
        raise ValueError(f"vision.from_export needs an export with a vision tower; {source} has none")
    own = {k: config["vision"][k] for k in KEPT_OPTIONS if k in config["vision"]}
    return {**config, "vision": {**exported["vision"], **own}, "preprocess": exported["preprocess"]}


def load_vision_export(folder: str, *towers: nn.Module) -> None:
    """Copy the vision tower's weights from an export folder (read once) into each of ``towers``."""
    from mmreason.export import load_export

    weights = load_export(folder).vision.state_dict()
    for tower in towers:
        tower.load_state_dict(weights)


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
