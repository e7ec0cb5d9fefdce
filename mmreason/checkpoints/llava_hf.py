"""LLaVA-1.5 in transformers' layout (``LlavaForConditionalGeneration``, llava-hf/llava-1.5-*-hf) → a
baseline-family export.

The baseline VLM is LLaVA's architecture: a CLIP tower read at ``vision_feature_layer``
without its CLS token, a two-layer GELU projector, a decoder LM, and the image's tokens
spliced in at ``<image>``. Weights map by name; the prompt is LLaVA-1.5's
``USER: <image>\\n{question} ASSISTANT:``, images go through CLIP's processor
(shorter side to the input size, centre crop, CLIP's mean and std), and answers are
plain text (``output_format: plain``), so fine-tuning keeps LLaVA's answer style.
"""

from __future__ import annotations

from pathlib import Path

from mmreason.checkpoints.source import (
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDINGS,
    CheckpointError,
    architecture,
    load_converted,
    read_json,
    read_state_dict,
    rename_by_prefix,
)
from mmreason.models.baseline import VisionLanguageModel
from mmreason.text.tokenizer import build_tokenizer

FORMAT = "llava-hf"
CONVERTER_VERSION = 1
OPTIONS: tuple[str, ...] = ()
LLAVA_PROMPT = "USER: <image>\n{question}{choices} ASSISTANT:"
# transformers' current layout first, then the one the hub's llava-hf checkpoints were saved in
PREFIXES = {
    "model.vision_tower.": "vision.model.", "model.multi_modal_projector.linear_1.": "projector.0.",
    "model.multi_modal_projector.linear_2.": "projector.2.", "model.language_model.": "lm.model.",
    "lm_head.": "lm.lm_head.",
    "vision_tower.": "vision.model.", "multi_modal_projector.linear_1.": "projector.0.",
    "multi_modal_projector.linear_2.": "projector.2.", "language_model.model.": "lm.model.",
    "language_model.lm_head.": "lm.lm_head.",
}


def _preprocess(folder: Path, image_size: int) -> dict:
    """CLIP's processor settings from ``preprocessor_config.json`` (CLIP's defaults without one)."""
    settings = read_json(folder, "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    crop = settings.get("crop_size", image_size)
    size = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return {"image_size": size, "mean": settings.get("image_mean", CLIP_MEAN), "std": settings.get("image_std", CLIP_STD),
            "resize": "crop"}


def model_config(llava: dict, folder: Path) -> dict:
    """Our baseline config for a ``LlavaConfig`` (its ``config.json``)."""
    vision, text = architecture(llava.get("vision_config") or {}), architecture(llava.get("text_config") or {})
    if vision.get("model_type", "clip_vision_model") not in ("clip_vision_model", "siglip_vision_model"):
        raise CheckpointError(f"{folder}: vision tower {vision.get('model_type')!r} is not CLIP or SigLIP")
    layer = llava.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"{folder}: several vision feature layers ({layer}) are not supported")
    if llava.get("projector_hidden_act", "gelu") != "gelu" or not llava.get("multimodal_projector_bias", True):
        raise CheckpointError(f"{folder}: only LLaVA-1.5's projector (two linear layers with bias, GELU) converts")
    vision.setdefault("model_type", "clip_vision_model")
    text.setdefault("model_type", "llama")
    return {
        "vision": {"hf": {"model_type": vision["model_type"], "config": vision, "feature_layer": layer,
                          "select": llava.get("vision_feature_select_strategy", "default")}},
        "projector": "mlp2x_gelu",
        "language": {"config": text},
        "output_format": "plain",
        "prompt": LLAVA_PROMPT,
        "preprocess": _preprocess(folder, vision.get("image_size", 336)),
        "max_length": text.get("max_position_embeddings", 4096),
    }


def convert(folder: Path) -> VisionLanguageModel:
    llava = read_json(folder, "config.json")
    if llava.get("model_type") != "llava":
        raise CheckpointError(f"{folder}/config.json has model_type {llava.get('model_type')!r}, not 'llava'")
    config = model_config(llava, folder)
    tokenizer = build_tokenizer(str(folder))
    image_token = llava.get("image_token_index", llava.get("image_token_id"))
    if tokenizer.convert_tokens_to_ids("<image>") != image_token:
        raise CheckpointError(f"{folder}: the tokenizer's <image> is id {tokenizer.convert_tokens_to_ids('<image>')}, "
                              f"the config's image_token_index {image_token}")
    state = rename_by_prefix(read_state_dict(folder), PREFIXES, f"{folder} ({FORMAT} layout)")
    config["language"]["config"]["vocab_size"] = max(len(tokenizer), state[EMBEDDINGS[0]].shape[0])
    model = VisionLanguageModel(config, tokenizer=tokenizer)
    return load_converted(model, state, f"{folder} ({FORMAT} layout)")
