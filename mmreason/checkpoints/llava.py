"""LLaVA-1.5 in its original layout (``LlavaLlamaForCausalLM``, liuhaotian/llava-v1.5-*) → a
baseline-family export.

The original checkpoints hold the language model (``model.layers.*``, ``lm_head``) and the
projector (``model.mm_projector.0/2``) but usually not the CLIP tower: its config names it
(``mm_vision_tower``, e.g. openai/clip-vit-large-patch14-336), and ``vision`` gives a folder or
hub id for it (a CLIP checkpoint; its text half is ignored). Settings follow the config:
``mm_vision_select_layer`` (-2), ``mm_vision_select_feature`` (``patch`` drops CLS),
``image_aspect_ratio`` (``pad``: padded to a square with the mean colour). The prompt is
LLaVA-1.5's Vicuna-v1 conversation; upstream splices the image at a placeholder id (-200),
we at an ``<image>`` token added to the tokenizer (a row the image's features replace).
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig

from mmreason.checkpoints.source import (
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDINGS,
    FILE_FIELDS,
    CheckpointError,
    architecture,
    load_converted,
    read_json,
    read_state_dict,
    rename_by_prefix,
    resolve_source,
)
from mmreason.models.baseline import VisionLanguageModel
from mmreason.text.tokenizer import build_tokenizer

FORMAT = "llava"
CONVERTER_VERSION = 1
OPTIONS = ("vision",)  # the CLIP checkpoint, when the LLaVA folder does not hold the tower
VICUNA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
             "detailed, and polite answers to the human's questions. USER: <image>\n{question}{choices} ASSISTANT:")
LANGUAGE_PREFIXES = {"model.mm_projector.0.": "projector.0.", "model.mm_projector.2.": "projector.2.",
                     "model.vision_tower.vision_tower.": "vision.model.", "model.": "lm.model.", "lm_head.": "lm.lm_head."}
VISION_PREFIXES = {"vision_model.": "vision.model.vision_model."}


def _vision_state(source: str, hub_only: bool) -> tuple[dict, dict]:
    """The CLIP tower's config fields and weights from a CLIP checkpoint: a whole CLIP (``vision_model.*``
    beside ``text_model.*``) or a vision model alone (``vision_model.*``, or bare as transformers saves it)."""
    folder = resolve_source(source, hub_only)
    clip = read_json(folder, "config.json")
    whole = clip.get("model_type") == "clip"
    fields = clip.get("vision_config", {}) if whole else clip
    state = read_state_dict(folder)
    if whole or any(k.startswith("vision_model.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("vision_model.")}
    else:
        state = {f"vision_model.{k}": v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{folder}: no vision tower weights; expected a CLIP checkpoint")
    return architecture(fields), rename_by_prefix(state, VISION_PREFIXES, str(folder))


def llava_config(folder: Path, config: dict, state: dict, vision: str | None, projector: str = "mlp2x_gelu",
                 prompt: str = VICUNA_V1) -> tuple[dict, object]:
    """The baseline model config and tokenizer of a LLaVA-layout checkpoint whose weights ``state`` are
    already in our names; the CLIP tower's weights join ``state`` when the folder lacks them."""
    # the tower's config comes from its own checkpoint; its weights too, unless the LLaVA folder holds them
    vision_fields, vision_state = _vision_state(vision or config["mm_vision_tower"], hub_only=vision is None)
    if not any(k.startswith("vision.model.") for k in state):
        state.update(vision_state)
    llama_fields = LlamaConfig().to_dict().keys() - set(FILE_FIELDS)
    language = {"model_type": "llama", **{k: v for k, v in config.items() if k in llama_fields and k != "model_type"}}
    tokenizer = build_tokenizer(str(folder))
    language["vocab_size"] = max(len(tokenizer), state[EMBEDDINGS[0]].shape[0])
    model_config = {
        "vision": {"hf": {"model_type": "clip_vision_model", "config": vision_fields,
                          "feature_layer": config.get("mm_vision_select_layer", -2),
                          "select": "full" if config.get("mm_vision_select_feature") == "cls_patch" else "default"}},
        "projector": projector,
        "language": {"config": language},
        "output_format": "plain",
        "prompt": prompt,
        "preprocess": {"image_size": vision_fields.get("image_size", 336), "mean": CLIP_MEAN, "std": CLIP_STD,
                       "resize": "pad" if config.get("image_aspect_ratio") == "pad" else "crop"},
        "max_length": config.get("tokenizer_model_max_length", config.get("max_position_embeddings", 2048)),
    }
    return model_config, tokenizer


def convert(folder: Path, vision: str | None = None) -> VisionLanguageModel:
    config = read_json(folder, "config.json")
    if "mm_vision_tower" not in config or config.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise CheckpointError(f"{folder}/config.json is not LLaVA-1.5's (mm_vision_tower and mm_projector_type "
                              "'mlp2x_gelu' expected)")
    if config.get("mm_use_im_start_end"):
        raise CheckpointError(f"{folder}: image start/end tokens (mm_use_im_start_end) are not supported")
    state = rename_by_prefix(read_state_dict(folder), LANGUAGE_PREFIXES, f"{folder} ({FORMAT} layout)")
    model_config, tokenizer = llava_config(folder, config, state, vision)
    model = VisionLanguageModel(model_config, tokenizer=tokenizer)
    return load_converted(model, state, f"{folder} ({FORMAT} layout)")
