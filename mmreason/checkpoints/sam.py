"""SAM's prompt encoder and mask decoder weights (segment-anything's ``sam_vit_*.pth``, or a folder
holding them) → a segmentation export whose decoder takes them.

SAM's checkpoints are one state dict: ``image_encoder.*``, ``prompt_encoder.*`` and
``mask_decoder.*``. Our decoder and prompt encoder have SAM's layout and names
(:mod:`mmreason.layers.mask_decoder`), so their weights load by name into the export
given as ``into`` — a ``star`` export built at SAM's size (``segmentation.embed_dim`` 256,
8 heads, depth 2, upscale 4; SAM itself reads a 64 × 64 grid of image tokens); any other
size is refused with the shapes that differ. SAM's ViT image encoder is not taken: the segmentation family reads
the patch tokens of its own vision tower.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmreason.checkpoints.source import CheckpointError, read_state_dict
from mmreason.export import load_export

FORMAT = "sam"
CONVERTER_VERSION = 1
OPTIONS = ("into",)  # the segmentation export whose decoder takes SAM's weights
PARTS = ("prompt_encoder.", "mask_decoder.")
IGNORED = ("image_encoder.",)


def _sam_state(source: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` file (read as data only) or a folder of weights."""
    if source.is_file():
        state = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{source}: expected a state dict of tensors (segment-anything's sam_vit_*.pth)")
        return state
    return read_state_dict(source)


def convert(source: Path, into: str | None = None):
    if into is None:
        raise CheckpointError("sam weights go into a segmentation export: give it with --into EXPORT")
    model = load_export(into)
    if model.family != "star":
        raise CheckpointError(f"{into} is a {model.family!r} export; SAM's decoder goes into a 'star' export")
    state = _sam_state(source)
    unexpected = [k for k in state if not k.startswith(PARTS + IGNORED)]
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} key(s) outside SAM's layout, e.g. {unexpected[:3]}; "
                              f"expected keys starting with {PARTS + IGNORED}")
    ours = model.state_dict()
    taken = {k: v for k, v in state.items() if k.startswith(PARTS)}
    missing = sorted(k for k in ours if k.startswith(PARTS) and k not in taken)
    misshapen = [f"{k} {tuple(v.shape)} vs ours {tuple(ours[k].shape)}" for k, v in taken.items()
                 if k in ours and v.shape != ours[k].shape]
    extra = sorted(k for k in taken if k not in ours)
    if missing or misshapen or extra:
        raise CheckpointError(f"{source} does not fit {into}'s decoder: missing {missing[:3]}, unexpected {extra[:3]}, "
                              f"shapes {misshapen[:3]} (SAM's decoder needs segmentation.embed_dim 256, 8 heads, "
                              "depth 2 and upscale 4)")
    model.load_state_dict(taken, strict=False)
    return model.eval()
