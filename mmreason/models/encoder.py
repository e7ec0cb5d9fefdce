"""A vision encoder pretrained on dense scene-graph targets, the tiny zoo's stand-in for CLIP.

Real vision-language models start from an encoder that already sees shapes and
positions; no such weights exist offline, so this family makes one. Linear
heads on every patch token predict the targets of
:mod:`mmreason.data.scene_targets`; being linear, they force the patch tokens
themselves to carry colour, shape, size and position, which is what a family
reading those tokens needs. Its export is an ordinary export folder whose
``vision`` any family starts from (``init: {from: FOLDER, parts: [vision]}``, see mmreason.build).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmreason.data import scene_targets as targets
from mmreason.data.preprocess import Preprocess
from mmreason.data.scene_targets import scenes_of
from mmreason.layers.vision import build_vision_tower
from mmreason.models.base import PERCEIVES, ZooModel
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.config_schema import LEAF, PREPROCESS, VISION
from mmreason.zoo import register_family, register_model

TINY_CONFIG = {
    # the tiny VLMs' ViT (same width, depth and input, so their step times do not change), convolutional stem
    "vision": {**BASELINE_TINY["vision"], "stem": "conv"},
    "preprocess": BASELINE_TINY["preprocess"],
    "loss_weights": {"centre": 1.0, "attributes": 1.0, "geometry": 5.0, "cover": 1.0},
    "centre_pos_weight": 4.0,
}
N_COLOURS, N_SHAPES, N_SIZES = len(targets.COLOUR_NAMES), len(targets.SHAPE_NAMES), len(targets.SIZE_NAMES)
# Output channels per patch token, in order.
HEAD_LAYOUT = {"centre": 1, "colour": N_COLOURS, "shape": N_SHAPES, "size": N_SIZES, "offset": 2, "extent": 2,
               "cover_colour": N_COLOURS + 1, "cover_shape": N_SHAPES + 1}


@register_family("encoder")
class SceneEncoder(ZooModel):
    """The vision tower plus linear per-patch heads; ``perceive`` lists the objects it sees."""

    capabilities = frozenset({PERCEIVES})
    init_parts = ("vision",)
    config_schema = {"vision": VISION, "preprocess": PREPROCESS, "centre_pos_weight": LEAF,
                     "loss_weights": dict.fromkeys(("centre", "attributes", "geometry", "cover"), LEAF)}

    def __init__(self, config: dict, tokenizer=None):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.tokenizer = tokenizer  # none: an encoder reads no text (kept for the export contract)
        self.preprocess = Preprocess.from_dict({**Preprocess().to_dict(), **config.get("preprocess", {})})
        vision = config["vision"]
        self.vision = build_vision_tower(vision)
        tokens = self.vision.num_tokens(self.preprocess.image_size)
        self.grid = math.isqrt(tokens)
        if self.grid * self.grid != tokens or self.preprocess.image_size % self.grid:
            raise ValueError(f"the vision tower gives {tokens} tokens for {self.preprocess.image_size} px images; "
                             "dense targets need a square token grid that tiles the image exactly")
        self.heads = nn.Linear(self.vision.width, sum(HEAD_LAYOUT.values()))
        self.loss_weights = {**TINY_CONFIG["loss_weights"], **config.get("loss_weights", {})}
        # centre cells are ~1 in 14: weighting them up trades a little precision for recall
        self.register_buffer("centre_pos_weight", torch.tensor(float(config.get("centre_pos_weight", 1.0))),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cell predictions, each (B, grid, grid, channels) (``centre`` without the channel axis)."""
        out = self.heads(self.vision(images)).unflatten(1, (self.grid, self.grid))
        parts = dict(zip(HEAD_LAYOUT, out.split(list(HEAD_LAYOUT.values()), dim=-1)))
        parts["centre"] = parts["centre"].squeeze(-1)
        parts["offset"] = parts["offset"].sigmoid()
        return parts

    def targets_for(self, scenes: list[list[dict]], scene_size: int, device) -> dict[str, torch.Tensor]:
        """Dense targets of scenes laid out at ``scene_size`` px, as tensors on ``device``."""
        return {k: torch.from_numpy(v).to(device)
                for k, v in targets.batch_targets(scenes, scene_size, self.grid).items()}

    def part_modules(self, part: str) -> list[nn.Module]:
        return [self.vision] if part == "vision" else super().part_modules(part)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Dense targets come from the scene graphs the records carry (synthetic shards or streams)."""
        scenes, size = scenes_of(batch)
        return self.batch_loss(batch["images"], scenes, size)

    def batch_loss(self, images: torch.Tensor, scenes: list[list[dict]], scene_size: int) -> dict[str, torch.Tensor]:
        """Weighted sum of: centre-cell BCE, attribute CE at centre cells, L1 on centre offset and box
        extent at centre cells, and cover CE at every cell; each term also returned on its own."""
        pred, tgt = self(images), self.targets_for(scenes, scene_size, images.device)
        at_centre = tgt["centre"] > 0
        terms = {"centre": F.binary_cross_entropy_with_logits(pred["centre"], tgt["centre"],
                                                              pos_weight=self.centre_pos_weight)}
        terms["attributes"] = sum(F.cross_entropy(pred[k].flatten(0, 2), tgt[k].flatten(), ignore_index=targets.IGNORE)
                                  for k in ("colour", "shape", "size"))
        terms["geometry"] = (F.l1_loss(pred["offset"][at_centre], tgt["offset"][at_centre])
                             + F.l1_loss(pred["extent"][at_centre], tgt["extent"][at_centre]))
        terms["cover"] = sum(F.cross_entropy(pred[k].flatten(0, 2), tgt[k].flatten())
                             for k in ("cover_colour", "cover_shape"))
        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        return {"loss": loss, **terms}

    def respond(self, images: torch.Tensor, records: list, max_new_tokens: int | None = None) -> list[dict]:
        """What evaluation scores: the objects seen in each image (records and budget do not apply)."""
        return [{"objects": objects} for objects in self.perceive(images)]

    @torch.no_grad()
    def perceive(self, images: torch.Tensor, threshold: float = 0.5) -> list[list[dict]]:
        """The objects seen in each image: ``{colour, shape, size, center, box, score}``, pixel
        coordinates of the model's input size. A centre near a cell border may fire in both cells;
        detections whose centres lie within half a cell of a stronger one are the same object."""
        pred = self(images)
        cell = self.preprocess.image_size / self.grid
        scores = pred["centre"].sigmoid()
        out = []
        for b in range(images.shape[0]):
            found: list[dict] = []
            rows, cols = torch.nonzero(scores[b] > threshold, as_tuple=True)
            order = scores[b, rows, cols].argsort(descending=True)
            for r, c in zip(rows[order].tolist(), cols[order].tolist()):
                cx, cy = ((torch.tensor([c, r]) + pred["offset"][b, r, c].cpu()) * cell).tolist()
                if any(math.dist((cx, cy), o["center"]) < cell / 2 for o in found):
                    continue
                w, h = (pred["extent"][b, r, c].cpu() * self.preprocess.image_size).tolist()
                found.append({
                    "colour": targets.COLOUR_NAMES[int(pred["colour"][b, r, c].argmax())],
                    "shape": targets.SHAPE_NAMES[int(pred["shape"][b, r, c].argmax())],
                    "size": targets.SIZE_NAMES[int(pred["size"][b, r, c].argmax())],
                    "center": [cx, cy], "box": [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                    "score": float(scores[b, r, c]),
                })
            out.append(found)
        return out

    def query(self, question: str | None, choices: list[str] | None) -> None:
        """An encoder answers no question: there is no record to make."""

    def describe(self, response: dict) -> dict:
        objects = response["objects"]
        return {"objects": objects, "rationale": None, "answer": f"{len(objects)} objects: " + ", ".join(
            f"{o['size']} {o['colour']} {o['shape']}" for o in objects)}


register_model("encoder-tiny", "encoder", TINY_CONFIG,
               "the tiny ViT pretrained on dense scene-graph targets (colour, shape, size, centres, boxes per "
               "patch); every tiny family starts its vision tower from it", recipe="recipes/encoder/synth-tiny-scene.yaml")
