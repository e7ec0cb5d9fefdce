"""LISA (``LISAForCausalLM``, xinlai/LISA-7B-v1 and kin) → a reasoning-segmentation (``star``) export.

LISA (Lai et al., CVPR 2024) is LLaVA plus SAM ViT-H: the language model's last-layer state
before each ``[SEG]`` goes through ``text_hidden_fcs`` (Linear h→h, ReLU, Linear h→256) into
SAM's prompt encoder as a sparse token, and SAM's mask decoder (mask token 0) draws the mask
over SAM's own image embeddings. Key layout (dvlab-research/LISA, ``model/LISA.py``): the
LLaVA part as ``llava`` (``model.layers.*``, ``lm_head``, ``model.mm_projector`` linear or
``.0/.2`` MLP; the CLIP tower usually left out of the saved folder, named by ``vision_tower``),
``model.visual_model.{image_encoder,prompt_encoder,mask_decoder}.*`` (segment-anything's names)
and ``model.text_hidden_fcs.0.{0,2}.*``.

The export is the star family with ``segmentation.image_encoder``: SAM's ViT as transformers'
``SamVisionModel`` (its sizes read off the weights; ViT-H: 1280 wide, 32 blocks, global
attention in 7/15/23/31, windows of 14) with SAM's view of the image (longest side to
1024, bilinear, ImageNet mean/std, zero padding), beside CLIP's view (shortest side to 224,
centre crop). The prompt is LISA's chat: Vicuna v1 with ``<im_start><image><im_end>`` when
``mm_use_im_start_end``; the mask token is ``[SEG]``; answers are plain text ("Sure, [SEG].").
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mmreason.checkpoints.llava import VICUNA_V1, llava_config
from mmreason.checkpoints.source import (
    CheckpointError,
    load_converted,
    read_json,
    read_state_dict,
    rename_by_prefix,
)
from mmreason.models.star import StarSegmenter

FORMAT = "lisa"
CONVERTER_VERSION = 1
OPTIONS = ("vision",)  # the CLIP checkpoint, when the LISA folder does not hold the tower
SEG_TOKEN = "[SEG]"
START_END = ("<im_start>", "<im_end>")
SAM_MEAN, SAM_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # SAM's 123.675/58.395 … over 255
SAM_DECODER_HEADS = 8  # SAM's two-way transformer; head counts are not in the weights
PREFIXES = {"model.visual_model.image_encoder.": "segmentation_encoder.model.vision_encoder.",
            "model.visual_model.prompt_encoder.": "prompt_encoder.",
            "model.visual_model.mask_decoder.": "mask_decoder.",
            "model.text_hidden_fcs.0.": "seg_projection.",
            "model.mm_projector.": "projector.",
            "model.vision_tower.vision_tower.": "vision.model.", "model.": "lm.model.", "lm_head.": "lm.lm_head."}
# segment-anything's image encoder names → transformers' SamVisionModel's
SAM_ENCODER_NAMES = ((r"patch_embed\.proj\.", "patch_embed.projection."), (r"blocks\.(\d+)\.norm(\d)\.", r"layers.\1.layer_norm\2."),
                     (r"blocks\.", "layers."), (r"neck\.0\.", "neck.conv1."), (r"neck\.1\.", "neck.layer_norm1."),
                     (r"neck\.2\.", "neck.conv2."), (r"neck\.3\.", "neck.layer_norm2."))
ENCODER = "segmentation_encoder.model.vision_encoder."


def _sam_encoder_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        if key.startswith(ENCODER):
            rest = key[len(ENCODER):]
            for pattern, name in SAM_ENCODER_NAMES:
                rest = re.sub(f"^{pattern}", name, rest)
            key = ENCODER + rest
        out[key] = tensor
    return out


def sam_encoder_fields(state: dict[str, torch.Tensor], what: str) -> dict:
    """SamVisionConfig fields read off the encoder's weights (the checkpoint's config does not hold them)."""
    try:
        patch = state[f"{ENCODER}patch_embed.projection.weight"]
        grid = state[f"{ENCODER}pos_embed"].shape[1]
        depth = 1 + max(int(k[len(ENCODER):].split(".")[1]) for k in state if k.startswith(f"{ENCODER}layers."))
        rel = [state[f"{ENCODER}layers.{i}.attn.rel_pos_h"] for i in range(depth)]
        fields = {"hidden_size": patch.shape[0], "patch_size": patch.shape[2], "image_size": grid * patch.shape[2],
                  "num_hidden_layers": depth, "output_channels": state[f"{ENCODER}neck.conv1.weight"].shape[0],
                  "mlp_dim": state[f"{ENCODER}layers.0.mlp.lin1.weight"].shape[0],
                  "num_attention_heads": patch.shape[0] // rel[0].shape[1],
                  "qkv_bias": f"{ENCODER}layers.0.attn.qkv.bias" in state, "use_rel_pos": True,
                  "layer_norm_eps": 1e-6}
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{what}: SAM's image encoder is incomplete ({err}); expected segment-anything's "
                              "ImageEncoderViT under model.visual_model.image_encoder with relative positions") from err
    windowed = [r.shape[0] for r in rel if r.shape[0] != 2 * grid - 1]
    fields["global_attn_indexes"] = [i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1]
    fields["window_size"] = (windowed[0] + 1) // 2 if windowed else 0
    return fields


def convert(folder: Path, vision: str | None = None) -> StarSegmenter:
    config = read_json(folder, "config.json")
    tower = config.get("mm_vision_tower") or config.get("vision_tower")
    if tower is None or "out_dim" not in config:
        raise CheckpointError(f"{folder}/config.json is not LISA's (vision_tower or mm_vision_tower, and out_dim "
                              "expected)")
    what = f"{folder} ({FORMAT} layout)"
    state = _sam_encoder_names(rename_by_prefix(read_state_dict(folder), PREFIXES, what))
    projector = "linear" if "projector.weight" in state else "mlp2x_gelu"
    start_end = bool(config.get("mm_use_im_start_end"))
    prompt = VICUNA_V1.replace("<image>", "<im_start><image><im_end>") if start_end else VICUNA_V1
    model_config, tokenizer = llava_config(folder, {**config, "mm_vision_tower": tower}, state, vision, projector,
                                           prompt)
    missing = [t for t in (SEG_TOKEN, *(START_END if start_end else ())) if t not in tokenizer.get_vocab()]
    if missing:
        raise CheckpointError(f"{folder}: the tokenizer lacks LISA's token(s) {missing}; expected LISA's tokenizer "
                              "files beside the weights")
    depth = len({k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")})
    encoder = sam_encoder_fields(state, what)
    model_config["segmentation"] = {
        "answer": "seg", "seg_token": SEG_TOKEN, "embed_dim": int(config["out_dim"]), "num_heads": SAM_DECODER_HEADS,
        "depth": depth, "upscale": 4,
        "image_encoder": {"vision": {"hf": {"model_type": "sam_vision_model", "config": encoder}},
                          "preprocess": {"image_size": encoder["image_size"], "mean": SAM_MEAN, "std": SAM_STD,
                                         "resize": "longest"}}}
    model = StarSegmenter(model_config, tokenizer=tokenizer)
    return load_converted(model, state, what)
